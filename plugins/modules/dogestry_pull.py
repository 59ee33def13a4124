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
  - Pulling an image the daemon already has under the tag changes nothing.
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.remote.docker
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
reason:
  description: What changed (or would change), or null.
  returned: always
  type: str
  sample: "myapp:20131210: 1 of 3 layers (12.0 MiB) to download"
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._engine import execute_pull, human_size, plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format import looks_like_id_prefix, parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._module import DogestryModule


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
        self.daemon = module.daemon()

    def pull(self):
        plan = plan_pull(self.daemon, self.repo, self.image)
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
    )
    module = DogestryModule(argument_spec, supports_check_mode=True,
                            required_one_of=[("remote", "signed_url")], mutually_exclusive=[("remote", "signed_url")])
    try:
        module.exit_json(**DogestryPuller(module).pull())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
