#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_prune
short_description: Delete data no tag of a dogestry remote references
version_added: 0.1.0
description:
  - Deletes blobs, manifests and image-index entries that no tag (and no unexpired signed pull
    URL) references, expired signed-URL tickets, and stale push leases.
  - Tags are never deleted, and data another tag still uses is never deleted. Remove tags with
    M(dogestry.dogestry.dogestry_tag), then prune.
  - Unreferenced objects younger than O(grace_period) are kept, and so is everything a push in
    flight has announced, so a push running at the same time never loses its blobs.
  - A malformed tag (anything but a tag document where a tag should be) makes it fail, naming the tag,
    before anything is deleted, since it could name any stored image. Fix it, or remove it with
    M(dogestry.dogestry.dogestry_tag) (O(dogestry.dogestry.dogestry_tag#module:state=absent)), then prune.
  - In check mode, lists what would be deleted and how many bytes it takes.
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
    details: Lists exactly what a real run would delete (minus whatever a push references meanwhile).
  diff_mode:
    support: none
options:
  grace_period:
    description:
      - Unreferenced data younger than this is kept. Make it longer than your longest push; the default also
        leaves a week to undo a tag removed by mistake (tag the image again) before its data goes.
      - Seconds, or a number with a unit V(s), V(m), V(h) or V(d) (V(90m), V(24h), V(7d)), at least a minute.
      - The default is the one of C(dogestry prune --grace-period).
    type: str
    default: 7d
seealso:
  - module: dogestry.dogestry.dogestry_tag
    description: Removes the tags whose data prune may then delete.
  - module: dogestry.dogestry.dogestry_verify
  - module: community.docker.docker_prune
    description: Prunes a Docker daemon.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: See what a prune would free
  dogestry.dogestry.dogestry_prune:
    remote: s3://ops-goodies/docker-repo/
  check_mode: true
  register: would_prune

- name: Prune data unreferenced for a day (the default keeps a week)
  dogestry.dogestry.dogestry_prune:
    remote: /srv/dogestry
    grace_period: 24h
"""

RETURN = r"""
count:
  description: Number of unreferenced objects found (that would be deleted in check mode).
  returned: always
  type: int
  sample: 12
bytes:
  description: Bytes those objects take on the remote.
  returned: always
  type: int
  sample: 104857600
deleted:
  description: Keys deleted (to delete, in check mode), by kind.
  returned: always
  type: dict
  contains:
    image_index:
      description: Image-ID index entries.
      type: list
      elements: str
    manifests:
      description: Manifests.
      type: list
      elements: str
    blobs:
      description: Layers and image configs.
      type: list
      elements: str
    tickets:
      description: Expired signed-pull-URL tickets.
      type: list
      elements: str
    leases:
      description: Stale leases of pushes that died.
      type: list
      elements: str
deleted_bytes:
  description: Bytes actually freed.
  returned: when not in check mode
  type: int
kept:
  description: Keys planned for deletion that a push or tag referenced by the time of deletion.
  returned: when not in check mode
  type: list
  elements: str
spared_young:
  description: Number of unreferenced objects kept because they are younger than O(grace_period).
  returned: always
  type: int
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.common import human_size
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import DEFAULT_GRACE_PERIOD, execute_prune, parse_duration, plan_prune


class DogestryPruner:
    def __init__(self, module: DogestryModule):
        self.module = module
        try:
            self.grace = parse_duration(module.params["grace_period"])
        except DogestryError as exc:
            raise DogestryError("grace_period: %s" % exc)
        self.jobs = module.params["jobs"]
        self.repo = module.repository()

    def prune(self):
        plan = plan_prune(self.repo, self.grace)
        if self.module.check_mode:
            result = plan.result()
        else:
            result = execute_prune(self.repo, plan, self.jobs)
        result.pop("reason", None)
        result.pop("grace_seconds", None)
        if not plan.count:
            result["msg"] = "nothing to prune on %s (%d unreferenced object(s) younger than %s kept)" % (
                self.repo.url, result["spared_young"], self.module.params["grace_period"])
        elif self.module.check_mode:
            result["msg"] = "would delete %d unreferenced object(s), %s, from %s" % (
                plan.count, human_size(plan.bytes), self.repo.url)
        else:
            result["msg"] = "deleted %d unreferenced object(s), %s, from %s" % (
                result["deleted_count"], human_size(result["deleted_bytes"]), self.repo.url)
        return result


def main():
    argument_spec = dict(
        grace_period=dict(type="str", default=DEFAULT_GRACE_PERIOD),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True)
    try:
        module.exit_json(**DogestryPruner(module).prune())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
