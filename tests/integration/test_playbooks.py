"""The playbooks the collection ships, run as a user would run them (ansible-playbook on localhost)."""

import os
import uuid

import docker

from ansible_runner import run_playbook
from test_modules_local import BASE

PLAYBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks")


def test_push_then_deploy_all_or_nothing(tmp_path, docker_host, build_image):
    app = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, app + ":20131210", [BASE, {"/release": b"20131210"}])
    common = {"app_name": app, "tag": "20131210", "dogestry_remote": str(tmp_path / "remote")}
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "push.yml"), common)
    assert proc.returncode == 0, output[-3000:]
    docker.APIClient(base_url=docker_host).remove_image(app + ":20131210", force=True)

    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"), dict(common, deploy_hosts="localhost"))
    assert proc.returncode == 0 and "pulled %s:20131210" % app in output, output[-3000:]
    assert docker.APIClient(base_url=docker_host).inspect_image(app + ":20131210")["Id"] == image_id
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"), dict(common, deploy_hosts="localhost"))
    assert proc.returncode == 0 and "already in the Docker daemon" in output, output[-3000:]
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "deploy.yml"),
                                dict(common, deploy_hosts="localhost", tag="19990101"))
    assert proc.returncode != 0 and "no such tag" in output, output[-3000:]


def test_demo_playbook_runs_end_to_end(tmp_path, docker_host):
    image = "dogestry-demo-test-%s:1" % uuid.uuid4().hex[:8]
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "demo.yml"), {
        "dogestry_remote": str(tmp_path / "remote"), "demo_build_dir": str(tmp_path / "build"), "demo_image": image})
    try:
        assert proc.returncode == 0, output[-3000:]
        assert "container said: hello from a registry-free deploy" in output
    finally:
        docker.APIClient(base_url=docker_host).remove_image(image, force=True)
