#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_tags
short_description: List, add and remove image tags in a dogestry remote (deprecated)
version_added: 0.1.0
deprecated:
  removed_in: 2.0.0
  why: It was both an info module and a state module; Ansible's conventions want one of each.
  alternative: Use M(dogestry.dogestry.dogestry_tag_info) to list tags and M(dogestry.dogestry.dogestry_tag) to change them.
description:
  - Deprecated, see below. It still does both of its jobs, with the same options and results, by running
    M(dogestry.dogestry.dogestry_tag_info) (without O(state)) or M(dogestry.dogestry.dogestry_tag) (with it).
  - Lists the tags of a remote, filtered by name and tag patterns, with their image IDs and sizes.
  - Adds a tag to an image already in the remote, or moves it, without Docker and without
    copying any data (like C(docker tag), but on the remote).
  - The new tag names exactly what the source names. For content pushed through C(dogestry serve)
    (a multi-platform index, an artifact, a signed image) that is the manifest as it was pushed,
    with every platform, the same digest, and signatures still valid.
  - Removes a tag, whatever it names, and also a tag whose own content is malformed. Data stays on
    the remote; other tags of the same image keep working.
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
  state:
    description:
      - Leave it out to list the tags matching O(name) and O(tag); nothing changes then.
      - V(present) makes the tag O(name):O(tag) point at O(image).
      - V(absent) removes the tag O(name):O(tag).
    type: str
    choices: [present, absent]
  name:
    description:
      - Image name. When listing, a shell-style pattern (V(myapp), V(team/*)); otherwise exact.
    type: str
    default: '*'
  tag:
    description:
      - Tag. When listing, a shell-style pattern (V(2013*)); otherwise exact and required.
    type: str
    default: '*'
  image:
    description:
      - With O(state=present), the image to tag, as C(name:tag) or an image ID prefix already on the remote.
    type: str
seealso:
  - module: dogestry.dogestry.dogestry_tag
  - module: dogestry.dogestry.dogestry_tag_info
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: List every tag of myapp
  dogestry.dogestry.dogestry_tags:
    remote: /srv/dogestry
    name: myapp
  register: myapp_tags

- name: Promote a release to latest, on the remote only
  dogestry.dogestry.dogestry_tags:
    remote: s3://ops-goodies/docker-repo/
    state: present
    name: myapp
    tag: latest
    image: myapp:20131210

- name: Remove an old tag
  dogestry.dogestry.dogestry_tags:
    remote: /srv/dogestry
    state: absent
    name: myapp
    tag: "20131001"
"""

RETURN = r"""
tags:
  description:
    - When listing, the matching tags; otherwise the changed tag as it is after the task
      (an empty dict after a removal).
    - Keys are C(name:tag).
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
    myapp:20131210:
      manifest: sha256:ec43de92e9afef4e5c1b17a126326d6a1841e9d9da1cff7c61605b23104b3684
      media_type: application/vnd.dogestry.manifest.v1+json
      image_id: sha256:1dc66c9bbfeef8a4474f44309e2a0ab1a64074b128354400b61c40032c9194f0
      layers: 3
      size: 2125312
      stored_size: 1414642
broken:
  description:
    - When listing, the matching tags whose manifest is missing or damaged, or whose own content is malformed,
      with what is wrong; they are left out of RV(tags), and each gives a warning. Move or remove them, or push
      the image again.
  returned: when O(state) is omitted
  type: dict
  sample:
    myapp:old: "manifest sha256:ec43de92e9af…: not found: /srv/dogestry/manifests/sha256/ec43de92e9af…"
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
from ansible_collections.dogestry.dogestry.plugins.module_utils._tag_modules import TagLister, TagSetter


def main():
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"]),
        name=dict(type="str", default="*"),
        tag=dict(type="str", default="*"),
        image=dict(type="str"),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True,
                            required_if=[("state", "present", ["image"])])
    params = module.params
    try:
        if params["state"] is None:       # dogestry_tag_info
            result = dict(TagLister(module, params["name"], params["tag"]).run(), actions=[])
        else:                             # dogestry_tag
            result = TagSetter(module, params["state"], params["name"], params["tag"], params["image"]).run()
        module.exit_json(**result)
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
