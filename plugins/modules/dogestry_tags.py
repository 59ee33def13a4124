#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_tags
short_description: List, add and remove image tags in a dogestry remote
version_added: 0.1.0
description:
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

from ansible_collections.dogestry.dogestry.plugins.module_utils._engine import describe_tags, execute_tag, plan_tag, target_digest
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format import MANIFEST_MEDIA_TYPE, parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._module import DogestryModule


class DogestryTagger:
    def __init__(self, module: DogestryModule):
        self.module = module
        self.state = module.params["state"]
        self.name = module.params["name"]
        self.tag = module.params["tag"]
        self.image = module.params["image"]
        if self.state is not None:
            if any(c in self.name + self.tag for c in "*?["):
                raise DogestryError("state=%s needs an exact name and tag, got %s:%s" % (self.state, self.name, self.tag))
            self.ref = parse_image_ref("%s:%s" % (self.name, self.tag))
        self.repo = module.repository()

    def run(self):
        if self.state is None:
            self.repo.check()
            malformed = {}
            tags, broken = describe_tags(self.repo, self.repo.list_targets(self.name, self.tag, malformed), malformed)
            for ref, why in sorted(broken.items()):
                self.module.module.warn("tag %s on %s is broken: %s" % (ref, self.repo.url, why))
            return dict(changed=False, tags=tags, broken=broken, actions=[],
                        msg="%d tag(s) matching %s:%s on %s%s" % (
                            len(tags), self.name, self.tag, self.repo.url,
                            "; %d broken: %s" % (len(broken), ", ".join(sorted(broken))) if broken else ""))
        change = plan_tag(self.repo, self.ref, self.image if self.state == "present" else None)
        if not self.module.check_mode:
            execute_tag(self.repo, change)
        before = self.describe(change.before, change.malformed)
        after = self.describe(change.after)
        actions = []
        if change.reason:
            was = " (was %s)" % self.shown(before) if before else ""
            if change.after is None:
                actions.append("Removed %s%s" % (self.ref, was))
            else:
                actions.append("Tagged %s -> %s%s" % (self.ref, self.shown(after), was))
        result = dict(changed=change.reason is not None, tags=after, actions=actions,
                      msg=("%s (check mode)" % change.reason if self.module.check_mode else actions[0])
                      if change.reason else "%s is already as requested on %s" % (self.ref, self.repo.url))
        if self.module.diff_mode:
            result["diff"] = dict(before={"tags": before}, after={"tags": after})
        return result

    def describe(self, target, malformed=None):
        """{name:tag: what the tag names} ({} for no tag); a tag naming something unreadable says why."""
        if malformed is not None:
            return {str(self.ref): {"broken": "malformed tag: %s" % malformed}}
        if target is None:
            return {}
        described, broken = describe_tags(self.repo, {self.ref: target})
        return described or {str(self.ref): {"manifest": target_digest(target), "broken": broken[str(self.ref)]}}

    def shown(self, described):
        """How an action names what a tag names: an image pushed by dogestry_push by its image ID (as docker
        does), OCI content kept as pushed (an index, an artifact) by its own digest."""
        entry = described[str(self.ref)]
        if "broken" in entry:
            return "a broken tag"
        return (entry.get("image_id") if entry["media_type"] == MANIFEST_MEDIA_TYPE else entry["manifest"])[:19]


def main():
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"]),
        name=dict(type="str", default="*"),
        tag=dict(type="str", default="*"),
        image=dict(type="str"),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True,
                            required_if=[("state", "present", ["image"])])
    try:
        module.exit_json(**DogestryTagger(module).run())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
