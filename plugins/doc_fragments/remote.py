# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    # The remote and transfer options every dogestry module takes.
    DOCUMENTATION = r"""
options:
  remote:
    description:
      - Where images are stored, in the dogestry repository format (see C(docs/FORMAT.md)).
      - An absolute directory (V(/srv/dogestry)) or V(file:///srv/dogestry) on the managed host;
        a push creates it when missing.
      - V(s3://bucket/prefix/) or V(s3://bucket/prefix/?region=us-west-2) for Amazon S3 and
        S3-compatible stores (see O(endpoint_url)).
      - V(https://host/prefix/) for a read-only remote served by any static web server, or a
        signed pull URL minted by M(dogestry.dogestry.dogestry_signed_url).
    type: str
    required: true
  fallback_remotes:
    description:
      - More copies of O(remote) (a replica bucket in another region, an HTTP mirror), read in this order when the
        ones before them fail; every byte is verified as always, and writes go to O(remote) only.
      - A copy that failed is tried last for 30 seconds. For a tag the first copy that answers decides; a blob
        or manifest a copy lacks is looked for in the next ones.
    type: list
    elements: str
    default: []
  jobs:
    description:
      - How many transfers run at the same time (blobs on push; parts of a layer on S3 pulls), from 1 to 64.
      - S3 pulls read ahead into at most O(jobs) + 3 buffers of 8 MiB, shared by the layer being read and the
        next one, whose first parts download while the current one drains.
    type: int
    default: 4
"""

    # S3 connection options, named as in amazon.aws. Without them boto3's default chain
    # (environment, shared profile, instance role) applies.
    S3 = r"""
options:
  access_key:
    description:
      - AWS access key ID for S3 remotes. Without it, boto3's default credential chain is used.
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description:
      - AWS secret access key for S3 remotes.
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description:
      - AWS session token for temporary credentials.
    type: str
    aliases: [aws_session_token]
  profile:
    description:
      - Named profile from the shared AWS configuration. Mutually exclusive with O(access_key).
    type: str
    aliases: [aws_profile]
  region:
    description:
      - The bucket's region. A C(?region=) in O(remote) sets it too.
    type: str
    aliases: [aws_region]
  endpoint_url:
    description:
      - URL of an S3-compatible endpoint (MinIO, Ceph RGW, moto); default is AWS.
    type: str
    aliases: [aws_endpoint_url]
  s3_validate_certs:
    description:
      - Verify the TLS certificate of the S3 endpoint, or of an V(https://) remote or signed URL.
      - This option was called C(validate_certs) before dogestry.dogestry 0.2.0. That name is now the Docker daemon's, as
        in community.docker (see O(validate_certs)), so that one C(module_defaults) entry for the action group can
        set both.
    type: bool
    default: true
    aliases: [aws_validate_certs]
    version_added: 0.2.0
  ca_bundle:
    description:
      - CA bundle to verify the S3 or HTTPS endpoint with.
    type: path
    aliases: [aws_ca_bundle]
requirements:
  - boto3 >= 1.35.2 (for S3 remotes)
"""
