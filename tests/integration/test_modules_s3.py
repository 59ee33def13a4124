"""The modules against a real S3 endpoint (moto_server on loopback): connection options set once
through module_defaults on the action group, secrets kept out of results and logs."""

import uuid

import boto3
import docker
import pytest

from ansible_runner import run_tasks
from docker_daemons import container_output
from test_modules_local import BASE, pull, push, tags

SECRET = "s3cr3t-%s" % uuid.uuid4().hex


@pytest.fixture
def bucket(s3_bucket):
    return s3_bucket


def defaults(s3_endpoint):
    return {"group/dogestry.dogestry.dogestry": {
        "endpoint_url": s3_endpoint, "region": "us-east-1", "access_key": "testing", "secret_key": SECRET}}


def test_push_pull_tags_through_s3_with_module_defaults(tmp_path, engine, s3_endpoint, bucket, build_image):
    docker_host, api, docker_env, _containerd = engine
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker_host, name + ":1", [BASE, {"/s3": b"via s3\n"}], cmd=["/bin/busybox", "cat", "/s3"])
    remote = "s3://%s/team/images/" % bucket
    env = dict(docker_env, AWS_CA_BUNDLE="", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    r = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "check", check_mode=True),
        push(remote, [name + ":1"], "real"),
        push(remote, [name + ":1"], "again"),
        tags("listed", remote=remote),
    ], module_defaults=defaults(s3_endpoint), env=env)
    assert r["check"]["changed"] and r["real"]["changed"] and not r["again"]["changed"], r["_output"][-3000:]
    assert r["check"]["layers_transferred"] == r["real"]["layers_transferred"]
    image_id = r["real"]["images"][0]["image_id"]
    assert r["listed"]["tags"][name + ":1"]["image_id"] == image_id
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key=SECRET)
            .list_objects_v2(Bucket=bucket)["Contents"]]
    assert "team/images/repositories/%s/_tags/1" % name in keys
    assert all(key.startswith("team/images/") for key in keys)

    api.remove_image(name + ":1", force=True)
    r2 = run_tasks(tmp_path, [pull(remote, name + ":1", "pull"), pull(remote, name + ":1", "again")],
                   module_defaults=defaults(s3_endpoint), env=env)
    assert r2["pull"]["changed"] and r2["pull"]["image_id"] == image_id and not r2["again"]["changed"]
    output = container_output(docker_host, name + ":1")
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


def test_signed_url_pulls_with_no_credentials_then_expires(tmp_path, docker_host, s3_endpoint, bucket, build_image):
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, name + ":1", [BASE, {"/signed": b"signed\n"}])
    remote = "s3://%s/signed/" % bucket
    minted = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "push"),
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1"}, "register": "check",
         "check_mode": True},
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1"}, "register": "url"},
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1", "expires_in": 1},
         "register": "short"},
    ], module_defaults=defaults(s3_endpoint), env={"AWS_CA_BUNDLE": ""})
    assert minted["check"]["changed"] and "url" not in minted["check"], minted["_output"][-2000:]
    assert minted["url"]["url"].startswith(s3_endpoint) and "Signature" in minted["url"]["url"]
    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    no_credentials = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent",
                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CA_BUNDLE": ""}
    pulled = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_pull": {"signed_url": minted["url"]["url"]}, "register": "pull"},
        {"dogestry.dogestry.dogestry_pull": {"signed_url": minted["short"]["url"]}, "register": "expired"},
        {"dogestry.dogestry.dogestry_pull": {"signed_url": minted["url"]["url"].replace("Signature=", "Signature=0")},
         "register": "tampered"},
    ], env=no_credentials)
    assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == image_id, pulled["_output"][-3000:]
    assert pulled["pull"]["image"] == name + ":1"
    assert pulled["expired"]["failed"] and "expired" in pulled["expired"]["msg"], pulled["expired"]["msg"]
    assert minted["url"]["url"] not in pulled["_output"]       # no_log keeps the bearer URL out of logs


@pytest.mark.parametrize("token", ["FwoGZXIvYXdzEBYaDH7example/token+with=", "FwoGZXIvYXdzEBYaDH7exampleTokenAlnum0"])
def test_signed_url_minted_with_a_session_token_survives_no_log(tmp_path, docker_host, s3_endpoint, bucket,
                                                                build_image, token):
    """Ansible masks no_log values inside results: the URL must still carry a usable token, not ********."""
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, name + ":1", [BASE, {"/token": token}])
    remote = "s3://%s/token/" % bucket
    creds = dict(defaults(s3_endpoint)["group/dogestry.dogestry.dogestry"], session_token=token)
    minted = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "push"),
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1"}, "register": "url"},
    ], module_defaults={"group/dogestry.dogestry.dogestry": creds}, env={"AWS_CA_BUNDLE": ""})
    url = minted["url"]["url"]
    assert "********" not in url and "X-Amz-Security-Token=" in url, url
    from urllib.parse import parse_qs, urlsplit
    assert parse_qs(urlsplit(url).query)["X-Amz-Security-Token"] == [token]
    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    pulled = run_tasks(tmp_path, [{"dogestry.dogestry.dogestry_pull": {"signed_url": url}, "register": "pull"}],
                       env={"AWS_CA_BUNDLE": ""})
    assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == image_id, pulled["pull"]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key=SECRET).delete_object(Bucket=bucket, Key=urlsplit(url).path.split("/", 2)[2])
    pulled = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_pull": {"signed_url": url}, "register": "gone"},
    ], env={"AWS_CA_BUNDLE": ""})
    assert pulled["gone"]["failed"] and "signed pull URL not found (HTTP 404" in pulled["gone"]["msg"], pulled["gone"]
    assert "********" not in pulled["gone"]["msg"]


@pytest.mark.parametrize("token", ["http", "X-Amz"])
def test_a_session_token_found_elsewhere_in_the_url_fails_instead_of_returning_a_broken_url(
        tmp_path, docker_host, s3_endpoint, bucket, build_image, token):
    """Ansible replaces a no_log value wherever it occurs in a result: a token that also occurs in the URL's
    scheme or parameter names would come back as ********://… (or worse, percent-encoded there by us)."""
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker_host, name + ":1", [BASE, {"/short": token}])
    remote = "s3://%s/short/" % bucket
    creds = dict(defaults(s3_endpoint)["group/dogestry.dogestry.dogestry"], session_token=token)
    minted = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "push"),
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": name + ":1"}, "register": "url"},
    ], module_defaults={"group/dogestry.dogestry.dogestry": creds}, env={"AWS_CA_BUNDLE": ""})
    result = minted["url"]
    assert result.get("failed") and "url" not in result, result
    assert result["msg"].startswith("cannot return a signed URL of %s: the value of session_token occurs in it outside "
                                    "its own parameter" % (name + ":1")), result["msg"]
    assert "\n" not in result["msg"]
