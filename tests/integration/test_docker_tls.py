"""The modules and the CLI reach a Docker daemon that requires TLS and client certificates (dockerd --tlsverify),
with community.docker's option names and environment variables, and the docker CLI's flags.

The daemon is Debian's dockerd with a data root, exec root, pidfile and containerd of its own, in a network namespace
of its own (`unshare --net`, loopback only, `--bridge=none`), listening on tcp://127.0.0.1:2376 there with
certificates this test makes: a CA, the daemon's certificate (for 127.0.0.1 and dockerd.test) and a client's; and a
second CA no one trusts, with a client certificate of its own. Modules run in that namespace (the play's
ansible_python_interpreter enters it), so nothing else on the machine can reach the port. Images are built through
the daemon's unix socket, which is not TLS.
"""

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile

import docker
import pytest

from ansible_runner import run_tasks
from conftest import wait_for
from docker_daemons import _stop_group
from dogestry_cli import DOGESTRY, cli_env
from test_modules_local import BASE, pull, push

PORT = 2376


def _certificates(directory):
    """ca.pem, server.pem/server-key.pem, cert.pem/key.pem (the client's), and other-ca.pem with other-cert.pem/
    other-key.pem (a client of a CA the daemon does not trust). EC P-256 keys: quick to make."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject, issuer_name, issuer_key, key, ca=False, usage=None, names=()):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def make_ca(name):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return key, subject, issue(name, subject, key, key, ca=True)

    ca_key, ca_name, ca_cert = make_ca("dogestry test CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("dockerd", ca_name, ca_key, server_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("dockerd.test")])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue("dogestry", ca_name, ca_key, client_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_key, other_name, other_cert = make_ca("a CA no one trusts")
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = issue("stranger", other_name, other_key, stranger_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {"ca.pem": (ca_cert, None), "server.pem": (server, None), "server-key.pem": (None, server_key),
             "cert.pem": (client, None), "key.pem": (None, client_key), "other-ca.pem": (other_cert, None),
             "other-cert.pem": (stranger, None), "other-key.pem": (None, stranger_key)}
    for name, (cert, key) in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) if cert is not None else
                    key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return {name: os.path.join(directory, name) for name in files}


class TlsDaemon:
    """dockerd --tlsverify on tcp://127.0.0.1:2376 of a network namespace of its own, and unix://<dir>/docker.sock."""

    def __init__(self, directory, certs):
        self.dir, self.certs = directory, certs
        self.socket = "unix://%s/docker.sock" % directory
        self.tcp = "tcp://127.0.0.1:%d" % PORT
        self.log_path = os.path.join(directory, "dockerd.log")
        namespace = "dogestry-tls-%d" % os.getpid()
        with open(os.path.join(directory, "daemon.json"), "w") as f:
            json.dump({}, f)
        dockerd = ["dockerd", "--config-file", os.path.join(directory, "daemon.json"), "-H", self.socket, "-H", self.tcp,
                   "--tlsverify", "--tlscacert", certs["ca.pem"], "--tlscert", certs["server.pem"],
                   "--tlskey", certs["server-key.pem"], "--data-root", os.path.join(directory, "data"),
                   "--exec-root", os.path.join(directory, "exec"), "--pidfile", os.path.join(directory, "pid"),
                   "--bridge=none", "--iptables=false", "--ip6tables=false", "--containerd-namespace", namespace,
                   "--containerd-plugins-namespace", namespace + "-plugins"]
        # loopback must be up before dockerd binds 127.0.0.1 in the new namespace
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] + dockerd
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            wait_for(lambda: self.proc.poll() is None and docker.APIClient(base_url=self.socket, timeout=5).ping(), 90,
                     "dockerd --tlsverify")
        except RuntimeError:
            self.stop()
            with open(self.log_path, "rb") as f:
                raise RuntimeError("dockerd --tlsverify did not start (log %s):\n%s"
                                   % (self.log_path, f.read()[-3000:].decode("utf-8", "replace")))
        # A python that runs in the daemon's network namespace: the play's interpreter for the modules.
        self.python = os.path.join(directory, "python-in-netns")
        with open(self.python, "w") as f:
            f.write('#!/bin/sh\nexec nsenter --net=/proc/%d/ns/net -- %s "$@"\n' % (self.proc.pid, sys.executable))
        os.chmod(self.python, 0o755)

    def in_netns(self, cmd):
        return ["nsenter", "--net=/proc/%d/ns/net" % self.proc.pid, "--"] + cmd

    def stop(self):
        _stop_group(self.proc)


@pytest.fixture(scope="module")
def tls_daemon():
    for tool in ("dockerd", "unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            pytest.fail("%s is needed to run a Docker daemon with TLS (scripts/setup.sh installs it)" % tool)
    directory = tempfile.mkdtemp(prefix="dtls-")    # short: containerd's sockets live under the exec root
    daemon = TlsDaemon(directory, _certificates(directory))
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


def in_netns(daemon):
    """Extra vars that run the play's modules in the daemon's network namespace."""
    return {"ansible_python_interpreter": daemon.python}


def test_modules_push_and_pull_through_a_daemon_that_requires_tls(tmp_path, tls_daemon, build_image, name, remote):
    certs = tls_daemon.certs
    image_id = build_image(tls_daemon.socket, name + ":1", [BASE, {"/tls.txt": b"over TLS\n"}])
    tls = dict(docker_host=tls_daemon.tcp, validate_certs=True, ca_path=certs["ca.pem"],
               client_cert=certs["cert.pem"], client_key=certs["key.pem"])
    pushed = run_tasks(tmp_path, [push(remote, [name + ":1"], "push", **tls)], extra_vars=in_netns(tls_daemon))
    assert not pushed["push"].get("failed"), pushed["push"].get("msg")
    assert pushed["push"]["changed"] and pushed["push"]["images"][0]["image_id"] == image_id, pushed["push"]
    docker.APIClient(base_url=tls_daemon.socket).remove_image(name + ":1", force=True)

    # community.docker's aliases, then nothing but its environment variables (DOCKER_CERT_PATH: ca, cert, key.pem)
    aliases = dict(docker_url=tls_daemon.tcp, tls_verify=True, tls_ca_cert=certs["ca.pem"],
                   tls_client_cert=certs["cert.pem"], tls_client_key=certs["key.pem"], tls_hostname="dockerd.test")
    pulled = run_tasks(tmp_path, [pull(remote, name + ":1", "pull", **aliases)], extra_vars=in_netns(tls_daemon))
    assert not pulled["pull"].get("failed"), pulled["pull"].get("msg")
    assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == image_id, pulled["pull"]
    env = {"DOCKER_HOST": tls_daemon.tcp, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": os.path.dirname(certs["ca.pem"]),
           "DOCKER_API_VERSION": "1.41", "DOCKER_TIMEOUT": "120"}
    again = run_tasks(tmp_path, [pull(remote, name + ":1", "again")], extra_vars=in_netns(tls_daemon), env=env)
    assert not again["again"].get("failed"), again["again"].get("msg")
    assert not again["again"]["changed"] and again["again"]["image_id"] == image_id, again["again"]
    assert docker.APIClient(base_url=tls_daemon.socket).inspect_image(name + ":1")["Id"] == image_id


def test_a_wrong_ca_a_missing_client_cert_or_a_wrong_name_fails_with_one_line(tmp_path, tls_daemon, build_image, name,
                                                                              remote):
    certs = tls_daemon.certs
    build_image(tls_daemon.socket, name + ":1", [BASE, {"/tls.txt": b"refused\n"}])
    good = dict(docker_host=tls_daemon.tcp, validate_certs=True, ca_path=certs["ca.pem"],
                client_cert=certs["cert.pem"], client_key=certs["key.pem"])
    cases = {
        "wrong_ca": dict(good, ca_path=certs["other-ca.pem"]),
        "no_client_cert": dict(good, client_cert=None, client_key=None),
        "untrusted_client": dict(good, client_cert=certs["other-cert.pem"], client_key=certs["other-key.pem"]),
        "wrong_name": dict(good, tls_hostname="elsewhere.test"),
        "no_tls": dict(docker_host=tls_daemon.tcp),
    }
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], case, **{k: v for k, v in params.items() if v is not None})
                             for case, params in cases.items()], extra_vars=in_netns(tls_daemon))
    expected = {
        "wrong_ca": "certificate verify failed: unable to get local issuer certificate (is the CA",
        "no_client_cert": "the daemon wants a client certificate signed by a CA it trusts",
        "untrusted_client": "the daemon wants a client certificate signed by a CA it trusts",
        "wrong_name": "certificate verify failed: hostname 'elsewhere.test' doesn't match",
        "no_tls": "Client sent an HTTP request to an HTTPS server",
    }
    for case, text in expected.items():
        result = r[case]
        assert result.get("failed") and "\n" not in result["msg"], (case, result.get("msg"))
        assert result["msg"].startswith("cannot reach the Docker daemon at %s: " % tls_daemon.tcp), (case, result["msg"])
        assert text in result["msg"], (case, result["msg"])
    assert not os.path.exists(os.path.join(remote, "repositories")), "a refused push wrote a tag"


def test_the_cli_reaches_a_daemon_that_requires_tls_as_the_docker_cli_does(tmp_path, tls_daemon, build_image, name,
                                                                           remote):
    certs = tls_daemon.certs
    image_id = build_image(tls_daemon.socket, name + ":1", [BASE, {"/tls.txt": b"the CLI over TLS\n"}])

    def dogestry(*args, env=None):
        return subprocess.run(tls_daemon.in_netns([DOGESTRY] + list(args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=cli_env(env), timeout=300, check=False)

    flags = ["--docker-host", tls_daemon.tcp, "--tlsverify", "--tlscacert", certs["ca.pem"], "--tlscert", certs["cert.pem"],
             "--tlskey", certs["key.pem"]]
    pushed = dogestry("push", remote, name + ":1", "--json", *flags)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["image_id"] == image_id
    docker.APIClient(base_url=tls_daemon.socket).remove_image(name + ":1", force=True)
    # the docker CLI's environment: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
    env = {"DOCKER_HOST": tls_daemon.tcp, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": os.path.dirname(certs["ca.pem"])}
    pulled = dogestry("pull", remote, name + ":1", "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["image_id"] == image_id
    refused = dogestry("pull", remote, name + ":1", "--tlscacert", certs["other-ca.pem"], env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "certificate verify failed" in refused.stderr, refused.stderr
