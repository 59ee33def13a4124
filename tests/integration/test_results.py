"""What a run says it did: a real push or pull says what was done, check mode what would be."""

import json

from ansible_runner import run_tasks
from dogestry_cli import docker, dogestry
from test_modules_local import BASE, push


def _said(doc):
    return doc.get("reason") or ""


def test_real_pushes_and_pulls_say_what_they_did(tmp_path, docker_host, build_image, name, remote):
    build_image(docker_host, name + ":1", [BASE, {"/said": name}])
    docker(docker_host, "tag", name + ":1", name + ":2")
    cli = ["--docker-host", docker_host, "--json"]
    pushed = json.loads(dogestry("push", remote, name + ":1", *cli).stdout)
    tagged = json.loads(dogestry("push", remote, name + ":2", *cli).stdout)
    docker(docker_host, "rmi", name + ":2")
    tag_pulled = json.loads(dogestry("pull", remote, name + ":2", *cli).stdout)
    docker(docker_host, "rmi", "-f", name + ":1", name + ":2")
    pulled = json.loads(dogestry("pull", remote, name + ":1", *cli).stdout)
    said = [_said(doc) for doc in (pushed, tagged, tag_pulled, pulled)]
    assert not [line for line in said if "would" in line or "to download" in line or "missing on" in line], said
    assert "uploaded" in said[0] and "tag set" in said[1] and "tag set" in said[2] and "downloaded" in said[3], said

    # The modules: check mode says what would be done, the real run what was.
    docker(docker_host, "tag", name + ":1", name + ":3")
    r = run_tasks(tmp_path, [
        push(remote, [name + ":3"], "check", check_mode=True, docker_host=docker_host),
        push(remote, [name + ":3"], "real", docker_host=docker_host),
    ])
    check, real = r["check"]["images"][0]["reason"], r["real"]["images"][0]["reason"]
    assert "tag would be set" in check and "would" not in real and "tag set" in real, (check, real)
