#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_tag_info
short_description: List the tags of a dogestry remote
version_added: 0.2.0
description:
  - Lists the tags of a remote, filtered by name and tag patterns, with their image IDs and sizes, without Docker.
  - Tags whose manifest is missing or damaged, or whose own content is malformed, are listed apart, with a warning each.
  - To add, move or remove a tag, use M(dogestry.dogestry.dogestry_tag).
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.docker
  - dogestry.dogestry.docker.unused
  - dogestry.dogestry.attributes
  - dogestry.dogestry.attributes.actiongroup_dogestry
  - dogestry.dogestry.attributes.info_module
options:
  name:
    description:
      - Image name, a shell-style pattern (V(myapp), V(team/*)).
    type: str
    default: '*'
  tag:
    description:
      - Tag, a shell-style pattern (V(2013*)).
    type: str
    default: '*'
seealso:
  - module: dogestry.dogestry.dogestry_tag
  - module: dogestry.dogestry.dogestry_verify
    description: Checks that what the tags name is whole on the remote.
  - module: community.docker.docker_image_info
    description: Inspects images in a Docker daemon.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: List every tag of myapp
  dogestry.dogestry.dogestry_tag_info:
    remote: /srv/dogestry
    name: myapp
  register: myapp_tags

- name: The 2013 releases of every image of a team
  dogestry.dogestry.dogestry_tag_info:
    remote: s3://ops-goodies/docker-repo/
    name: team/*
    tag: "2013*"
"""

RETURN = r"""
tags:
  description:
    - The matching tags, keyed by C(name:tag).
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
    - The matching tags whose manifest is missing or damaged, or whose own content is malformed, with what is wrong;
      they are left out of RV(tags). Move or remove them with M(dogestry.dogestry.dogestry_tag), or push the image again.
  returned: always
  type: dict
  sample:
    myapp:old: "manifest sha256:ec43de92e9af…: not found: /srv/dogestry/manifests/sha256/ec43de92e9af…"
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._tag_modules import TagLister


def main():
    argument_spec = dict(
        name=dict(type="str", default="*"),
        tag=dict(type="str", default="*"),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True)
    try:
        module.exit_json(**TagLister(module, module.params["name"], module.params["tag"]).run())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
