"""Every option of every module, and the CLI's flags, given wrong types and bad values: each ends with a
clear one-line message naming what is wrong, never a traceback, and changes nothing."""

import os

import pytest

from ansible_runner import run_tasks
from dogestry_cli import dogestry

# (module, options, a word the message must contain). Options not given are valid: `remote` is an
# empty dogestry remote (or an S3 URL for signed_url), and Docker is the test daemon.
MODULE_CASES = [
    ("dogestry_tags", {"remote": ""}, "remote"),
    ("dogestry_tags", {"remote": "ftp://host/x"}, "ftp"),
    ("dogestry_tags", {"remote": "s3://"}, "bucket"),
    ("dogestry_tags", {"remote": "http://[::1/x"}, "url"),
    ("dogestry_tags", {"jobs": 0}, "jobs"),
    ("dogestry_tags", {"jobs": -3}, "jobs"),
    ("dogestry_tags", {"jobs": "many"}, "jobs"),
    ("dogestry_tags", {"jobs": 100000}, "jobs"),
    ("dogestry_tags", {"endpoint_url": "not a url", "remote": "s3://bucket/p/"}, "endpoint"),
    ("dogestry_tags", {"endpoint_url": "ftp://x", "remote": "s3://bucket/p/"}, "endpoint"),
    ("dogestry_tags", {"validate_certs": "maybe"}, "validate_certs"),
    ("dogestry_tags", {"state": "gone"}, "state"),
    ("dogestry_tags", {"state": "present", "name": "app", "tag": "1"}, "image"),
    ("dogestry_tags", {"state": "present", "name": "app", "tag": "*", "image": "app:1"}, "tag"),
    ("dogestry_tags", {"state": "present", "name": "Bad Name", "tag": "1", "image": "app:1"}, "name"),
    ("dogestry_tags", {"state": "absent", "name": "app"}, "tag"),
    ("dogestry_push", {"images": []}, "images"),
    ("dogestry_push", {"images": ["Bad Name!"]}, "bad name!"),
    ("dogestry_push", {"images": ["a:b:c:d"]}, "a:b:c:d"),
    ("dogestry_push", {"images": ["app:1"], "compression": "zip"}, "compression"),
    ("dogestry_push", {"images": {"a": 1}}, "images"),
    ("dogestry_push", {"images": ["app:1"], "timeout": 0}, "timeout"),
    ("dogestry_push", {"images": ["app:1"], "timeout": "soon"}, "timeout"),
    ("dogestry_push", {"images": ["app:1"], "docker_host": "gopher://x"}, "docker_host"),
    ("dogestry_push", {"images": ["app:1"], "docker_host": "unix://"}, "docker_host"),
    ("dogestry_pull", {"image": "app:1", "docker_host": "/var/run/docker.sock"}, "docker_host"),
    ("dogestry_pull", {"image": ""}, "image"),
    ("dogestry_pull", {"image": "UPPER:1"}, "upper"),
    ("dogestry_pull", {"image": "app:1", "signed_url": "ftp://b.s3.example.com/t?X-Amz-Signature=x"}, "ftp"),
    ("dogestry_pull", {"remote": None, "image": "app:1"}, "remote"),
    ("dogestry_pull", {"remote": None, "signed_url": "not a url"}, "url"),
    ("dogestry_prune", {"grace_period": "soon"}, "grace_period"),
    ("dogestry_prune", {"grace_period": "-5h"}, "grace_period"),
    ("dogestry_prune", {"grace_period": "0"}, "grace"),
    ("dogestry_signed_url", {"image": "app:1", "expires_in": 0}, "expires_in"),
    ("dogestry_signed_url", {"image": "app:1", "expires_in": -1}, "expires_in"),
    ("dogestry_signed_url", {"image": "app:1", "expires_in": 10 ** 9}, "expires_in"),
    ("dogestry_signed_url", {"image": "", "remote": "s3://bucket/p/"}, "image"),
    ("dogestry_signed_url", {"image": "app:1", "remote": "/srv/dogestry"}, "s3"),
    ("dogestry_verify", {"sample": -1}, "sample"),
    ("dogestry_verify", {"sample": "few"}, "sample"),
    ("dogestry_verify", {"repair": "perhaps"}, "repair"),
]


def test_every_module_refuses_bad_values_in_one_line(tmp_path, docker_host):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    remote = str(tmp_path / "remote")
    Repository(LocalRemote(remote)).check(create=True)
    before = sorted(os.listdir(remote))
    tasks = []
    for i, (module, options, _word) in enumerate(MODULE_CASES):
        args = {"remote": "s3://bucket/p/" if module == "dogestry_signed_url" else remote}
        if module in ("dogestry_push", "dogestry_pull"):
            args["docker_host"] = docker_host
        args.update(options)
        args = {k: v for k, v in args.items() if v is not None}
        tasks.append({"name": "case %d" % i, "dogestry.dogestry.%s" % module: args, "register": "case_%d" % i})
    results = run_tasks(tmp_path, tasks, env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                                              "AWS_DEFAULT_REGION": "us-east-1"})
    bad = []
    for i, (module, options, word) in enumerate(MODULE_CASES):
        result = results["case_%d" % i]
        msg = str(result.get("msg", ""))
        ok = (result.get("failed") and msg and "\n" not in msg.strip() and "Traceback" not in msg
              and "MODULE FAILURE" not in msg and "module_stderr" not in result and word.lower() in msg.lower())
        if not ok:
            bad.append((module, options, msg[:300] or result))
    assert not bad, "\n".join(map(repr, bad))
    assert sorted(os.listdir(remote)) == before, "a refused task changed the remote"


CLI_CASES = [
    (["push", "/r"], 2),
    (["push", "/r", "app:1", "--jobs", "0"], 2),
    (["pull", "/r", "app:1", "--jobs", "65"], 2),
    (["push", "/r", "app:1", "--compression", "zip"], 2),
    (["push", "/r", "app:1", "--timeout", "-1"], 2),
    (["push", "/r", "Bad Name!", "--docker-host", "unix:///nonexistent.sock"], 1),
    (["push", "ftp://x/r", "app:1"], 1),
    (["pull", "/r"], 2),
    (["pull", "s3://", "app:1"], 1),
    (["pull", "/r", "app:1", "--docker-host", "gopher://x"], 1),
    (["tags", "http://[::1/x"], 1),
    (["prune", "/r", "--grace-period", "soon"], 2),
    (["prune", "/r", "--grace-period", "0"], 1),
    (["verify", "/r", "--sample", "few"], 2),
    (["verify", "/r", "--sample", "-2"], 2),
    (["serve", "/r", "--listen", "nowhere"], 1),
    (["serve", "/r", "--listen", "127.0.0.1:99999"], 1),
    (["serve", "/r", "--cache-size", "lots"], 2),
    (["serve", "/r", "--threads", "0"], 2),
    (["serve", "/r", "--tls-cert", "/nonexistent.pem"], 1),
    (["serve", "/r", "--htpasswd", "/nonexistent"], 1),
    (["serve", "/r", "--max-blob-size", "huge"], 2),
    (["frobnicate"], 2),
]


@pytest.mark.parametrize("argv,status", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_refuses_bad_flags_in_one_line(tmp_path, argv, status):
    argv = [str(tmp_path / "r") if a == "/r" else a for a in argv]
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    Repository(LocalRemote(str(tmp_path / "r"))).check(create=True)
    proc = dogestry(*argv, check=False, timeout=60)
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dogestry: error: ") or last.startswith("dogestry %s: error: " % argv[0]), proc.stderr
    if status == 1:
        assert proc.stderr.count("\n") == 1, proc.stderr
