"""docs/s3.md, checked: its IAM policies (read out of the file) are given to users of a moto S3 server that enforces
IAM, and each job works with exactly its policy and fails with one line without any one of its actions; its
lifecycle rule is accepted as written; boto3's checksum settings reach dogestry's client from the environment.

moto enforces IAM once `POST /moto-api/reset-auth` says after how many requests (what INITIAL_NO_AUTH_ACTION_COUNT
sets at start-up): here 0, after the bucket and an admin user are made. It checks actions and resources, not
conditions (docs/s3.md uses none).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import boto3
import botocore.exceptions
import docker
import pytest

from conftest import REPO, _start, _stop, free_port, wait_for
from dogestry_cli import DOGESTRY, cli_env
from test_modules_local import BASE

BUCKET, PREFIX = "ops-goodies", "docker-repo/"     # as docs/s3.md writes them
DOC = os.path.join(REPO, "docs", "s3.md")


def doc_blocks():
    """{name: the JSON block after `<!-- policy: name -->` (or `<!-- lifecycle -->`)} of docs/s3.md."""
    with open(DOC) as f:
        text = f.read()
    blocks = re.findall(r"<!-- (policy: \w+|lifecycle) -->\n```json\n(.*?)```", text, re.S)
    return {name.replace("policy: ", ""): body for name, body in blocks}


def policy(name, bucket, prefix, without=None):
    """The policy of docs/s3.md for `bucket` and `prefix`, less the action `without`.

    moto authorizes DeleteObjects (many keys in one request) as s3:DeleteObject on the bucket's ARN, where AWS
    authorizes it on each key's: where the policy lets a principal delete the remote's objects, the same action
    on the bucket's ARN is added for moto."""
    body = doc_blocks()[name].replace("arn:aws:s3:::%s/%s" % (BUCKET, PREFIX), "arn:aws:s3:::%s/%s" % (bucket, prefix))
    doc = json.loads(body.replace("arn:aws:s3:::%s\"" % BUCKET, "arn:aws:s3:::%s\"" % bucket))
    if any("s3:DeleteObject" in s["Action"] and s["Resource"] == "arn:aws:s3:::%s/%s*" % (bucket, prefix)
           for s in doc["Statement"]):
        doc["Statement"].append({"Sid": "MotoDeleteObjects", "Effect": "Allow", "Action": "s3:DeleteObject",
                                 "Resource": "arn:aws:s3:::%s" % bucket})
    for statement in doc["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [a for a in actions if a != without]
    doc["Statement"] = [s for s in doc["Statement"] if s["Action"]]
    return doc


def actions(name):
    return sorted({a for s in policy(name, BUCKET, PREFIX)["Statement"]
                   for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])})


class IamS3:
    """A moto server of our own (IAM enforcement is server-wide) with a bucket and an admin user."""

    def __init__(self, log_dir):
        self.url = "http://127.0.0.1:%d" % free_port()
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")    # the moto this venv pins (PATH may have another)
        self.proc = _start([exe, "-H", "127.0.0.1", "-p", self.url.rsplit(":", 1)[1]], os.path.join(log_dir, "moto.log"))
        try:
            wait_for(lambda: urllib.request.urlopen(self.url + "/moto-api/", timeout=2).status == 200, 60, "moto_server")
            self.bucket = "policies-" + uuid.uuid4().hex[:12]
            self.anyone = dict(endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing")
            boto3.client("s3", **self.anyone).create_bucket(Bucket=self.bucket)
            self.admin = self.user({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        except BaseException:
            _stop(self.proc)        # a fixture whose setup fails is never torn down
            raise

    def _enforce(self, count):
        """IAM checks from now on (count 0), or never ("inf"); moto signs keys made while it checks with another
        account's secret, so users are made with the checks off."""
        reset = urllib.request.Request(self.url + "/moto-api/reset-auth", data=count.encode(), method="POST",
                                       headers={"Content-Type": "text/plain"})
        assert json.loads(urllib.request.urlopen(reset, timeout=10).read())["status"] == "ok"

    @staticmethod
    def _user(iam, name, document):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="dogestry", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def user(self, document):
        self._enforce("inf")
        try:
            return self._user(boto3.client("iam", **self.anyone), "u-" + uuid.uuid4().hex[:10], document)
        finally:
            self._enforce("0")

    def client_args(self, keys):
        return dict(endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=keys[0], aws_secret_access_key=keys[1])

    def env(self, keys):
        return {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1], "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.url, "AWS_CA_BUNDLE": ""}

    def remote(self, prefix):
        return "s3://%s/%s" % (self.bucket, prefix)

    def repo(self, keys, prefix):
        from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
        from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
        return Repository(remote_from_url(self.remote(prefix), access_key=keys[0], secret_key=keys[1],
                                          endpoint_url=self.url, region="us-east-1"))


@pytest.fixture(scope="module")
def iam_s3(monkeypatch_module):
    monkeypatch_module.delenv("AWS_CA_BUNDLE", raising=False)
    log_dir = tempfile.mkdtemp(prefix="dogestry-iam-")
    store = IamS3(log_dir)
    yield store
    _stop(store.proc)
    shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def dogestry(*args, env=None):
    base = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return subprocess.run([DOGESTRY] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(cli_env(), **dict(base, **(env or {}))), timeout=300,
                          check=False)


def refused(proc, what):
    """A job the policy does not allow: exit 1, one line on stderr, saying access was denied."""
    assert proc.returncode == 1, (what, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "access denied" in proc.stderr, (what, proc.stderr)


def test_the_docs_hold_the_three_policies_and_the_lifecycle_rule():
    assert sorted(doc_blocks()) == ["lifecycle", "maintenance", "pull", "push"]
    assert actions("pull") == ["s3:GetObject", "s3:ListBucket"]
    assert actions("push") == ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    assert actions("maintenance") == ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]


def test_moto_authorizes_s3_requests_by_iam_action_as_aws_does(iam_s3):
    """What the policy tests stand on: HEAD of an object needs s3:GetObject and a listing s3:ListBucket, as AWS
    documents (moto 5.2.6 checked s3:HeadObject and s3:ListObjectsV2, actions no policy can grant; when this fails,
    the moto in tests/requirements.txt is the cause, not docs/s3.md)."""
    admin = boto3.client("s3", **iam_s3.client_args(iam_s3.admin))
    admin.put_object(Bucket=iam_s3.bucket, Key="canary/object", Body=b"canary")
    reader = boto3.client("s3", **iam_s3.client_args(iam_s3.user({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::" + iam_s3.bucket},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::%s/canary/*" % iam_s3.bucket}]})))
    assert reader.head_object(Bucket=iam_s3.bucket, Key="canary/object")["ContentLength"] == 6
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=iam_s3.bucket, Prefix="canary/")["Contents"]] == [
        "canary/object"]
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        reader.head_object(Bucket=iam_s3.bucket, Key="canary/none")
    assert missing.value.response["Error"]["Code"] == "404"      # with s3:ListBucket, AWS says 404, not 403
    stranger = boto3.client("s3", **iam_s3.client_args(iam_s3.user({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::%s/canary/*" % iam_s3.bucket}]})))
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        stranger.head_object(Bucket=iam_s3.bucket, Key="canary/object")
    assert denied.value.response["Error"]["Code"] == "403"


def test_the_push_policy_pushes_tags_and_signs_and_fails_without_each_action(iam_s3, docker_host, build_image, name):
    image_id = build_image(docker_host, name + ":1", [BASE, {"/push.txt": b"pushed under a policy\n"}], isolated=True)
    keys = iam_s3.user(policy("push", iam_s3.bucket, "push/"))
    pushed = dogestry("push", iam_s3.remote("push/"), name + ":1", "--json", env=iam_s3.env(keys))
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["image_id"] == image_id
    # moving a tag and minting a signed URL, with the same policy (the engine the modules run)
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.tags import execute_tag, plan_tag
    from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import mint_pull_ticket
    repo = iam_s3.repo(keys, "push/")
    execute_tag(repo, plan_tag(repo, parse_image_ref(name + ":prod"), name + ":1"))
    url, _expires = mint_pull_ticket(repo, parse_image_ref(name + ":prod"), 600)
    # removing a tag deletes it: not in this policy (docs/s3.md says what to add)
    from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import RemoteAuthError
    with pytest.raises(RemoteAuthError, match="access denied deleting"):
        execute_tag(repo, plan_tag(repo, parse_image_ref(name + ":prod"), None))
    remover = policy("push", iam_s3.bucket, "push/")
    remover["Statement"].append({"Effect": "Allow", "Action": "s3:DeleteObject",
                                 "Resource": "arn:aws:s3:::%s/push/repositories/*" % iam_s3.bucket})
    tagger = iam_s3.repo(iam_s3.user(remover), "push/")
    execute_tag(tagger, plan_tag(tagger, parse_image_ref(name + ":gone"), name + ":1"))
    execute_tag(tagger, plan_tag(tagger, parse_image_ref(name + ":gone"), None))     # what docs/s3.md says to add
    # the signed URL pulls with no credentials at all (moto answers a presigned URL with a 500 while it enforces
    # IAM, so enforcement is off for this one pull: minting it above ran under the push policy)
    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    iam_s3._enforce("inf")
    try:
        pulled = dogestry("pull", url, name + ":prod", "--json", "--docker-host", docker_host)
    finally:
        iam_s3._enforce("0")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["image_id"] == image_id
    for action in actions("push"):
        if action == "s3:AbortMultipartUpload":
            continue    # used only when an upload fails (docs/s3.md): no push fails without it
        prefix = "push-without-%s/" % action.split(":")[1].lower()
        proc = dogestry("push", iam_s3.remote(prefix), name + ":prod",
                        env=iam_s3.env(iam_s3.user(policy("push", iam_s3.bucket, prefix, without=action))))
        refused(proc, action)


def test_the_pull_policy_pulls_lists_and_verifies_and_fails_without_each_action(iam_s3, docker_host, build_image, name):
    image_id = build_image(docker_host, name + ":1", [BASE, {"/pull.txt": b"pulled under a policy\n"}], isolated=True)
    assert dogestry("push", iam_s3.remote("pull/"), name + ":1", env=iam_s3.env(iam_s3.admin)).returncode == 0
    api = docker.APIClient(base_url=docker_host)
    full = iam_s3.env(iam_s3.user(policy("pull", iam_s3.bucket, "pull/")))
    jobs = {
        "pull by tag": ["pull", iam_s3.remote("pull/"), name + ":1", "--docker-host", docker_host],
        "pull by image-ID prefix": ["pull", iam_s3.remote("pull/"), image_id[7:19], "--docker-host", docker_host],
        "list tags": ["tags", iam_s3.remote("pull/"), name + ":*"],
        "verify": ["verify", iam_s3.remote("pull/")],
    }
    for job, args in jobs.items():
        api.remove_image(name + ":1", force=True) if job.startswith("pull") and api.images(name + ":1") else None
        proc = dogestry(*args, env=full)
        assert proc.returncode == 0, (job, proc.stderr)
    assert api.inspect_image(image_id)["Id"] == image_id
    needs = {"s3:GetObject": "pull by tag", "s3:ListBucket": "pull by image-ID prefix"}
    assert sorted(needs) == actions("pull")
    for action, job in needs.items():
        refused(dogestry(*jobs[job], env=iam_s3.env(iam_s3.user(policy("pull", iam_s3.bucket, "pull/", without=action)))),
                action)
    refused(dogestry(*jobs["list tags"], env=iam_s3.env(iam_s3.user(policy("pull", iam_s3.bucket, "pull/",
                                                                           without="s3:ListBucket")))), "tags")


def test_the_maintenance_policy_prunes_and_repairs_and_fails_without_each_action(iam_s3, docker_host, build_image,
                                                                                 name):
    build_image(docker_host, name + ":1", [BASE, {"/prune.txt": b"pruned under a policy\n"}], isolated=True)
    admin = boto3.client("s3", **iam_s3.client_args(iam_s3.admin))

    def damaged_remote(prefix):
        """A remote with an expired ticket (garbage prune deletes at once) and a layer blob cut short."""
        assert dogestry("push", iam_s3.remote(prefix), name + ":1", "--compression", "none",
                        env=iam_s3.env(iam_s3.admin)).returncode == 0
        admin.put_object(Bucket=iam_s3.bucket, Key="%stickets/%010d-%s.json" % (prefix, int(time.time()) - 86400,
                                                                                uuid.uuid4().hex), Body=b"{}")
        blobs = [o["Key"] for o in admin.list_objects_v2(Bucket=iam_s3.bucket, Prefix=prefix + "blobs/")["Contents"]
                 if o["Size"] > 100000]
        admin.put_object(Bucket=iam_s3.bucket, Key=blobs[0], Body=b"cut short")
        return blobs[0]

    damaged = damaged_remote("maint/")
    full = iam_s3.env(iam_s3.user(policy("maintenance", iam_s3.bucket, "maint/")))
    repaired = dogestry("verify", iam_s3.remote("maint/"), "--repair", "--json", env=full)
    assert json.loads(repaired.stdout)["moved"] == {damaged[len("maint/"):]: json.loads(repaired.stdout)["moved"][
        damaged[len("maint/"):]]}, repaired.stdout
    pruned = dogestry("prune", iam_s3.remote("maint/"), "--grace-period", "1m", "--json", env=full)
    assert pruned.returncode == 0, pruned.stderr
    assert len(json.loads(pruned.stdout)["deleted"]["tickets"]) == 1, pruned.stdout
    for action in actions("maintenance"):
        prefix = "maint-without-%s/" % action.split(":")[1].lower()
        damaged_remote(prefix)
        env = iam_s3.env(iam_s3.user(policy("maintenance", iam_s3.bucket, prefix, without=action)))
        refused(dogestry("prune", iam_s3.remote(prefix), "--grace-period", "1m", env=env), "prune " + action)
        repair = dogestry("verify", iam_s3.remote(prefix), "--repair", env=env)
        assert repair.returncode == 1 and repair.stderr.count("\n") <= 1, (action, repair.stdout, repair.stderr)
        assert "access denied" in repair.stderr + repair.stdout, (action, repair.stdout, repair.stderr)


def test_the_lifecycle_rule_is_taken_as_written(iam_s3):
    rule = json.loads(doc_blocks()["lifecycle"].replace("docker-repo/", "lifecycle/"))
    admin = boto3.client("s3", **iam_s3.client_args(iam_s3.admin))
    admin.put_bucket_lifecycle_configuration(Bucket=iam_s3.bucket, LifecycleConfiguration=rule)
    stored = admin.get_bucket_lifecycle_configuration(Bucket=iam_s3.bucket)["Rules"]
    assert [(r["ID"], r["Status"], r["Filter"], r["AbortIncompleteMultipartUpload"]) for r in stored] == [
        ("dogestry-abort-incomplete-uploads", "Enabled", {"Prefix": "lifecycle/"}, {"DaysAfterInitiation": 2})]


@pytest.mark.parametrize("setting, checksummed", [(None, True), ("when_required", False)])
def test_boto3_checksum_settings_reach_dogestrys_client_from_the_environment(s3_env, s3_bucket, monkeypatch,
                                                                             setting, checksummed):
    """boto3 >= 1.36 sends a CRC32 with every upload unless AWS_REQUEST_CHECKSUM_CALCULATION=when_required (what
    stores that reject it need, docs/s3.md); dogestry's client configuration leaves that to boto3."""
    if setting:
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", setting)
        monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", setting)
    else:
        monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
    remote = remote_from_url("s3://%s/checksums/" % s3_bucket, endpoint_url=s3_env)
    sent = []
    remote.client.meta.events.register("before-send.s3.PutObject", lambda request, **_kw: sent.append(dict(request.headers)))
    remote.put("tags-and-such", b"x" * 1000)
    headers = {name.lower() for name in sent[0]}
    assert bool({h for h in headers if h.startswith("x-amz-checksum-") or h == "x-amz-trailer"}) == checksummed, headers
    assert remote.client.meta.config.request_checksum_calculation == (setting or "when_supported")
    assert remote.get("tags-and-such") == b"x" * 1000
