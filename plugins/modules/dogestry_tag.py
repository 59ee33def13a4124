#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_tag
short_description: Add, move and remove a tag in a dogestry remote
version_added: 0.2.0
description:
  - Makes the tag O(name):O(tag) name an image already in the remote, or moves it, without Docker and without
    copying any data (like C(docker tag), but on the remote).
  - The new tag names exactly what the source names. For content pushed through C(dogestry serve)
    (a multi-platform index, an artifact, a signed image) that is the manifest as it was pushed,
    with every platform, the same digest, and signatures still valid.
  - Removes a tag, whatever it names, and also a tag whose own content is malformed. Data stays on
    the remote (until M(dogestry.dogestry.dogestry_prune) finds it unreferenced past its grace period); other tags
    of the same image keep working.
  - To list tags, use M(dogestry.dogestry.dogestry_tag_info).
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
  diff_mode:
    support: full
options:
  name:
    description:
      - Image name, exact (V(myapp), V(team/app), V(registry.example.com:5000/app)).
    type: str
    required: true
  tag:
    description:
      - Tag, exact.
    type: str
    required: true
  state:
    description:
      - V(present) makes the tag O(name):O(tag) point at O(image).
      - V(absent) removes the tag O(name):O(tag).
    type: str
    choices: [present, absent]
    default: present
  image:
    description:
      - With O(state=present), the image to tag, as C(name:tag) or an image ID prefix already on the remote.
    type: str
seealso:
  - module: dogestry.dogestry.dogestry_tag_info
  - module: dogestry.dogestry.dogestry_push
  - module: dogestry.dogestry.dogestry_prune
    description: Deletes the data no tag references any more.
  - module: community.docker.docker_image_tag
    description: Tags an image in a Docker daemon.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: Promote a release to latest, on the remote only
  dogestry.dogestry.dogestry_tag:
    remote: s3://ops-goodies/docker-repo/
    name: myapp
    tag: latest
    image: myapp:20131210

- name: Remove an old tag
  dogestry.dogestry.dogestry_tag:
    remote: /srv/dogestry
    state: absent
    name: myapp
    tag: "20131001"
"""

RETURN = r"""
tags:
  description:
    - The tag as it is after the task, keyed by C(name:tag); an empty dict after a removal.
  returned: always
  type: dict
  contains:
    manifest:
      description: Digest of the manifest the tag points at.
      type: str
    media_type:
      description:
        - Media type of that manifest. Images pushed by M(dogestry.dogestry.dogestry_push) have dogestry's own
          (C(application/vnd.dogestry.manifest.v1+json)); content pushed through C(dogestry serve) keeps the OCI or
          Docker media type it was pushed with (image manifest, index, artifact).
      type: str
    image_id:
      description:
        - The image ID (sha256 of its config). For an index, that of its linux/amd64 image.
        - Absent for content that is not an image M(dogestry.dogestry.dogestry_pull) can load (artifacts).
      type: str
    layers:
      description: Number of layers (absent where RV(tags.image_id) is).
      type: int
    size:
      description: Uncompressed size of the layers, in bytes (absent where RV(tags.image_id) is).
      type: int
    stored_size:
      description:
        - Bytes the image takes on the remote (layers as stored plus config), before sharing
          (absent where RV(tags.image_id) is).
      type: int
  sample:
    myapp:latest:
      manifest: sha256:ec43de92e9afef4e5c1b17a126326d6a1841e9d9da1cff7c61605b23104b3684
      media_type: application/vnd.dogestry.manifest.v1+json
      image_id: sha256:1dc66c9bbfeef8a4474f44309e2a0ab1a64074b128354400b61c40032c9194f0
      layers: 3
      size: 2125312
      stored_size: 1414642
actions:
  description:
    - What was (or would be, in check mode) done. An image pushed by M(dogestry.dogestry.dogestry_push) is named
      by its image ID, content pushed through C(dogestry serve) by its manifest digest.
  returned: always
  type: list
  elements: str
  sample: ["Tagged myapp:latest -> sha256:1dc66c9bbfee (was sha256:0aa4bd2a41c3)"]
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._tag_modules import TagSetter


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        tag=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        image=dict(type="str"),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True,
                            required_if=[("state", "present", ["image"])])
    params = module.params
    try:
        module.exit_json(**TagSetter(module, params["state"], params["name"], params["tag"], params["image"]).run())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
