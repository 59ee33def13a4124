"""Signed releases with real parts: dogestry signs and the real cosign verifies through the accelerator, cosign
signs through the accelerator and dogestry (and the accelerator's policy) accept it; plain `docker pull`
and `dogestry pull` get signed images only; the modules through real ansible-playbook runs.

cosign comes from Debian (scripts/fetch-signers.sh). It tries to reach the public TUF repository first, so it
runs inside Docker 28's network namespace, which has nothing but loopback, beside the accelerator."""

import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_runner import run_tasks
from conftest import REPO
from docker_daemons import container_output
from dogestry_cli import docker, dogestry, netns_of_docker

FETCH_SIGNERS = os.path.join(REPO, "scripts", "fetch-signers.sh")


def write_key_pair(directory, stem):
    """(private PEM path, public PEM path) of a new ECDSA P-256 key, as `openssl genpkey` would make it."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / (stem + ".pem"), directory / (stem + ".pub")
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)


@pytest.fixture(scope="session")
def cosign():
    fetched = subprocess.run(["bash", FETCH_SIGNERS, "cosign"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, universal_newlines=True, check=False)
    if fetched.returncode != 0:
        pytest.fail("cosign could not be fetched (scripts/fetch-signers.sh exit %d):\n%s"
                    % (fetched.returncode, fetched.stderr[-2000:]), pytrace=False)
    return fetched.stdout.strip().splitlines()[-1]


class Cosign:
    """cosign in a network namespace with loopback only (nothing leaves the machine), with its own HOME."""

    def __init__(self, binary, netns_pid, home):
        self.binary, self.netns_pid, self.home = binary, netns_pid, str(home)
        os.makedirs(self.home, exist_ok=True)

    def __call__(self, *args, check=True):
        env = dict(os.environ, HOME=self.home, COSIGN_PASSWORD="")
        proc = subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % self.netns_pid, "--", self.binary] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              universal_newlines=True, timeout=300, env=env, cwd=self.home, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("cosign %s: exit %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
        return proc


def _tag_digest(remote, name, tag):
    with open(os.path.join(remote, "repositories", name, "_tags", tag)) as f:
        return json.load(f)["digest"]


def _has_image(host, ref):
    return docker(host, "image", "inspect", ref, check=False).returncode == 0


def test_dogestry_and_cosign_verify_each_other_and_docker_gets_signed_images_only(
        tmp_path, docker28_host, build_image, name, remote, servers, cosign):
    netns = netns_of_docker("28")
    sign_cosign = Cosign(cosign, netns, tmp_path / "cosign")
    release_key, release_pub = write_key_pair(tmp_path, "release")
    sign_cosign("generate-key-pair")
    sign_cosign("signing-config", "create", "--no-default-fulcio", "--no-default-rekor", "--no-default-oidc",
                "--no-default-tsa", "--out", "sc.json")
    cosign_pub = os.path.join(sign_cosign.home, "cosign.pub")

    # 1. dogestry pushes and signs; the real cosign verifies that signature through the accelerator
    build_image(docker28_host, name + ":1", [{"/release.txt": "one\n"}], cmd=["/bin/busybox", "cat", "/release.txt"])
    dogestry("push", remote, name + ":1", "--docker-host", docker28_host)
    signed = json.loads(dogestry("sign", remote, name + ":1", "--key", release_key, "--json").stdout)
    assert signed["changed"] and signed["signature"]
    # two accelerators over the remote: the build host's takes pushes (and cosign's signatures, which it can only
    # make of a manifest it may read); a fleet host's is read-only and serves signed images only
    build = servers(remote, tmp_path, netns_pid=netns)
    fleet = servers(remote, tmp_path, ["--read-only", "--require-signature", release_pub, "--require-signature",
                                       cosign_pub], netns_pid=netns)
    at, build_at = "%s/%s" % (fleet.host, name), "%s/%s" % (build.host, name)
    verified = sign_cosign("verify", "--key", release_pub, "--insecure-ignore-tlog", "--allow-insecure-registry",
                           "%s@%s" % (at, signed["digest"]))
    assert json.loads(verified.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == signed["digest"]
    assert sign_cosign("verify", "--key", cosign_pub, "--insecure-ignore-tlog", "--allow-insecure-registry",
                       "%s@%s" % (at, signed["digest"]), check=False).returncode != 0

    # plain docker pull through the accelerator gets the signed image, under the digest that was signed
    docker(docker28_host, "rmi", name + ":1")
    docker(docker28_host, "pull", at + ":1")
    assert docker(docker28_host, "run", "--rm", "--network", "none", at + ":1").stdout == "one\n"
    assert signed["digest"] in docker(docker28_host, "image", "inspect", "--format", "{{json .RepoDigests}}", at + ":1").stdout

    # 2. an image pushed by docker push through the accelerator, unsigned: refused by docker pull and dogestry pull
    build_image(docker28_host, build_at + ":2", [{"/release.txt": "two\n"}], cmd=["/bin/busybox", "cat", "/release.txt"])
    docker(docker28_host, "push", build_at + ":2")
    docker(docker28_host, "rmi", build_at + ":2")
    refused = docker(docker28_host, "pull", at + ":2", check=False)
    # Docker 28 shows only the status of its HEAD request; the accelerator's log says why
    assert refused.returncode != 0 and ": 403" in refused.stderr, refused.stderr
    assert "refused: %s:2 (%s" % (name, _tag_digest(remote, name, "2")[:19]) in fleet.output()
    pulled = dogestry("pull", remote, name + ":2", "--trusted-key", cosign_pub, "--docker-host", docker28_host,
                      check=False)
    assert pulled.returncode == 1 and pulled.stderr.count("\n") == 1 and "is not signed" in pulled.stderr, pulled.stderr
    assert not _has_image(docker28_host, name + ":2") and not _has_image(docker28_host, at + ":2")

    # 3. cosign signs it through the build host's accelerator: now the fleet's serves it (and the signature, which
    # cosign verifies there) and dogestry pull loads it
    pushed = _tag_digest(remote, name, "2")
    sign_cosign("sign", "--yes", "--key", "cosign.key", "--signing-config", "sc.json", "--allow-insecure-registry",
                "%s@%s" % (build_at, pushed))
    sign_cosign("verify", "--key", cosign_pub, "--insecure-ignore-tlog", "--allow-insecure-registry",
                "%s@%s" % (at, pushed))
    docker(docker28_host, "pull", at + ":2")
    assert docker(docker28_host, "run", "--rm", "--network", "none", at + ":2").stdout == "two\n"
    loaded = json.loads(dogestry("pull", remote, name + ":2", "--trusted-key", release_pub, "--trusted-key", cosign_pub,
                                 "--docker-host", docker28_host, "--json").stdout)
    assert loaded["signature"]["digest"] == pushed and loaded["signature"]["key"] == cosign_pub
    assert docker(docker28_host, "run", "--rm", "--network", "none", name + ":2").stdout == "two\n"
    docker(docker28_host, "rmi", at + ":1", at + ":2", name + ":2", build_at + ":2", check=False)


def test_modules_sign_and_pull_only_what_a_trusted_key_signed(tmp_path, docker_host, build_image, name, remote):
    release_key, release_pub = write_key_pair(tmp_path, "release")
    stranger_key, _stranger_pub = write_key_pair(tmp_path, "stranger")
    with open(release_key) as f:
        vaulted = f.read()
    for tag in ("1", "2"):
        build_image(docker_host, "%s:%s" % (name, tag), [{"/release.txt": tag}])
    sign = {"dogestry.dogestry.dogestry_sign": {"remote": remote, "image": name + ":1", "private_key": "{{ release_key }}"}}
    results = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_push": {"remote": remote, "images": [name + ":1", name + ":2"]}, "register": "pushed"},
        dict(sign, register="sign_check", check_mode=True),
        dict(sign, register="sign_real"),
        dict(sign, register="sign_again"),
        {"dogestry.dogestry.dogestry_sign": {"remote": remote, "image": name + ":2", "private_key_path": stranger_key},
         "register": "sign_stranger"},
        {"ansible.builtin.command": "docker -H %s rmi %s:1 %s:2" % (docker_host, name, name), "register": "removed"},
        {"dogestry.dogestry.dogestry_pull": {"remote": remote, "image": name + ":2", "trusted_keys": [release_pub]},
         "register": "pull_stranger"},
        {"dogestry.dogestry.dogestry_pull": {"remote": remote, "image": name + ":1",
                                             "trusted_keys": ["{{ lookup('file', '%s') }}" % _stranger_pub, release_pub]},
         "register": "pull_signed", "check_mode": True},
        {"dogestry.dogestry.dogestry_pull": {"remote": remote, "image": name + ":1", "trusted_keys": [release_pub]},
         "register": "pull_real"},
    ], extra_vars={"release_key": vaulted}, env={"DOCKER_HOST": docker_host})
    assert not results["pushed"].get("failed"), results["pushed"]
    check, real, again = results["sign_check"], results["sign_real"], results["sign_again"]
    assert check["changed"] and check["signature"] is None and check["msg"].startswith("would sign: ")
    assert real["changed"] and real["signature"] and real["digest"] == check["digest"] and real["key_id"] == check["key_id"]
    assert not again["changed"] and again["signature"] == real["signature"], again
    assert "BEGIN PRIVATE KEY" not in results["_output"] and vaulted.splitlines()[1] not in results["_output"]
    assert results["sign_stranger"]["changed"]
    refused = results["pull_stranger"]
    assert refused["failed"] and "is by a key that is not trusted" in refused["msg"] and "\n" not in refused["msg"]
    assert not _has_image(docker_host, name + ":2")
    assert results["pull_signed"]["changed"] and results["pull_signed"]["signature"]["key"] == release_pub
    pulled = results["pull_real"]
    assert pulled["changed"] and pulled["signature"] == dict(results["pull_signed"]["signature"])
    assert pulled["signature"]["digest"] == real["digest"]
    assert container_output(docker_host, name + ":1", ["/bin/busybox", "cat", "/release.txt"]) == b"1"
