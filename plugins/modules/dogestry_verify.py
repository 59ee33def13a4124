#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_verify
short_description: Check a dogestry remote for missing and damaged data, and repair what can be
version_added: 0.2.0
description:
  - Reads every manifest, config and image-index entry of a remote, every layer blob a manifest
    names, and every manifest and blob kept as pushed through C(dogestry serve) (or O(sample) of the
    blobs; the others are checked by size), as C(restic check --read-data) does.
    Tags that name a missing or damaged manifest, and malformed tags, are reported too; the rest is checked all the same.
  - With O(repair=true), damaged objects (corrupt blobs and manifests, index entries naming another
    image) are moved aside under C(quarantine/<time>/) on the remote; nothing is deleted. The next push of
    an affected image stores them anew.
  - Missing objects and broken tags cannot be repaired by moving anything. The task fails while any such
    problem remains, with a message naming them. Push the images again, or move or remove the tags.
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
    details: Checks everything, moves nothing, and reports as changed what a repair would move.
  diff_mode:
    support: none
options:
  sample:
    description:
      - Read and hash in full only this many blobs (layers, and blobs kept as pushed), chosen at random; check the
        sizes of the others.
      - Leave it out to read every blob. Manifests, configs and index entries are always read.
    type: int
  repair:
    description:
      - Move damaged objects aside under C(quarantine/) so that the next push uploads them again.
    type: bool
    default: false
seealso:
  - module: dogestry.dogestry.dogestry_prune
  - module: dogestry.dogestry.dogestry_push
    description: Stores again what a repair moved aside.
  - module: dogestry.dogestry.dogestry_tag_info
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: Check every byte of a remote
  dogestry.dogestry.dogestry_verify:
    remote: /srv/dogestry

- name: Nightly spot check of 20 layers, repairing what is damaged
  dogestry.dogestry.dogestry_verify:
    remote: s3://ops-goodies/docker-repo/
    sample: 20
    repair: true
"""

RETURN = r"""
checked:
  description: What was checked.
  returned: always
  type: dict
  sample: {tags: 4, manifests: 5, configs: 5, index_entries: 5, layers: 12, layers_read: 12, oci_manifests: 2, blobs: 6,
           blobs_read: 6, bytes_read: 229170688}
problems:
  description: Every problem found, with its key, kind (V(missing), V(corrupt), V(wrong), V(broken)) and whether moving it aside repairs it.
  returned: always
  type: list
  elements: dict
  sample:
    - key: blobs/sha256/5f/5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef.lz4
      kind: corrupt
      detail: "layer blob blobs/sha256/5f/5f70….lz4 has 5 bytes, its manifests say 1031"
      repairable: true
moved:
  description: Objects moved aside (that would be, in check mode), and where to.
  returned: always
  type: dict
  sample: {"blobs/sha256/5f/5f70….lz4": "quarantine/20261125T043000Z/blobs/sha256/5f/5f70….lz4"}
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify


class DogestryVerifier:
    def __init__(self, module: DogestryModule):
        self.module = module
        self.sample = module.params["sample"]
        if self.sample is not None and self.sample < 0:
            raise DogestryError("sample must be 0 or more, got %d" % self.sample)
        self.repair = module.params["repair"]
        self.repo = module.repository()

    def run(self):
        report = verify(self.repo, self.sample, repair=self.repair and not self.module.check_mode,
                        jobs=self.module.params["jobs"])
        result = report.result()
        if self.repair and self.module.check_mode:
            result["moved"] = {p.key: "quarantine/…/%s" % p.key for p in report.problems if p.repairable}
        result["changed"] = bool(result["moved"])
        remaining = [p for p in report.problems if p.key not in result["moved"]]
        if remaining:
            self.module.module.fail_json(msg=report.summary(), **result)
        result["msg"] = report.summary()
        return result


def main():
    argument_spec = dict(
        sample=dict(type="int"),
        repair=dict(type="bool", default=False),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True)
    try:
        module.exit_json(**DogestryVerifier(module).run())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
