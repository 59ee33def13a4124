"""TagLister and TagSetter, the logic dogestry_tag, dogestry_tag_info and dogestry_tags share, with a stand-in for
DogestryModule (its repository, check and diff mode, warnings) over a directory remote."""

from types import SimpleNamespace

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._tag_modules import TagLister, TagSetter
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image


class Module:
    def __init__(self, repo, check_mode=False, diff_mode=False):
        self.check_mode, self.diff_mode, self.warnings = check_mode, diff_mode, []
        self.module = SimpleNamespace(warn=self.warnings.append)
        self._repo = repo

    def repository(self):
        return self._repo


@pytest.fixture
def repo(tmp_path):
    return Repository(LocalRemote(str(tmp_path / "remote")))


def test_listing_filters_by_patterns_and_sets_broken_tags_apart_with_a_warning(repo):
    oid, manifest = store_image(repo, "app:1", [b"one"])
    store_image(repo, "app:2", [b"two"])
    store_image(repo, "web:1", [b"web"])
    broken_oid = store_image(repo, "app:old", [b"old"])[0]
    repo.remote.delete(next(info.key for info in repo.remote.list("manifests/") if broken_oid in info.key))
    module = Module(repo)
    result = TagLister(module, "app", "*").run()
    assert sorted(result["tags"]) == ["app:1", "app:2"] and list(result["broken"]) == ["app:old"]
    assert result["tags"]["app:1"] == {"manifest": "sha256:" + oid, "media_type": "application/vnd.dogestry.manifest.v1+json",
                                       "image_id": manifest.image_id, "layers": 1, "size": 3,
                                       "stored_size": 3 + manifest.config_size}
    assert module.warnings == ["tag app:old on %s is broken: %s" % (repo.url, result["broken"]["app:old"])]
    assert result["msg"] == "2 tag(s) matching app:* on %s; 1 broken: app:old" % repo.url
    assert TagLister(Module(repo), "*", "1").run()["msg"] == "2 tag(s) matching *:1 on %s" % repo.url


@pytest.mark.parametrize("name, tag", [("app*", "1"), ("app", "v?"), ("app", "[12]")])
def test_setting_needs_an_exact_name_and_tag(repo, name, tag):
    with pytest.raises(DogestryError) as exc:
        TagSetter(Module(repo), "present", name, tag, "app:1")
    assert str(exc.value) == "state=present needs an exact name and tag, got %s:%s" % (name, tag)


def test_moving_a_tag_says_what_it_was_and_diffs(repo):
    second_oid, second = store_image(repo, "app:2", [b"two"])
    _oid, first = store_image(repo, "app:stable", [b"one"])
    module = Module(repo, check_mode=True, diff_mode=True)
    result = TagSetter(module, "present", "app", "stable", "app:2").run()
    assert result["actions"] == ["Tagged app:stable -> %s (was %s)" % (second.image_id[:19], first.image_id[:19])]
    assert result["msg"].endswith("(check mode)") and result["changed"] is True
    assert result["diff"]["before"]["tags"]["app:stable"]["image_id"] == first.image_id
    assert result["diff"]["after"]["tags"]["app:stable"]["image_id"] == second.image_id
    assert repo.read_target(parse_image_ref("app:stable")) != second_oid      # check mode wrote nothing
    result = TagSetter(Module(repo), "present", "app", "stable", "app:2").run()
    assert result["msg"] == result["actions"][0] and "diff" not in result
    assert repo.read_target(parse_image_ref("app:stable")) == second_oid


def test_removing_a_tag_that_is_not_there_is_no_change(repo):
    store_image(repo, "app:1", [b"one"])
    result = TagSetter(Module(repo), "absent", "app", "gone").run()
    assert (result["changed"], result["actions"], result["tags"]) == (False, [], {})
    assert result["msg"] == "app:gone is already as requested on %s" % repo.url
