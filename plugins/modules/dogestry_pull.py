#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_pull
short_description: Pull a Docker image from a dogestry remote into a daemon
version_added: 0.1.0
description:
  - Loads an image from a remote (a directory, an S3 bucket, an HTTPS URL or a signed pull URL)
    into a Docker daemon, without any registry.
  - Works out by ChainID which layers the daemon already has and downloads only the others,
    in parallel.
  - Every byte is checked against its sha256 before the daemon can register it; a corrupt
    or truncated blob fails the task and leaves no image behind.
  - On Docker's containerd image store, when the daemon shares the host's network namespace and the
    Python package C(cheroot) is installed, Docker's own pull fetches the image from an endpoint the
    module opens on 127.0.0.1 for the task, instead of C(docker load), each layer verified as it streams.
    A daemon on another host (C(docker_host) tcp:// or ssh:// to another address, with TLS or without) cannot
    reach that endpoint, so there the module uses C(docker load), as on the classic image store.
    So it does when Docker fails without reaching the endpoint (a tcp:// address on this host that forwards to a
    daemon elsewhere), before anything was moved.
  - Pulling an image the daemon already has under the tag changes nothing.
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.docker
  - dogestry.dogestry.docker.requirements
  - dogestry.dogestry.attributes
  - dogestry.dogestry.attributes.actiongroup_dogestry
attributes:
  check_mode:
    support: full
    details: Reports exactly which layers a real run would download.
  diff_mode:
    support: full
options:
  remote:
    description:
      - Where images are stored, required unless O(signed_url) is given.
      - An absolute directory (V(/srv/dogestry)) or V(file:///srv/dogestry), V(s3://bucket/prefix/)
        (see O(endpoint_url)), or a read-only V(https://host/prefix/) served by any static web server.
    type: str
    required: false
  signed_url:
    description:
      - A signed pull URL minted by M(dogestry.dogestry.dogestry_signed_url). It is all the pull
        needs, with no credentials and no O(remote); O(image) defaults to the image it was minted for.
      - When given, it wins over O(remote) and the S3 connection options, so a play can keep setting
        O(remote) for the action group in C(module_defaults) while a task pulls by signed URL.
      - Expired or altered URLs fail the task.
    type: str
  image:
    description:
      - What to pull, as C(name:tag) (a name alone means V(latest)), or a unique prefix of an
        image ID on the remote (at least 4 hex digits, V(sha256:) optional).
      - An image pulled by ID prefix is loaded untagged.
      - A tag naming a multi-platform index (pushed through C(dogestry serve), for example by
        C(docker buildx) or C(skopeo copy --all)) loads the image of the daemon's own platform; a tag
        naming an OCI artifact fails with a message saying so.
      - Required unless O(signed_url) is given.
    type: str
    aliases: [name]
  peers_file:
    description:
      - Read the image's layers, config and manifest through the fleet's peers named in this file (the
        C(peers.json) the C(dogestry.dogestry.accelerator) role writes with C(accelerator_peering=true)), so that a
        deploy reads each layer from the remote once for the whole fleet; tags still come from the remote.
      - Each object is asked of its owner among the live peers; what peers send is verified in a spool of the
        pull's own before Docker sees a byte, and a peer that is down, slow or lying costs a fall-back to the
        next peer or the remote, never the pull.
    type: path
  trusted_keys:
    description:
      - Refuse the image, before any of its bytes reach Docker, unless one of these keys signed the manifest digest
        the tag names (with M(dogestry.dogestry.dogestry_sign), or C(cosign sign --key) through C(dogestry serve)).
        The task then fails with one line saying why (no signature, a key that is not trusted, a signature of
        another digest, a malformed signature).
      - Each item is a PEM public key or certificate (its text), or the path of a file holding one. Several
        keys allow a rotation, old and new trusted at once.
      - A tag naming a multi-platform index needs the index signed; its signature covers the platform images
        it names. An image pulled by image-ID prefix needs the digest of the image as M(dogestry.dogestry.dogestry_push)
        stored it signed; pull an image pushed through C(dogestry serve) by its tag.
      - Signatures are found by listing the remote, so this needs a directory or S3 remote (not an HTTPS remote
        or a signed pull URL).
      - Leave it out (or empty) to pull without checking signatures.
    type: list
    elements: str
requirements:
  - cryptography >= 38.0 (with O(trusted_keys))
seealso:
  - module: dogestry.dogestry.dogestry_push
  - module: dogestry.dogestry.dogestry_signed_url
  - module: dogestry.dogestry.dogestry_tag_info
  - module: community.docker.docker_image_load
    description: Loads a C(docker save) archive into a daemon, as this module does with only the layers it lacks.
  - module: community.docker.docker_image_pull
    description: Pulls an image from a registry.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: Deploy a release from a directory remote (an NFS mount, say)
  dogestry.dogestry.dogestry_pull:
    remote: /srv/dogestry
    image: myapp:20131210

- name: Pull from S3 on every host of the play
  dogestry.dogestry.dogestry_pull:
    remote: s3://ops-goodies/docker-repo/?region=us-west-2
    image: myapp:20131210
    jobs: 8

- name: Pull with nothing but a signed URL (see dogestry_signed_url)
  dogestry.dogestry.dogestry_pull:
    signed_url: "{{ pull_url.url }}"

- name: Pull a release only if the release key (or the key it replaces) signed it
  dogestry.dogestry.dogestry_pull:
    remote: s3://ops-goodies/docker-repo/
    image: myapp:20131210
    trusted_keys:
      - /etc/dogestry/release-2026.pub
      - "{{ lookup('file', 'keys/release-2025.pub') }}"

- name: Pull by image ID prefix
  dogestry.dogestry.dogestry_pull:
    remote: /srv/dogestry
    image: 1dc66c9bbfee

- name: Set the remote once for all dogestry modules of a play
  hosts: app
  module_defaults:
    group/dogestry.dogestry.dogestry:
      remote: s3://ops-goodies/docker-repo/
      region: us-west-2
  tasks:
    - dogestry.dogestry.dogestry_pull:
        image: myapp:20131210
"""

RETURN = r"""
image:
  description: The tag pulled, C(name:tag); null when pulled by ID prefix.
  returned: always
  type: str
  sample: myapp:20131210
image_id:
  description:
    - The image's identity on every engine, the sha256 of its config (what C(docker image inspect) calls
      the image ID on the classic image store).
  returned: always
  type: str
  sample: sha256:1dc66c9bbfeef8a4474f44309e2a0ab1a64074b128354400b61c40032c9194f0
daemon_image_id:
  description:
    - What the Docker daemon calls the image (C(docker image inspect) C(.Id)). On the classic image store it is
      RV(image_id); on the containerd image store (Docker 29's default) it is the digest of the OCI manifest
      dogestry loads, which is the same on every host that pulls the image.
  returned: always
  type: str
  sample: sha256:f9f21b8a4ff171bd9fdc5062c31bf4be6d558b69ea2d05f328fab23ea8bdfe45
manifest:
  description: Digest of the image's manifest on the remote.
  returned: always
  type: str
layers_transferred:
  description: Layer digests (diff_ids) downloaded, or to download in check mode.
  returned: always
  type: list
  elements: str
layers_skipped:
  description: Layer digests the daemon already had.
  returned: always
  type: list
  elements: str
bytes_transferred:
  description: Bytes downloaded (as stored, so compressed), or to download in check mode.
  returned: always
  type: int
  sample: 1412767
signature:
  description: The signature that admitted the image, with O(trusted_keys) only.
  returned: when O(trusted_keys) is given
  type: dict
  contains:
    digest:
      description: The manifest digest that is signed.
      type: str
    key_id:
      description: The id of the trusted key that signed it (base64 sha256 of its DER public key, cosign's key hint).
      type: str
    key:
      description: "Which trusted key that is, its path, or V(trusted key #2) for the second one given as PEM text."
      type: str
    signature:
      description: Digest of the signature's manifest on the remote.
      type: str
reason:
  description:
    - What was done, or null. In check mode, what would be done (C(... to download), C(tag would be set)).
  returned: always
  type: str
  sample: "myapp:20131210: 1 of 3 layers (12.0 MiB) downloaded"
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.common import human_size
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.pull import execute_pull, plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import looks_like_id_prefix, parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.signing import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, Policy, load_trusted_keys


class DogestryPuller:
    def __init__(self, module: DogestryModule):
        self.module = module
        self.image = module.params["image"]
        if self.image and not looks_like_id_prefix(self.image):
            parse_image_ref(self.image)     # a malformed name fails before any remote or daemon is touched
        self.repo = module.repository()
        # A signed pull URL names its image.
        self.image = self.image or getattr(self.repo.remote, "image", None)
        if not self.image:
            raise DogestryError("image is required: name the image to pull from %s" % self.repo.url)
        self.policy = None
        if module.params["trusted_keys"]:
            if not HAS_CRYPTOGRAPHY:
                module.module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
            self.policy = Policy(load_trusted_keys(module.params["trusted_keys"]))
        self.daemon = module.daemon()

    def pull(self):
        plan = plan_pull(self.daemon, self.repo, self.image, self.policy)
        if self.module.check_mode:
            result = plan.result()
        else:
            result = execute_pull(self.daemon, self.repo, plan)
        reason = result.pop("reason")
        result.pop("changed")
        if reason is None:
            msg = "%s is already in the Docker daemon as %s" % (plan.ref or self.image, plan.manifest.image_id[:19])
        elif self.module.check_mode:
            msg = "would pull from %s: %s" % (self.repo.url, reason)
        else:
            msg = "pulled %s from %s: %d layer(s), %s downloaded, %d already present" % (
                plan.ref or plan.manifest.image_id[:19], self.repo.url, len(result["layers_transferred"]),
                human_size(result["bytes_transferred"]), len(result["layers_skipped"]))
        result.update(changed=reason is not None, msg=msg, reason=reason)
        if self.module.diff_mode:
            result["diff"] = dict(
                before={"image_present": plan.image_present, "tagged": plan.tag_present},
                after={"image_present": True, "tagged": True},
            )
        return result


def main():
    argument_spec = dict(
        remote=dict(type="str"),
        signed_url=dict(type="str", no_log=True),
        image=dict(type="str", aliases=["name"]),
        peers_file=dict(type="path"),
        trusted_keys=dict(type="list", elements="str", no_log=False),
    )
    # Not mutually exclusive: `remote` often comes from the action group's module_defaults; signed_url wins.
    module = DogestryModule(argument_spec, supports_check_mode=True, required_one_of=[("remote", "signed_url")])
    try:
        module.exit_json(**DogestryPuller(module).pull())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
