"""The playbooks the collection ships, run as a user would run them (ansible-playbook on localhost)."""

import os
import uuid

import docker

from ansible_runner import run_playbook
from test_modules_local import BASE

PLAYBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks")


def test_publish_and_deploy_refuse_incomplete_requests(tmp_path, docker_host, build_image, name):
    """The whole fleet path is in test_fleet.py; here, what an operator gets wrong."""
    remote = str(tmp_path / "remote")
    common = {"app_name": name, "dogestry_remote": remote, "publish_group": "all", "deploy_group": "all",
              "dogestry_docker_host": docker_host}
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "publish.yml"), common)
    assert proc.returncode != 0 and "run it as: ansible-playbook -i INVENTORY publish.yml -e tag=TAG" in output
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"),
                                dict(common, tag="1", deploy_group="nosuchgroup"))
    assert proc.returncode != 0 and "with the hosts in group nosuchgroup (found 0)" in output, output[-3000:]

    build_image(docker_host, name + ":1", [BASE, {"/release": b"1"}])
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "publish.yml"), dict(common, tag="1"))
    assert proc.returncode == 0, output[-3000:]
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"), dict(common, tag="19990101"))
    assert proc.returncode != 0 and "no such tag" in output and "PLAY [Phase two" not in output, output[-3000:]
    client = docker.APIClient(base_url=docker_host)
    assert not client.containers(all=True, filters={"name": name}), "a refused deploy must not create the container"


def test_demo_playbook_runs_end_to_end(tmp_path, docker_host):
    image = "dogestry-demo-test-%s:1" % uuid.uuid4().hex[:8]
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "demo.yml"), {
        "dogestry_remote": str(tmp_path / "remote"), "demo_build_dir": str(tmp_path / "build"), "demo_image": image})
    try:
        assert proc.returncode == 0, output[-3000:]
        assert "container said: hello from a registry-free deploy" in output
    finally:
        docker.APIClient(base_url=docker_host).remove_image(image, force=True)


def test_a_crash_looping_release_without_a_health_check_is_put_back(tmp_path, docker_host, build_image, name):
    """Docker reports a container it keeps restarting as Running: that is no healthy release."""
    remote = str(tmp_path / "remote")
    app = {"name": name, "command": ["/bin/sh", "/app.sh"], "network_mode": "none", "stop_timeout": 2}   # no health check
    common = {"app_name": name, "dogestry_remote": remote, "publish_group": "all", "deploy_group": "all",
              "dogestry_docker_host": docker_host, "app_container": app, "app_settle_seconds": 5}
    build_image(docker_host, name + ":1", [BASE, {"/app.sh": "trap 'exit 0' TERM; while :; do sleep 1; done\n"}])
    build_image(docker_host, name + ":crash", [BASE, {"/app.sh": "echo cannot start >&2; exit 1\n"}])
    client = docker.APIClient(base_url=docker_host)
    try:
        for tag in ("1", "crash"):
            proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "publish.yml"), dict(common, tag=tag))
            assert proc.returncode == 0, output[-3000:]
        proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"), dict(common, tag="1"))
        assert proc.returncode == 0, output[-3000:]
        proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"), dict(common, tag="crash"))
        assert proc.returncode != 0, "a deploy of a crash-looping release succeeded:\n" + output[-3000:]
        assert "%s:crash is not healthy on localhost" % name in output, output[-3000:]
        assert "it is back on 1 (running)" in output, output[-3000:]
        state = client.inspect_container(name)
        assert state["Config"]["Labels"]["dogestry.release"] == "1"
        assert state["State"]["Running"] and not state["State"]["Restarting"], state["State"]
    finally:
        client.remove_container(name, force=True)
