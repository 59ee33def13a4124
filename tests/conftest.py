"""Shared test fixtures: the collection on sys.path, real dockerds, a real S3 endpoint (moto_server).

- docker_host:   Debian's docker.io (20.10: `docker save` writes manifest.json + <id>/layer.tar)
- docker26_host: a second, newer daemon (trixie's docker.io 26: `docker save` writes an OCI layout),
                 unpacked by scripts/fetch-docker.sh and run in its own network namespace
- docker28_host: a third (sid's docker.io 28.5 with its own containerd 2.1: the containerd image store,
                 as Docker 29 installs default to), likewise
- any_docker_host: each of the three in turn (parametrized)
- s3_endpoint / s3_env: moto_server on loopback
- build_image:   build small busybox-based images with chosen layers on either daemon

Servers are started only when none answers, and stopped at the end of the session if we started them.

Tiers: a test that asks for a Docker daemon (any fixture in SLOW_FIXTURES) or whose module runs
ansible-playbook (ansible_runner) or molecule is marked `slow` at collection, so new tests are marked
by what they use. `pytest -m "not slow"` (scripts/test.sh --fast) runs the rest: unit tests, moto,
`dogestry` processes; no root, Docker or molecule.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tarfile
import time
import urllib.request
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FETCH_DOCKER = os.path.join(REPO, "scripts", "fetch-docker.sh")
BUSYBOX = "/bin/busybox"
# One symlink tree per checkout, so test runs of two worktrees never point each other's playbooks
# at the wrong collection.
COLLECTIONS = os.path.join(tempfile.gettempdir(), "dogestry-test-collections-%d-%s" % (
    os.getuid(), hashlib.sha256(REPO.encode()).hexdigest()[:8]))
COLLECTION_LINK = os.path.join(COLLECTIONS, "ansible_collections", "dogestry", "dogestry")


def _link_collection():
    """Make `ansible_collections.dogestry.dogestry` importable and findable by ansible-playbook."""
    os.makedirs(os.path.dirname(COLLECTION_LINK), exist_ok=True)
    if os.path.realpath(COLLECTION_LINK) != REPO:
        if os.path.lexists(COLLECTION_LINK):
            os.unlink(COLLECTION_LINK)
        os.symlink(REPO, COLLECTION_LINK)
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)


_link_collection()

# The suite's helpers (dogestry_cli, ansible_runner, docker_daemons, ...), imported by bare module name.
SUPPORT = os.path.join(REPO, "tests", "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

SLOW_FIXTURES = {"docker_host", "docker26_host", "docker28_host", "any_docker_host", "engine", "build_image"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs a Docker daemon, ansible-playbook or molecule "
                                       "(set from the fixtures a test uses; deselect with -m 'not slow')")


def _runs_ansible(module):
    """The test module runs ansible-playbook (tests/support/ansible_runner) or molecule."""
    return any(getattr(value, "__module__", None) == "ansible_runner" for value in vars(module).values()) \
        or "molecule" in module.__name__


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or (module is not None and _runs_ansible(module)):
            item.add_marker(pytest.mark.slow)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - still starting
            pass
        time.sleep(0.2)
    raise RuntimeError("%s did not come up within %ds" % (what, timeout))


def _start(cmd, log_path, env=None):
    log = open(log_path, "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def _stop(proc):
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def docker_host():
    """A real Docker daemon (Debian's docker.io); started here when none answers."""
    import docker
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")

    def ping():
        return docker.APIClient(base_url=host, version="auto", timeout=5).ping()

    proc = None
    try:
        ping()
    except Exception:  # noqa: BLE001
        if not shutil.which("dockerd"):
            pytest.fail("no Docker daemon answers at %s and dockerd is not installed (run tests/setup.sh)" % host)
        proc = _start(["dockerd"], os.path.join(tempfile.gettempdir(), "dogestry-test-dockerd.log"))
        wait_for(ping, 60, "dockerd")
    yield host
    _stop(proc)


def _cache_dir():
    return os.environ.get("DOGESTRY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dogestry")


def _docker_ping(host):
    import docker
    return docker.APIClient(base_url=host, version="auto", timeout=5).ping()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def servers():
    """servers(remote, tmp_path, ...) starts `dogestry serve` (dogestry_cli.Server); all stop at the test's end."""
    from dogestry_cli import Server     # tests/support is on sys.path (above)
    started = []
    yield lambda *a, **kw: started.append(Server(*a, **kw)) or started[-1]
    for server in started:
        server.stop()


@pytest.fixture
def fault_seed(request):
    """The seed of every random choice of a fault or storm test: DOGESTRY_FAULT_SEED, or a new one (printed)."""
    import random
    seed = int(os.environ.get("DOGESTRY_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print("fault seed %d: replay with DOGESTRY_FAULT_SEED=%d pytest '%s'" % (seed, seed, request.node.nodeid))
    return seed


def replay(seed):
    """How a failure message names its seed."""
    return "seed %d (replay: DOGESTRY_FAULT_SEED=%d)" % (seed, seed)


@pytest.fixture
def name():
    return "dogestry-test-%s" % uuid.uuid4().hex[:8]


@pytest.fixture
def remote(tmp_path):
    return str(tmp_path / "remote")


def docker_run_dir(version):
    """Where the extra Docker `version` keeps its socket, pidfile (docker.pid) and logs."""
    return os.path.join(tempfile.gettempdir(), "dogestry-docker%s-%d" % (version, os.getuid()))


class _ExtraDocker:
    """Start/share/stop an extra Docker daemon (26, or 28 with its own containerd) across pytest sessions.

    Under an flock on <run>/lock, each session registers itself in users/<pid>. The daemon is
    started by the first session that needs it (marker file `started-by-tests`), and stopped by the
    last registered session to leave, only if tests started it (a daemon someone started by hand
    is left alone). It runs in its own network namespace (`unshare --net`) with its own socket,
    data-root, exec-root and pidfile, so it never touches the first daemon's docker0 (a second
    daemon with --bridge=none in the same namespace deletes it) or iptables rules; its containers
    have loopback only: build and run with --network none.
    """

    def __init__(self, version):
        self.version = version
        self.run = docker_run_dir(version)
        self.host = os.environ.get("DOGESTRY_DOCKER%s_HOST" % version, "unix://%s/docker.sock" % self.run)
        self.users = os.path.join(self.run, "users")
        self.marker = os.path.join(self.run, "started-by-tests")
        self.pidfile = os.path.join(self.run, "docker.pid")
        self.log_path = os.path.join(self.run, "dockerd.log")
        os.makedirs(self.users, exist_ok=True)

    def _locked(self):
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def lock():
            with open(os.path.join(self.run, "lock"), "w") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        return lock()

    def _ping(self):
        try:
            _docker_ping(self.host)
            return True
        except Exception:  # noqa: BLE001
            return False

    def _command(self, dockerd):
        state = os.path.join(_cache_dir(), "docker%s-state" % self.version)
        cmd = [dockerd, "-H", self.host, "--exec-root", os.path.join(self.run, "exec"), "--pidfile", self.pidfile,
               "--iptables=false", "--ip6tables=false"]
        if self.version == "26":   # beside the system's containerd, in namespaces of its own
            return ["unshare", "--net", "--"] + cmd + ["--data-root", state, "--containerd-namespace", "dogestry26",
                                                       "--containerd-plugins-namespace", "dogestry26-plugins"]
        # 28: its own containerd 2.1 and the containerd image store, both in one network namespace
        sock = os.path.join(self.run, "containerd.sock")
        with open(os.path.join(self.run, "containerd.toml"), "w") as f:
            f.write('version = 3\nroot = "%s"\nstate = "%s"\n[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n'
                    % (os.path.join(state, "containerd"), os.path.join(self.run, "containerd-state"), sock, sock))
        with open(os.path.join(self.run, "daemon.json"), "w") as f:
            json.dump({"features": {"containerd-snapshotter": True}}, f)
        usr = os.path.dirname(os.path.dirname(dockerd))
        script = ('export PATH=%s/bin:%s/sbin:$PATH; rm -f %s; containerd --config %s/containerd.toml '
                  '>%s/containerd.log 2>&1 & for i in $(seq 100); do [ -S %s ] && break; sleep 0.1; done; exec "$@"'
                  % (usr, usr, sock, self.run, self.run, sock))
        return ["unshare", "--net", "--", "sh", "-c", script, "sh"] + cmd + [
            "--data-root", os.path.join(state, "docker"), "--containerd", sock,
            "--config-file", os.path.join(self.run, "daemon.json")]

    def acquire(self):
        with self._locked():
            open(os.path.join(self.users, str(os.getpid())), "w").close()
            if self._ping():
                return
            fetch = subprocess.run(["bash", FETCH_DOCKER, self.version], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, universal_newlines=True,
                                   check=False)
            if fetch.returncode != 0:
                self._leave()
                pytest.fail("Docker %s is needed and could not be fetched (scripts/fetch-docker.sh exit %d):\n%s"
                            % (self.version, fetch.returncode, fetch.stderr[-2000:]), pytrace=False)
            dockerd = fetch.stdout.strip().splitlines()[-1]
            if not shutil.which("unshare"):
                self._leave()
                pytest.fail("Docker %s needs `unshare` (util-linux) to run in its own network namespace"
                            % self.version, pytrace=False)
            sock = self.host[len("unix://"):]
            if os.path.exists(sock):
                os.unlink(sock)  # stale socket of a daemon that died
            proc = _start(self._command(dockerd), self.log_path)  # a session of its own: killpg stops it all
            try:
                wait_for(self._ping, 90, "dockerd %s" % self.version)
            except RuntimeError:
                _stop(proc)
                self._leave()
                with open(self.log_path, "rb") as log:
                    tail = log.read()[-3000:].decode("utf-8", "replace")
                pytest.fail("Docker %s dockerd did not answer at %s within 90s (log %s):\n%s"
                            % (self.version, self.host, self.log_path, tail), pytrace=False)
            with open(self.marker, "w") as f:
                f.write(str(proc.pid))

    def _leave(self):
        try:
            os.unlink(os.path.join(self.users, str(os.getpid())))
        except FileNotFoundError:
            pass

    def release(self):
        with self._locked():
            self._leave()
            others = [int(p) for p in os.listdir(self.users) if p.isdigit() and _pid_alive(int(p))]
            if others or not os.path.exists(self.marker):
                return
            with open(self.marker) as f:
                pid = int(f.read().strip() or 0)
            os.unlink(self.marker)
            if pid and _pid_alive(pid):
                os.killpg(pid, signal.SIGTERM)      # dockerd, and for 28 its containerd
                deadline = time.time() + 30
                while _pid_alive(pid) and time.time() < deadline:
                    try:
                        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
                    except ChildProcessError:
                        pass
                    time.sleep(0.2)
                if _pid_alive(pid):
                    os.killpg(pid, signal.SIGKILL)


def _extra_docker(version):
    daemon = _ExtraDocker(version)
    daemon.acquire()
    yield daemon.host
    daemon.release()


@pytest.fixture(scope="session")
def docker26_host():
    """A Docker >= 25 daemon (Debian trixie's dockerd 26.1.5, classic store, OCI `docker save` layout).

    Started when none answers at $DOGESTRY_DOCKER26_HOST (default unix://$TMPDIR/dogestry-docker26-<uid>/
    docker.sock), stopped at the end of the session if tests started it and no other pytest session
    still uses it. If it cannot be fetched (scripts/fetch-docker.sh 26) or started, its tests FAIL.
    """
    yield from _extra_docker("26")


@pytest.fixture(scope="session")
def docker28_host():
    """Docker 28.5 with its own containerd 2.1 and the containerd image store (Docker 29's default):
    image IDs are manifest digests there, and `docker load` imports into containerd's content store.
    Like docker26_host otherwise ($DOGESTRY_DOCKER28_HOST; scripts/fetch-docker.sh 28)."""
    yield from _extra_docker("28")


@pytest.fixture(params=["20.10", "26", "28-containerd"])
def any_docker_host(request):
    """Each daemon in turn: classic store (20.10, 26) and the containerd store (28)."""
    return request.getfixturevalue({"20.10": "docker_host", "26": "docker26_host",
                                    "28-containerd": "docker28_host"}[request.param])


@pytest.fixture(params=["20.10", "28-containerd"])
def engine(request):
    """(host, APIClient, env, containerd?) for the classic image store and the containerd one, in turn;
    `env` points the modules at the daemon (DOCKER_HOST)."""
    import docker
    host = request.getfixturevalue("docker_host" if request.param == "20.10" else "docker28_host")
    client = docker.APIClient(base_url=host, version="auto")
    yield host, client, {"DOCKER_HOST": host}, request.param == "28-containerd"
    client.close()


def _base_layer_tar(marker=None):
    """A deterministic tar holding /bin/busybox (+ /bin/sh -> busybox): same bytes, same diff_id, every time.

    With `marker` (a str), /etc/dogestry-test-base holds it too: a base layer no other image shares.
    """
    import io
    if not os.path.exists(BUSYBOX):
        pytest.fail("%s is missing: install Debian's busybox-static (scripts/setup.sh)" % BUSYBOX, pytrace=False)
    with open(BUSYBOX, "rb") as f:
        data = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name, type_, mode, payload=None, linkname=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = type_, mode, 946684800, linkname
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
        add("bin", tarfile.DIRTYPE, 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, data)
        add("bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox")
        if marker is not None:
            add("etc", tarfile.DIRTYPE, 0o755)
            add("etc/dogestry-test-base", tarfile.REGTYPE, 0o644, marker.encode())
    return buf.getvalue()


@pytest.fixture
def build_image(tmp_path):
    """Return build(host, name, layers, cmd=None, isolated=False) -> image id ("sha256:...").

    The image is: a base layer holding Debian's static /bin/busybox (and /bin/sh -> busybox),
    imported from a deterministic tar, so every image built on top of it on any daemon has the
    same base diff_id; then one COPY layer per dict in `layers` ({path: bytes or str}, paths
    relative to /; files 0644, mtimes fixed, so equal dicts on equal parents give equal
    diff_ids); then CMD (default: `busybox echo <name>`). Built with network_mode="none" on the
    daemon at `host` (unix:// or tcp://). `docker run --network none IMAGE` works.

    The daemons are shared (other tests, other sessions): any image built here holds the shared
    base layer. A test that needs a layer chain no other image has (e.g. "a cold pull transfers
    every layer") passes isolated=True: the base layer then also holds a unique
    /etc/dogestry-test-base, so its diff_id (and every ChainID above it) is unique.

    At the end of the test the images built here are removed: by name (force), then by id
    (no force: removes an untagged copy a pull left behind, never another tag), then the
    imported base (no force: only if nothing uses it).
    """
    import docker
    import uuid
    shared_base_tar = _base_layer_tar()
    built = []

    def build(host, name, layers, cmd=None, isolated=False):
        api = docker.APIClient(base_url=host, version="auto", timeout=300)
        base_tar = _base_layer_tar(uuid.uuid4().hex) if isolated else shared_base_tar
        base = api.import_image_from_data(base_tar, changes=['CMD ["/bin/busybox", "sh"]'])
        base_id = json_lines_last(base, "status")
        record = {"host": host, "name": name, "id": None, "base": base_id}
        built.append(record)
        ctx = tmp_path / ("ctx-%d" % len(built))
        ctx.mkdir()
        lines = ["FROM %s" % base_id]
        for i, layer in enumerate(layers):
            layer_dir = ctx / ("layer%d" % i)
            layer_dir.mkdir()
            for path, content in sorted(layer.items()):
                target = layer_dir / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
                os.chmod(target, 0o644)
            for dirpath, dirnames, filenames in os.walk(layer_dir):
                for entry in dirnames + filenames:
                    os.utime(os.path.join(dirpath, entry), (946684800, 946684800))
            lines.append("COPY layer%d/ /" % i)
        lines.append("CMD %s" % json.dumps(cmd if cmd is not None else ["/bin/busybox", "echo", name]))
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        errors, log = [], []
        for chunk in api.build(path=str(ctx), tag=name, network_mode="none", rm=True, forcerm=True,
                               decode=True):
            log.append(chunk.get("stream") or chunk.get("status") or "")
            if "error" in chunk:
                errors.append(chunk["error"])
        if errors:
            raise RuntimeError("building %s on %s failed: %s\n%s" % (name, host, errors, "".join(log)))
        record["id"] = api.inspect_image(name)["Id"]
        return record["id"]

    yield build
    import docker.errors
    for record in reversed(built):
        api = docker.APIClient(base_url=record["host"], version="auto", timeout=60)
        for ref, force in ((record["name"], True), (record["id"], False), (record["base"], False)):
            if ref:
                try:
                    api.remove_image(ref, force=force)
                except docker.errors.APIError:
                    pass  # already removed by the test, or still used by another image


def json_lines_last(output, key):
    """The `key` of the last JSON line of a Docker API progress output (import_image returns a str)."""
    value = None
    for line in output.splitlines() if isinstance(output, str) else output:
        line = line.strip()
        if line:
            doc = json.loads(line) if isinstance(line, (str, bytes)) else line
            if "error" in doc:
                raise RuntimeError("docker: %s" % doc["error"])
            value = doc.get(key, value)
    return value


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback: moto's server. Credentials are dummies it accepts."""
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = _start([exe, "-H", "127.0.0.1", "-p", str(port)],
                  os.path.join(tempfile.gettempdir(), "dogestry-test-moto-%d.log" % os.getuid()))
    wait_for(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=2).status == 200, 60, "moto_server")
    yield url
    _stop(proc)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Environment for boto3 talking to moto: dummy keys, a region, no CA bundle override."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env):
    """A new, empty bucket on the moto endpoint; its name."""
    import uuid

    import boto3
    name = "t-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return name
