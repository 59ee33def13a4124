"""Options set once for the action group (module_defaults, the README's pattern) meet options a task sets."""

import docker

from ansible_runner import run_tasks
from test_modules_local import BASE, push
from test_modules_s3 import defaults


def test_a_signed_url_wins_over_a_remote_from_module_defaults(tmp_path, docker_host, s3_endpoint, s3_bucket,
                                                              build_image, name):
    image_id = build_image(docker_host, name + ":1", [BASE, {"/signed": b"signed\n"}])
    remote = "s3://%s/signed/" % s3_bucket
    minted = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "push"),
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1"}, "register": "url"},
    ], module_defaults=defaults(s3_endpoint), env={"AWS_CA_BUNDLE": ""})
    assert minted["url"].get("url"), minted["_output"][-3000:]
    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    # Every dogestry task of the play gets this remote (and S3 options); the deploy task brings a signed URL.
    play_defaults = {"group/dogestry.dogestry.dogestry": dict(
        defaults(s3_endpoint)["group/dogestry.dogestry.dogestry"], remote=str(tmp_path / "not-this-remote"))}
    pulled = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_pull": {"signed_url": minted["url"]["url"], "docker_host": docker_host},
         "register": "pull"},
    ], module_defaults=play_defaults, env={"AWS_CA_BUNDLE": ""})
    assert not pulled["pull"].get("failed"), pulled["pull"].get("msg")
    assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == image_id, pulled["pull"]
    assert not (tmp_path / "not-this-remote").exists()
