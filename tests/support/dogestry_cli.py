"""The `dogestry` command and `dogestry serve` as the tests run them, and the real clients they meet.

The CLI runs as .venv/bin/dogestry (the console script pyproject.toml installs), with this
checkout's engine first on PYTHONPATH (the venv may be shared by several checkouts).
"""

import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, docker_run_dir, free_port

VENV_BIN = os.path.dirname(sys.executable)
DOGESTRY = os.path.join(REPO, ".venv", "bin", "dogestry")
SHIM = os.path.join(tempfile.gettempdir(), "dogestry-cli-shim-%s" % hashlib.sha256(REPO.encode()).hexdigest()[:8])
MiB = 1 << 20


def cli_env(extra=None):
    """This checkout's engine as package `dogestry`, whichever checkout the shared venv installed."""
    os.makedirs(SHIM, exist_ok=True)
    link = os.path.join(SHIM, "dogestry")
    if os.path.realpath(link) != os.path.join(REPO, "plugins", "module_utils"):
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join(REPO, "plugins", "module_utils"), link)
    env = dict(os.environ, PYTHONPATH=SHIM)
    env.update(extra or {})
    return env


def dogestry(*args, env=None, check=True, timeout=300):
    proc = subprocess.run([DOGESTRY] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, env=cli_env(env), timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError("dogestry %s: exit %d\n%s%s" % (" ".join(map(str, args)), proc.returncode,
                                                             proc.stdout, proc.stderr))
    return proc


def netns_of_docker(version):
    """The pid of an extra dockerd, whose network namespace an accelerator must share to be its 127.0.0.1."""
    with open(os.path.join(docker_run_dir(version), "docker.pid")) as f:
        pid = int(f.read().strip())
    subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % pid, "ip", "link", "set", "lo", "up"], check=True)
    return pid


class Server:
    """`dogestry serve REMOTE` in a subprocess (optionally inside another network namespace)."""

    def __init__(self, remote, tmp_path, args=(), env=None, netns_pid=None, port=None):
        self.port = port or free_port()
        self.log_path = str(tmp_path / ("serve-%d.log" % self.port))
        self.cmd = [DOGESTRY, "serve", remote, "--listen", "127.0.0.1:%d" % self.port] + list(args)
        if netns_pid:
            self.cmd = ["nsenter", "--net=/proc/%d/ns/net" % netns_pid, "--"] + self.cmd
        self.env = cli_env(env)
        self.proc = None
        self.start()

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        self.log = open(self.log_path, "ab")
        self.log_start = self.log.tell()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=self.env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if "dogestry: serving" in self.output()[self.log_start:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError("dogestry serve exited %d:\n%s" % (self.proc.returncode, self.output()))
            time.sleep(0.1)
        raise AssertionError("dogestry serve did not start:\n%s" % self.output())

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("latin-1")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("dogestry serve ignored signal %d" % sig)
        return self.proc.returncode if self.proc else None

    def request(self, method, path, headers=None, raw=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


def docker(host, *args, check=True):
    proc = subprocess.run(["docker", "-H", host] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("docker %s: exit %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def skopeo(*args, check=True):
    exe = shutil.which("skopeo")
    if not exe:
        pytest.fail("skopeo is not installed (scripts/setup.sh installs it)", pytrace=False)
    proc = subprocess.run([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("skopeo %s: exit %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc
