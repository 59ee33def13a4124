"""A registry-free fleet: three Docker daemons that share nothing (own data root, exec root and
containerd namespace), each in a network namespace with nothing but loopback, so Docker Hub is
unreachable by construction, and each with a dogestry accelerator in that namespace, made its
registry mirror by the registry_block role (then a reload, as the role's handler does). The
collection's playbooks run against them as an operator runs them: publish, deploy, roll out, a
deploy that must stop before any host switches, a bad release put back, a rollback; and plain
`docker pull` / `docker run` served by each host's accelerator."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from ansible_runner import run_playbook
from conftest import REPO, wait_for
from docker_daemons import Dockerd
from dogestry_cli import Server, dogestry
from dogestry_cli import docker as docker_cli

PLAYBOOKS = os.path.join(REPO, "playbooks")
MIRROR_PORT = 22375
# PID 1 of the app: reports healthy while /release exists, stops at once on SIGTERM.
APP_CMD = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]


class FleetHost:
    """dockerd (Debian's 20.10) in a network namespace of its own, mirroring through an accelerator there."""

    def __init__(self, index, root, remote, log_dir):
        self.name = "fleet-%d" % index
        self.dir = os.path.join(root, str(index))
        os.makedirs(self.dir)
        self.host = "unix://%s/docker.sock" % self.dir
        self.remote, self.log_dir = remote, log_dir
        self.docker = self.proc = self.accelerator = None

    def start_docker(self):
        with open(os.path.join(self.dir, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")
        # A setting of the host's own (in its daemon.json), which the registry_block role must keep.
        self.docker = Dockerd(self.name, self.dir, os.path.join(self.log_dir, "%s-dockerd.log" % self.name),
                              network="own", config={"log-level": "info"})
        self.docker.start()
        self.proc = self.docker.proc

    def start_accelerator(self):
        self.docker.wait()
        netns = "--net=%s" % self.docker.netns
        subprocess.run(["nsenter", netns, "ip", "link", "set", "lo", "up"], check=True)
        routes = subprocess.run(["nsenter", netns, "ip", "route", "show", "default"], stdout=subprocess.PIPE,
                                universal_newlines=True, check=True).stdout
        assert routes.strip() == "", "%s must have no route anywhere: %s" % (self.name, routes)
        self.accelerator = Server(self.remote, self.log_dir, netns_pid=self.proc.pid, port=MIRROR_PORT,
                                  args=["--cache-dir", os.path.join(self.dir, "cache")])

    def api(self):
        return self.docker.api()

    def role_vars(self):
        """registry_block's paths pointed at this host's files (its reload is ours: a SIGHUP)."""
        return {"ansible_connection": "local", "registry_block_daemon_json": os.path.join(self.dir, "daemon.json"),
                "registry_block_hosts_file": os.path.join(self.dir, "hosts"),
                "registry_block_certs_dir": os.path.join(self.dir, "certs.d"),
                "registry_block_mirror": "http://127.0.0.1:%d" % MIRROR_PORT, "registry_block_reload_docker": False}

    def reload_docker(self):
        os.kill(self.proc.pid, signal.SIGHUP)
        wait_for(lambda: self.api().info()["RegistryConfig"]["Mirrors"] == ["http://127.0.0.1:%d/" % MIRROR_PORT],
                 30, "dockerd of %s to take its mirror" % self.name)

    def stop(self):
        if self.accelerator:
            self.accelerator.stop()
        if self.docker:
            self.docker.stop()


def make_registry_free(hosts, work):
    """The registry_block role, run by ansible-playbook on each host's files, then Docker reloaded."""
    inventory = os.path.join(work, "role-inventory.yml")
    with open(inventory, "w") as f:
        yaml.safe_dump({"all": {"vars": {"ansible_python_interpreter": sys.executable}},
                        "dogestry_fleet": {"hosts": {host.name: host.role_vars() for host in hosts}}}, f)
    playbook = os.path.join(work, "registry-free.yml")
    with open(playbook, "w") as f:
        yaml.safe_dump([{"hosts": "dogestry_fleet", "gather_facts": False,
                         "roles": ["dogestry.dogestry.registry_block"]}], f)
    proc, output = run_playbook(work, playbook, inventory=inventory)
    assert proc.returncode == 0, output[-3000:]
    for host in hosts:
        host.reload_docker()
        with open(os.path.join(host.dir, "daemon.json")) as f:
            config = json.load(f)
        assert config == {"log-level": "info", "live-restore": True,
                          "registry-mirrors": ["http://127.0.0.1:%d" % MIRROR_PORT]}, config
        with open(os.path.join(host.dir, "hosts")) as f:
            assert "0.0.0.0 registry-1.docker.io" in f.read()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, docker_host):
    """Three hosts and the directory remote they share (as they would share a bucket)."""
    for tool in ("unshare", "nsenter", "ip", "dockerd"):
        if not shutil.which(tool):
            pytest.fail("the fleet test needs %s (scripts/setup.sh installs it)" % tool, pytrace=False)
    base = tmp_path_factory.mktemp("fleet")
    remote = str(base / "remote")
    # Short paths: dockerd's and containerd's sockets live under the exec roots (108-byte limit).
    root = "/tmp/dogestry-fleet-%d" % os.getpid()
    hosts = [FleetHost(i, root, remote, base) for i in (1, 2, 3)]
    try:
        for host in hosts:
            host.start_docker()
        for host in hosts:
            host.start_accelerator()
        make_registry_free(hosts, base)
        yield hosts, remote, base
    finally:
        for host in hosts:
            host.stop()
        shutil.rmtree(root, ignore_errors=True)


def write_inventory(path, hosts, build_host, app, remote, unreachable=None):
    """The inventory an operator writes (see examples/inventory), pointed at the test's daemons.
    `unreachable` names a host whose remote cannot be reached (a closed port)."""
    fleet = {}
    for host in hosts:
        fleet[host.name] = {"ansible_connection": "local", "dogestry_docker_host": host.host}
        if host.name == unreachable:
            fleet[host.name]["dogestry_remote"] = "http://127.0.0.1:9/remote/"
    inventory = {"all": {"vars": {"ansible_python_interpreter": sys.executable}},
                 "dogestry_build": {"hosts": {"build-host": {"ansible_connection": "local",
                                                             "dogestry_docker_host": build_host}}},
                 "dogestry_fleet": {"hosts": fleet}}
    os.makedirs(os.path.join(path, "group_vars"), exist_ok=True)
    with open(os.path.join(path, "hosts.yml"), "w") as f:
        yaml.safe_dump(inventory, f)
    group_vars = {
        "app_name": app, "dogestry_remote": remote, "app_health_timeout": 30,
        "app_container": {"name": app, "command": APP_CMD, "network_mode": "none", "stop_timeout": 2,
                          "healthcheck": {"test": ["CMD", "/bin/busybox", "test", "-f", "/release"],
                                          "interval": "1s", "timeout": "2s", "retries": 2}},
    }
    with open(os.path.join(path, "group_vars", "all.yml"), "w") as f:
        yaml.safe_dump(group_vars, f)
    return path


def running(hosts, app):
    """{host: (release label, previous label, container id)} of the app container on each host."""
    state = {}
    for host in hosts:
        info = host.api().inspect_container(app)
        assert info["State"]["Running"], (host.name, info["State"])
        labels = info["Config"]["Labels"]
        state[host.name] = (labels.get("dogestry.release"), labels.get("dogestry.previous"), info["Id"])
    return state


def releases(state):
    return {name: (release, previous) for name, (release, previous, _id) in state.items()}


def test_fleet_publish_deploy_rollout_refused_deploy_bad_release_and_rollback(
        fleet, docker_host, build_image, tmp_path):
    hosts, remote, _base = fleet
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    for tag in ("1", "2", "3"):
        build_image(docker_host, "%s:%s" % (app, tag), [{"/release": tag}], cmd=APP_CMD)
    build_image(docker_host, app + ":bad", [{"/not-release": "bad"}], cmd=APP_CMD)    # never healthy
    inventory = write_inventory(str(tmp_path / "inventory"), hosts, docker_host, app, remote)

    def play(name, expect_ok=True, inv=inventory, **extra):
        proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, name), extra, inventory=inv)
        assert (proc.returncode == 0) == expect_ok, output[-5000:]
        return output

    for tag in ("1", "3", "bad"):
        play("publish.yml", tag=tag)
    play("publish.yml", tag="2", publish_move_tags=["production"])
    tags = json.loads(dogestry("tags", remote, app + ":*", "--json").stdout)["tags"]
    assert sorted(tags) == sorted("%s:%s" % (app, t) for t in ("1", "2", "3", "bad", "production"))
    assert tags[app + ":production"]["image_id"] == tags[app + ":2"]["image_id"]

    # First deploy: every host runs 1; phase two starts only after every host has pulled.
    output = play("deploy.yml", tag="1")
    assert releases(running(hosts, app)) == {h.name: ("1", "") for h in hosts}
    assert output.index("PLAY [Phase two") > output.rindex("TASK [Docker holds exactly the image the remote names]")

    # Roll out 2: every host switches, remembering 1; 1 stays in Docker for a rollback.
    play("deploy.yml", tag="2")
    on_2 = running(hosts, app)
    assert releases(on_2) == {h.name: ("2", "1") for h in hosts}
    for host in hosts:
        assert host.api().inspect_image(app + ":1")["Id"]

    # A deploy where one host cannot reach the remote: refused before any host switches.
    unreachable = write_inventory(str(tmp_path / "inventory-unreachable"), hosts, docker_host, app, remote,
                                  unreachable="fleet-3")
    output = play("deploy.yml", expect_ok=False, inv=unreachable, tag="3")
    assert "fleet-3" in output and "PLAY [Phase two" not in output
    assert running(hosts, app) == on_2, "no host may switch when one cannot pull"

    # A release that never gets healthy: the first host is put back on 2, healthy again before the deploy
    # stops; the others are not touched.
    output = play("deploy.yml", expect_ok=False, tag="bad")
    assert "failed on fleet-1" in output and "it is back on 2 (healthy)" in output, output[-3000:]
    assert hosts[0].api().inspect_container(app)["State"]["Health"]["Status"] == "healthy"
    after_bad = running(hosts, app)
    assert releases(after_bad) == {h.name: ("2", "1") for h in hosts}
    assert after_bad["fleet-2"] == on_2["fleet-2"] and after_bad["fleet-3"] == on_2["fleet-3"]

    # Rollback: one command, back to the release before 2.
    play("rollback.yml")
    assert releases(running(hosts, app)) == {h.name: ("1", "2") for h in hosts}
    # Deploying what runs changes nothing.
    before = running(hosts, app)
    play("deploy.yml", tag="1")
    assert running(hosts, app) == before


def test_plain_docker_pull_and_run_through_each_hosts_accelerator(fleet, docker_host, build_image, tmp_path):
    hosts, remote, _base = fleet
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, app + ":4", [{"/release": "4"}], cmd=["/bin/busybox", "cat", "/release"])
    inventory = write_inventory(str(tmp_path / "inventory"), hosts, docker_host, app, remote)
    proc, output = run_playbook(tmp_path, os.path.join(PLAYBOOKS, "publish.yml"), {"tag": "4"}, inventory=inventory)
    assert proc.returncode == 0, output[-3000:]
    for host in hosts:
        # A Docker Hub name: Docker asks its mirror, the accelerator, for library/<app>.
        start = len(host.accelerator.output())
        docker_cli(host.host, "pull", app + ":4")
        assert host.api().inspect_image(app + ":4")["Id"] == image_id
        assert docker_cli(host.host, "run", "--rm", "--network", "none", app + ":4").stdout == "4"
        log = host.accelerator.output()[start:]
        assert '"HEAD /v2/library/%s/manifests/4" 200' % app in log, log[-2000:]
        assert log.count('"GET /v2/library/%s/blobs/sha256:' % app) >= 2, log[-2000:]
        # What the remote does not hold fails at once: Docker Hub is not there to fall back on.
        started = time.monotonic()
        missing = docker_cli(host.host, "pull", app + ":404", check=False)
        assert missing.returncode != 0 and time.monotonic() - started < 60, missing.stderr
        docker_cli(host.host, "rmi", app + ":4")
