# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The Ansible side of the tag modules: listing (dogestry_tag_info) and setting or removing one tag
(dogestry_tag), shared with dogestry_tags, the deprecated module that did both.

The Ansible front end: may import Ansible, _common and every layer below; not _cli or _registry.
"""

from __future__ import annotations

from ._common import DogestryModule
from ._errors import DogestryError
from ._format.manifest import MANIFEST_MEDIA_TYPE
from ._format.reference import parse_image_ref
from ._ops.tags import describe_tags, execute_tag, plan_tag, target_digest


class TagLister:
    """The tags matching shell patterns of name and tag, with what each names; broken ones apart, with a warning."""

    def __init__(self, module: DogestryModule, name: str, tag: str):
        self.module, self.name, self.tag = module, name, tag
        self.repo = module.repository()

    def run(self):
        self.repo.check()
        malformed = {}
        tags, broken = describe_tags(self.repo, self.repo.list_targets(self.name, self.tag, malformed), malformed)
        for ref, why in sorted(broken.items()):
            self.module.module.warn("tag %s on %s is broken: %s" % (ref, self.repo.url, why))
        return dict(changed=False, tags=tags, broken=broken,
                    msg="%d tag(s) matching %s:%s on %s%s" % (
                        len(tags), self.name, self.tag, self.repo.url,
                        "; %d broken: %s" % (len(broken), ", ".join(sorted(broken))) if broken else ""))


class TagSetter:
    """Makes name:tag name what `image` names (state present), or removes it (absent); check mode and diff."""

    def __init__(self, module: DogestryModule, state: str, name: str, tag: str, image=None):
        self.module, self.state, self.image = module, state, image
        if any(c in name + tag for c in "*?["):
            raise DogestryError("state=%s needs an exact name and tag, got %s:%s" % (state, name, tag))
        self.ref = parse_image_ref("%s:%s" % (name, tag))
        self.repo = module.repository()

    def run(self):
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
