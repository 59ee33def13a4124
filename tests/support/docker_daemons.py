"""Extra Docker daemons (the system's dockerd 20.10) that share nothing with the system's daemon or
with each other: socket, data root, exec root, pidfile, config file and containerd namespace of
their own (each starts its own containerd under its exec root when no system containerd runs).

network="own":  in a network namespace of its own (`unshare --net`) holding nothing but loopback
                (after `ip link set lo up`): Docker Hub and every other host are unreachable by
                construction. Servers it must reach run in that namespace (nsenter).
network="host": in the host's network namespace, so that it reaches servers on the host's loopback
                (Docker allows plain HTTP to 127.0.0.0/8 registries, and the accelerator serves
                only loopback without TLS): several daemons can then pull from one server. Its
                default bridge network is a bridge of its own, made here on a free 10.x.y.z/30
                and deleted by stop(): `--bridge=none` would delete the host daemon's docker0
                (moby's removeDefaultBridgeInterface), which the other tests build with. With
                --iptables=false --ip6tables=false --ip-forward=false it changes no host setting.

Used by tests/integration/test_fleet.py, test_fanout.py and benchmarks/fanout_bench.py, so it needs
no pytest.
"""

import ipaddress
import json
import os
import random
import signal
import subprocess
import time
import uuid

import docker
import docker.errors


def _ip_json(*args):
    out = subprocess.run(["ip", "-j"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    return json.loads(out or "[]")


def _free_subnet():
    """A 10.x.y.z/30 that overlaps no route or address of the host's network namespace."""
    used = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.ip_network("%s/%s" % (addr["local"], addr["prefixlen"]), strict=False))
    rng = random.Random()
    for _attempt in range(1000):
        net = ipaddress.ip_network("10.%d.%d.%d/30" % (rng.randrange(200, 255), rng.randrange(256),
                                                       rng.randrange(0, 256, 4)))
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free 10.x.y.z/30 for a Docker bridge")


def _ip(*args, check=True):
    return subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=check)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(proc, timeout=30):
    """SIGTERM to the process group of `proc` (a session leader), SIGKILL to what is left after `timeout`."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
        time.sleep(0.1)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Dockerd:
    """dockerd under `directory` (keep it short: containerd's sockets live under the exec root and
    a socket path may hold 108 bytes). start() returns at once; wait() until it answers."""

    def __init__(self, name, directory, log_path, network="own", config=None, args=()):
        if network not in ("own", "host"):
            raise ValueError("network must be 'own' or 'host', not %r" % network)
        self.name, self.dir, self.log_path, self.network = name, directory, log_path, network
        self.args = list(args)
        os.makedirs(directory, exist_ok=True)
        self.host = "unix://%s/docker.sock" % directory
        self.config_file = os.path.join(directory, "daemon.json")
        with open(self.config_file, "w") as f:
            json.dump(config or {}, f)
        self.proc = None
        self.bridge = None

    def start(self):
        namespace = "dogestry-%s-%d" % (self.name, os.getpid())
        cmd = ["dockerd", "--config-file", self.config_file, "-H", self.host,
               "--data-root", os.path.join(self.dir, "data"), "--exec-root", os.path.join(self.dir, "exec"),
               "--pidfile", os.path.join(self.dir, "pid"), "--iptables=false", "--ip6tables=false",
               "--containerd-namespace", namespace, "--containerd-plugins-namespace", namespace + "-plugins"]
        if self.network == "own":
            cmd = ["unshare", "--net", "--"] + cmd
        else:
            self.bridge = "dgd" + uuid.uuid4().hex[:10]
            net = _free_subnet()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", "%s/%d" % (net[1], net.prefixlen), "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            cmd += ["--bridge", self.bridge, "--ip-forward=false", "--ip-masq=false"]
        log = open(self.log_path, "ab")
        try:
            # A session of its own: stop() signals the process group (dockerd and its containerd).
            self.proc = subprocess.Popen(cmd + self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def api(self, timeout=120):
        return docker.APIClient(base_url=self.host, version="auto", timeout=timeout)

    def wait(self, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.api(timeout=5).ping()
                return
            except Exception:  # noqa: BLE001 - still starting
                time.sleep(0.2)
        with open(self.log_path, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise RuntimeError("dockerd of %s did not answer at %s within %ds (exit %s; log %s):\n%s"
                           % (self.name, self.host, timeout, self.proc.poll(), self.log_path, tail))

    @property
    def netns(self):
        """The network namespace of dockerd, for nsenter --net=..."""
        return "/proc/%d/ns/net" % self.proc.pid

    def stop(self):
        """Remove its containers (live-restore would keep them running past dockerd), stop it and its
        containerd, delete its bridge. Safe to call twice, and when start() failed halfway."""
        if self.proc and self.proc.poll() is None:
            try:
                api = self.api(timeout=30)
                for container in api.containers(all=True):
                    api.remove_container(container["Id"], force=True)
            except (docker.errors.DockerException, OSError):
                pass
        if self.proc:
            _stop_group(self.proc)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
            self.bridge = None


def container_output(docker_host, image, command=None):
    """What a container of `image` (with `command`) prints on stdout, run to its end without a network.

    The log is read once the container has exited. docker-py's containers.run() follows it while the
    container runs instead, and for a container that exits at once that returned nothing now and then
    on this machine's Docker 20.10 (a flaky b'' where the image's output was due)."""
    client = docker.DockerClient(base_url=docker_host)
    try:
        container = client.containers.create(image, command, network_mode="none")
        try:
            container.start()
            status = container.wait(timeout=300)["StatusCode"]
            if status != 0:
                raise AssertionError("a container of %s exited %d: %s" % (
                    image, status, container.logs(stdout=False, stderr=True)[-2000:].decode(errors="replace")))
            return container.logs(stdout=True, stderr=False)
        finally:
            container.remove(force=True)
    finally:
        client.close()
