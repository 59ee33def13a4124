"""One malformed tag object on a remote (junk where a tag document should be) is reported where it is, and
everything else keeps working: dogestry_tags and `dogestry tags` list it under broken, dogestry_verify reports
it and checks the rest, `dogestry serve` serves the other names and tags, dogestry_tags state=absent removes
it; prune refuses to run while it is there (it could name anything prune would delete)."""

import json
import os
import urllib.request

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.tags import tag_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
from ansible_runner import run_tasks
from dogestry_cli import dogestry
from test_modules_local import task, tags

JUNK = b"this is not a tag\n"


@pytest.fixture
def damaged(tmp_path, name):
    """(remote path, repository): app:1 and app:2 of `name`, other:1, and `name`:bad holding junk."""
    remote = str(tmp_path / "remote")
    repo = Repository(LocalRemote(remote))
    store_image(repo, name + ":1", [b"one"])
    store_image(repo, name + ":2", [b"two"])
    store_image(repo, name + "-other:1", [b"other"])
    repo.remote.put(tag_key(name, "bad"), JUNK)
    return remote, repo


def test_the_modules_list_verify_and_remove_around_a_malformed_tag(tmp_path, damaged, name):
    remote, repo = damaged
    r = run_tasks(tmp_path, [
        tags("listed", remote=remote, name=name),
        task("dogestry_verify", "verified", dict(remote=remote)),
        task("dogestry_prune", "pruned", dict(remote=remote, grace_period="1m")),
    ])
    listed = r["listed"]
    assert not listed.get("failed") and sorted(listed["tags"]) == [name + ":1", name + ":2"], listed
    assert list(listed["broken"]) == [name + ":bad"] and "does not hold a manifest digest" in listed["broken"][name + ":bad"]
    verified = r["verified"]
    assert verified["failed"] and verified["checked"]["tags"] == 4 and verified["checked"]["manifests"] == 3, verified
    assert [(p["key"], p["kind"]) for p in verified["problems"]] == [(tag_key(name, "bad"), "broken")], verified
    pruned = r["pruned"]
    assert pruned["failed"] and "\n" not in pruned["msg"], pruned
    assert pruned["msg"].startswith("prune refused: tag %s:bad on %s does not hold a manifest digest" % (name, remote)), pruned

    removed = run_tasks(tmp_path, [
        tags("remove", remote=remote, state="absent", name=name, tag="bad", diff=True),
        tags("again", remote=remote, state="absent", name=name, tag="bad"),
        task("dogestry_verify", "verified", dict(remote=remote)),
    ])
    assert removed["remove"]["changed"] and not removed["again"]["changed"], removed["_output"][-3000:]
    assert "malformed" in removed["remove"]["diff"]["before"]["tags"][name + ":bad"]["broken"]
    assert not os.path.exists(os.path.join(remote, *tag_key(name, "bad").split("/")))
    assert not removed["verified"].get("failed") and removed["verified"]["problems"] == []


def test_the_cli_lists_it_under_broken(damaged, name):
    remote, _repo = damaged
    listed = dogestry("tags", remote, "--json")
    assert sorted(json.loads(listed.stdout)["tags"]) == [name + "-other:1", name + ":1", name + ":2"], listed.stdout
    assert list(json.loads(listed.stdout)["broken"]) == [name + ":bad"]
    assert "tag %s:bad is broken" % name in listed.stderr


def test_the_accelerator_serves_the_other_names_and_tags(tmp_path, damaged, servers, name):
    remote, _repo = damaged
    server = servers(remote, tmp_path)

    def get(path):
        with urllib.request.urlopen("http://%s%s" % (server.host, path), timeout=30) as response:
            return json.loads(response.read())
    assert get("/v2/_catalog")["repositories"] == [name, name + "-other"]
    assert get("/v2/%s/tags/list" % name)["tags"] == ["1", "2"]
    assert get("/v2/%s/manifests/1" % name)["schemaVersion"] == 2
    status, _headers, _body = server.request("GET", "/v2/%s/manifests/nope" % name)
    assert status == 404
