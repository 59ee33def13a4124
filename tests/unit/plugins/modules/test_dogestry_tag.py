"""dogestry_tag, dogestry_tag_info and the deprecated dogestry_tags, run in-process against a directory remote
(the tag engine is cheap and pure there: no stand-in needed)."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.modules import dogestry_tag, dogestry_tag_info
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.module_runner import module_runner


@pytest.fixture
def run_module(monkeypatch):
    return module_runner(monkeypatch)


@pytest.fixture
def repo(tmp_path):
    return Repository(LocalRemote(str(tmp_path / "remote")))


@pytest.fixture
def stored(repo):
    oid, manifest = store_image(repo, "app:1", [b"layer"])
    return oid, manifest


def test_state_present_needs_image(run_module, repo, stored):
    exited = run_module(dogestry_tag.main, dict(remote=repo.url, name="app", tag="stable"))
    assert exited.failed and exited.result["msg"] == "state is present but all of the following are missing: image"


def test_check_mode_reports_the_change_with_a_diff_and_writes_nothing(run_module, repo, stored):
    oid, manifest = stored
    exited = run_module(dogestry_tag.main, dict(remote=repo.url, name="app", tag="stable", image="app:1"),
                        check_mode=True, diff=True)
    assert not exited.failed and exited.result["changed"] is True
    assert exited.result["msg"] == "app:stable would point at manifest sha256:%s (check mode)" % oid[:12]
    assert exited.result["diff"]["before"] == {"tags": {}}
    assert exited.result["diff"]["after"]["tags"]["app:stable"]["image_id"] == manifest.image_id
    assert "app:stable" not in [str(ref) for ref in repo.list_targets("app", "*")]


def test_present_then_again_then_absent(run_module, repo, stored):
    oid, manifest = stored
    args = dict(remote=repo.url, name="app", tag="stable", image="app:1")
    exited = run_module(dogestry_tag.main, args)
    assert (exited.failed, exited.result["changed"]) == (False, True)
    assert exited.result["actions"] == ["Tagged app:stable -> %s" % manifest.image_id[:19]]
    assert repo.read_target(parse_image_ref("app:stable")) == oid
    exited = run_module(dogestry_tag.main, args)
    assert (exited.result["changed"], exited.result["msg"]) == (False, "app:stable is already as requested on %s" % repo.url)
    exited = run_module(dogestry_tag.main, dict(remote=repo.url, name="app", tag="stable", state="absent"))
    assert exited.result["changed"] is True and exited.result["tags"] == {}
    assert exited.result["actions"] == ["Removed app:stable (was %s)" % manifest.image_id[:19]]


def test_a_pattern_with_state_present_is_one_line_failure(run_module, repo, stored):
    exited = run_module(dogestry_tag.main, dict(remote=repo.url, name="app", tag="v*", image="app:1"))
    assert exited.failed and exited.result["msg"] == "state=present needs an exact name and tag, got app:v*"


def test_an_unknown_image_fails_with_the_engines_line(run_module, repo, stored):
    exited = run_module(dogestry_tag.main, dict(remote=repo.url, name="app", tag="stable", image="app:404"))
    assert exited.failed and "app:404" in exited.result["msg"] and "\n" not in exited.result["msg"]
    assert "exception" in exited.result        # the traceback rides along for -vvv


def test_tag_info_lists_matching_tags_and_changes_nothing(run_module, repo, stored):
    oid, manifest = stored
    store_image(repo, "other:1", [b"other"])
    exited = run_module(dogestry_tag_info.main, dict(remote=repo.url, name="app"))
    assert exited.failed is False and exited.result["changed"] is False
    assert list(exited.result["tags"]) == ["app:1"] and exited.result["tags"]["app:1"]["image_id"] == manifest.image_id
    assert exited.result["msg"] == "1 tag(s) matching app:* on %s" % repo.url


def test_deprecated_tags_lists_without_state_and_sets_with_it(run_module, repo, stored):
    from ansible_collections.dogestry.dogestry.plugins.modules import dogestry_tags
    oid, _manifest = stored
    exited = run_module(dogestry_tags.main, dict(remote=repo.url, name="app"))
    assert (list(exited.result["tags"]), exited.result["actions"], exited.result["changed"]) == (["app:1"], [], False)
    exited = run_module(dogestry_tags.main, dict(remote=repo.url, name="app", tag="2", state="present", image="app:1"))
    assert exited.result["changed"] is True and repo.read_target(parse_image_ref("app:2")) == oid
