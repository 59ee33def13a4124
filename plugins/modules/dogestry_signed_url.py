#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_signed_url
short_description: Mint an expiring signed URL that pulls one image with no credentials
version_added: 0.1.0
description:
  - On a host with credentials for an S3 remote, writes a small immutable ticket for one
    C(name:tag) and returns a presigned URL of it. M(dogestry.dogestry.dogestry_pull) given only
    that URL (O(dogestry.dogestry.dogestry_pull#module:signed_url)) pulls the image, with no AWS
    credentials and no other configuration, verifying every byte as usual.
  - The URL is a bearer credential until it expires; set C(no_log) on tasks that print it.
  - Signed with temporary credentials (O(session_token), an instance role), the URL carries the session token,
    as every presigned S3 URL then must, in its C(X-Amz-Security-Token) parameter. That value is
    percent-encoded byte for byte, so that Ansible's no_log masking (which replaces a secret wherever it
    occurs in a result) leaves the URL usable. If the token or the secret key occurs anywhere else in the
    URL, where masking would break it, the task fails instead.
  - Expired tickets are removed by M(dogestry.dogestry.dogestry_prune).
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.docker
  - dogestry.dogestry.docker.unused
  - dogestry.dogestry.attributes
  - dogestry.dogestry.attributes.actiongroup_dogestry
attributes:
  check_mode:
    support: full
    details: Checks that the image exists and can be signed; returns no URL.
  diff_mode:
    support: none
options:
  image:
    description:
      - The image to sign a pull for, as C(name:tag) (a name alone means V(latest)).
    type: str
    required: true
  expires_in:
    description:
      - Seconds the URL stays valid, at most 604800 (7 days, the S3 limit for presigned URLs).
    type: int
    default: 3600
seealso:
  - module: dogestry.dogestry.dogestry_pull
    description: Pulls with the URL (O(dogestry.dogestry.dogestry_pull#module:signed_url)).
  - module: dogestry.dogestry.dogestry_push
  - module: community.docker.docker_image_export
    description: Exports images into an archive file, the other way to hand an image over without a registry.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: On the build server, sign a pull of the release for the deploy hosts
  dogestry.dogestry.dogestry_signed_url:
    remote: s3://ops-goodies/docker-repo/?region=us-west-2
    image: myapp:20131210
    expires_in: 1800
  register: pull_url
  no_log: true
  delegate_to: build-1
  run_once: true

- name: On every deploy host, pull with nothing but the URL
  dogestry.dogestry.dogestry_pull:
    signed_url: "{{ pull_url.url }}"
"""

RETURN = r"""
url:
  description:
    - The signed pull URL. Absent in check mode.
    - With temporary credentials it includes the session token (see the description); treat it as a secret.
  returned: success and not in check mode
  type: str
expires_at:
  description: When the URL stops working, in seconds since the epoch.
  returned: always
  type: int
  sample: 1763913600
image:
  description: The image the URL pulls.
  returned: always
  type: str
  sample: myapp:20131210
"""

import time
from urllib.parse import unquote

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError, RemoteAuthError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import mint_pull_ticket, ticket_objects

MAX_EXPIRY = 7 * 86400


TOKEN_PARAMETER = "X-Amz-Security-Token"


def survive_masking(url, secrets):
    """The URL as Ansible's no_log masking will leave it intact, or why it cannot be.

    A URL presigned with temporary credentials carries the session token in its X-Amz-Security-Token
    parameter, and Ansible replaces every no_log value (`secrets`: option name -> value) wherever it occurs
    in a result with ********. So that one parameter's value is percent-encoded byte for byte (the same
    value to S3, which decodes query values before it checks the signature) and nothing else is touched.
    Returns (url, None), or (None, the option whose value still occurs in the URL: its scheme, host, path
    or another parameter, where masking would break it)."""
    base, sep, query = url.partition("?")
    fields = query.split("&") if sep else []
    for number, field in enumerate(fields):
        name, _eq, value = field.partition("=")
        if name == TOKEN_PARAMETER:
            fields[number] = "%s=%s" % (name, "".join("%%%02X" % byte for byte in unquote(value).encode("utf-8")))
    encoded = base + sep + "&".join(fields)
    for option, secret in sorted(secrets.items()):
        if secret and str(secret) in encoded:
            return None, option
    return encoded, None


class DogestrySigner:
    def __init__(self, module: DogestryModule):
        self.module = module
        self.ref = parse_image_ref(module.params["image"])
        self.expires_in = module.params["expires_in"]
        if not 1 <= self.expires_in <= MAX_EXPIRY:
            raise DogestryError("expires_in must be between 1 and %d seconds, got %d" % (MAX_EXPIRY, self.expires_in))
        self.repo = module.repository()

    def sign(self):
        if self.module.check_mode:
            ticket_objects(self.repo, self.ref)     # raises what a real run would
            return dict(changed=True, image=str(self.ref), expires_at=int(time.time()) + self.expires_in,
                        msg="would sign a pull of %s on %s for %ds" % (self.ref, self.repo.url, self.expires_in))
        url, expires_at = mint_pull_ticket(self.repo, self.ref, self.expires_in)
        ansible = self.module.module
        url, leaked = survive_masking(url, {option: ansible.params.get(option)
                                            for option, spec in ansible.argument_spec.items() if spec.get("no_log")})
        if leaked:
            raise RemoteAuthError("cannot return a signed URL of %s: the value of %s occurs in it outside its own parameter, "
                                  "where Ansible's no_log masking would replace it with ******** and break the URL; sign "
                                  "with other credentials (the ticket written stays unused and expires)" % (self.ref, leaked))
        return dict(changed=True, url=url, image=str(self.ref), expires_at=expires_at,
                    msg="signed a pull of %s on %s, valid until %s UTC" % (
                        self.ref, self.repo.url, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(expires_at))))


def main():
    argument_spec = dict(
        image=dict(type="str", required=True),
        expires_in=dict(type="int", default=3600),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True)
    try:
        module.exit_json(**DogestrySigner(module).sign())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
