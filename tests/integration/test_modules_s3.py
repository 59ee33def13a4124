"""The modules against a real S3 endpoint (moto_server on loopback): connection options set once
through module_defaults on the action group, secrets kept out of results and logs."""

import uuid

import boto3
import docker
import pytest

from ansible_runner import run_tasks
from test_modules_local import BASE, pull, push, tags

SECRET = "s3cr3t-%s" % uuid.uuid4().hex


@pytest.fixture
def bucket(s3_endpoint):
    name = "dogestry-%s" % uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key=SECRET).create_bucket(Bucket=name)
    return name


def defaults(s3_endpoint):
    return {"group/dogestry.dogestry.dogestry": {
        "endpoint_url": s3_endpoint, "region": "us-east-1", "access_key": "testing", "secret_key": SECRET}}


def test_push_pull_tags_through_s3_with_module_defaults(tmp_path, docker_host, s3_endpoint, bucket, build_image):
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, name + ":1", [BASE, {"/s3": b"via s3\n"}], cmd=["/bin/busybox", "cat", "/s3"])
    remote = "s3://%s/team/images/" % bucket
    env = {"AWS_CA_BUNDLE": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    r = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "check", check_mode=True),
        push(remote, [name + ":1"], "real"),
        push(remote, [name + ":1"], "again"),
        tags("listed", remote=remote),
    ], module_defaults=defaults(s3_endpoint), env=env)
    assert r["check"]["changed"] and r["real"]["changed"] and not r["again"]["changed"], r["_output"][-3000:]
    assert r["check"]["layers_transferred"] == r["real"]["layers_transferred"]
    assert r["listed"]["tags"][name + ":1"]["image_id"] == image_id
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key=SECRET)
            .list_objects_v2(Bucket=bucket)["Contents"]]
    assert "team/images/repositories/%s/_tags/1" % name in keys
    assert all(key.startswith("team/images/") for key in keys)

    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    r2 = run_tasks(tmp_path, [pull(remote, name + ":1", "pull"), pull(remote, name + ":1", "again")],
                   module_defaults=defaults(s3_endpoint), env=env)
    assert r2["pull"]["changed"] and r2["pull"]["image_id"] == image_id and not r2["again"]["changed"]
    output = docker.DockerClient(base_url=docker_host).containers.run(name + ":1", network_mode="none", remove=True)
    assert output == b"via s3\n"
    assert SECRET not in r["_output"] + r2["_output"]
    assert SECRET not in repr(r) + repr(r2)


def test_missing_bucket_and_bad_credentials_are_one_line_errors(tmp_path, docker_host, s3_endpoint, bucket):
    r = run_tasks(tmp_path, [
        tags("nobucket", remote="s3://no-such-bucket-%s/x/" % uuid.uuid4().hex[:6]),
        tags("noendpoint", remote="s3://%s/x/" % bucket, endpoint_url="http://127.0.0.1:9"),
    ], module_defaults=defaults(s3_endpoint), env={"AWS_CA_BUNDLE": ""})
    assert r["nobucket"]["failed"] and "does not exist" in r["nobucket"]["msg"], r["nobucket"]["msg"]
    assert r["noendpoint"]["failed"] and "\n" not in r["noendpoint"]["msg"]
    assert "127.0.0.1:9" in r["noendpoint"]["msg"] or "reach" in r["noendpoint"]["msg"], r["noendpoint"]["msg"]
