"""dogestry_tags on tags made by clients of `dogestry serve` (OCI content kept as pushed, format version 2):
a tag operation copies what the source tag names byte for byte, removes what it is asked to remove, and
shows the real before in --diff. The content arrives through a real accelerator from skopeo and oras."""

import json
import os

import oras.client
import pytest

from ansible_runner import run_tasks
from dogestry_cli import skopeo
from test_accelerator_oci import OCI_INDEX, _digest, _multi_platform_layout
from test_modules_local import tags

ARTIFACT_TYPE = "application/vnd.example.sbom.v1+json"


@pytest.fixture
def pushed(tmp_path, servers, name):
    """(remote, server, index bytes): a two-platform index pushed as name:1 by skopeo through `dogestry serve`."""
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path)
    index, _children = _multi_platform_layout(str(tmp_path / "layout"))
    skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "oci:%s:multi" % (tmp_path / "layout"),
           "docker://%s/%s:1" % (server.host, name))
    return remote, server, index


def tag_bytes(remote, name, tag):
    with open(os.path.join(remote, "repositories", name, "_tags", tag), "rb") as f:
        return f.read()


def test_a_tag_of_oci_content_is_copied_verbatim(tmp_path, pushed, name):
    remote, server, index = pushed
    pushed_tag = tag_bytes(remote, name, "1")
    assert json.loads(pushed_tag)["digest"] == _digest(index)
    present = dict(remote=remote, state="present", name=name, tag="prod", image=name + ":1", diff=True)
    r = run_tasks(tmp_path, [tags("add_check", check_mode=True, **present), tags("add", **present),
                             tags("add_again", **present)])
    assert r["add_check"]["changed"] and r["add"]["changed"] and not r["add_again"]["changed"], r["_output"][-3000:]
    # the same bytes, so the same digest: every platform and every signature stays valid
    assert tag_bytes(remote, name, "prod") == pushed_tag
    added = r["add"]["tags"][name + ":prod"]
    assert (added["manifest"], added["media_type"]) == (_digest(index), OCI_INDEX), added
    assert r["add"]["diff"]["before"]["tags"] == {} and r["add"]["diff"]["after"]["tags"] == r["add"]["tags"]
    assert r["add_check"]["diff"] == r["add"]["diff"]
    assert r["add"]["actions"] == ["Tagged %s:prod -> %s" % (name, _digest(index)[:19])], r["add"]["actions"]
    # the accelerator serves the copied tag as the index that was pushed
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "docker://%s/%s:prod" % (server.host, name)).stdout
    assert raw.encode() == index


def test_a_tag_of_oci_content_is_removed_and_diffs_from_its_real_before(tmp_path, pushed, name):
    remote, server, index = pushed
    absent = dict(remote=remote, state="absent", name=name, tag="1", diff=True)
    r = run_tasks(tmp_path, [tags("remove_check", check_mode=True, **absent), tags("remove", **absent),
                             tags("remove_again", **absent)])
    assert r["remove_check"]["changed"] and r["remove"]["changed"], r["_output"][-3000:]
    assert not r["remove_again"]["changed"]
    assert not os.path.exists(os.path.join(remote, "repositories", name, "_tags", "1"))
    before = r["remove"]["diff"]["before"]["tags"][name + ":1"]
    assert (before["manifest"], before["media_type"]) == (_digest(index), OCI_INDEX), r["remove"]["diff"]
    assert r["remove"]["diff"]["after"]["tags"] == {} and r["remove_check"]["diff"] == r["remove"]["diff"]
    assert r["remove"]["actions"] == ["Removed %s:1 (was %s)" % (name, _digest(index)[:19])], r["remove"]["actions"]
    status, _headers, _body = server.request("GET", "/v2/%s/manifests/1" % name)
    assert status == 404


def test_an_artifact_tag_is_copied_and_a_moved_tag_diffs_from_its_real_before(tmp_path, pushed, name):
    remote, server, index = pushed
    (tmp_path / "sbom.json").write_text(json.dumps({"packages": ["busybox"]}))
    (tmp_path / "config.json").write_text("{}")
    os.chdir(str(tmp_path))
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    response = client.push(target="%s/%s:sbom" % (server.host, name), files=["sbom.json"],
                           manifest_config="config.json:" + ARTIFACT_TYPE)
    assert response.status_code == 201
    artifact = json.loads(tag_bytes(remote, name, "sbom"))
    move = dict(remote=remote, state="present", name=name, tag="1", image=name + ":sbom", diff=True)
    r = run_tasks(tmp_path, [tags("move_check", check_mode=True, **move), tags("move", **move)])
    assert r["move"]["changed"], r["_output"][-3000:]
    assert tag_bytes(remote, name, "1") == tag_bytes(remote, name, "sbom")
    assert r["move"]["diff"]["before"]["tags"][name + ":1"]["manifest"] == _digest(index), r["move"]["diff"]
    assert r["move"]["diff"]["after"]["tags"][name + ":1"]["manifest"] == artifact["digest"]
    assert r["move"]["actions"] == ["Tagged %s:1 -> %s (was %s)" % (name, artifact["digest"][:19], _digest(index)[:19])]
    assert r["move_check"]["diff"] == r["move"]["diff"]
