"""The README's "registry-free fleet, step by step", run as an operator runs it against hosts as they
come: the collection built and installed from its tarball on a fresh controller directory; a build
host and three fleet hosts reached over SSH (ssh_hosts.py: an sshd of its own on 127.0.0.N, files of
its own), whose Python is found by Ansible's interpreter discovery and has none of the libraries the
modules need; each fleet host with a dockerd of its own in a network namespace holding nothing but
loopback, so Docker Hub is unreachable by construction.

fleet.yml gives every host the dogestry environment and blocks Docker Hub; then publish, deploy, roll
out, a deploy that must stop before any host switches, a bad release put back, a rollback, plain
`docker pull` / `docker run` served by each host's accelerator, and an upgrade of the collection that
re-running fleet.yml carries to the hosts. These hosts have no systemd: the inventory sets
accelerator_serve=false for them (the unit is molecule's to test), and the test runs the command the
role installed on each host as its accelerator, as the unit would, and reloads dockerd (SIGHUP) where
registry_block's handler would `systemctl reload docker`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from conftest import REPO, wait_for
from dogestry_cli import dogestry
from dogestry_cli import docker as docker_cli
from ssh_hosts import HostDockerd, SshHost, client_key

VENV_BIN = os.path.dirname(sys.executable)
# community.docker (and what it needs), as `ansible-galaxy collection install` would fetch it from Galaxy.
DEPENDENCIES = os.path.join(os.path.dirname(VENV_BIN), "collections")
MIRROR_PORT = 22375
# PID 1 of the app: reports healthy while /release exists, stops at once on SIGTERM.
APP_CMD = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]
# A pin the upgrade test changes, and versions of it the package index has.
UPGRADE_PIN = ("prometheus_client", ["0.25.0", "0.24.1"])


def _run(cmd, env=None, cwd=None, timeout=900):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=env, cwd=cwd, timeout=timeout, check=False)
    return proc.returncode, proc.stdout


class Controller:
    """A fresh controller directory: the collection built from a clean copy of this tree and installed
    from its tarball, the operator's SSH key and known_hosts; playbooks run by their FQCN."""

    def __init__(self, work):
        self.work = work
        self.collections = os.path.join(work, "collections")
        self.key, self.public_key = client_key(work)
        self.known_hosts = os.path.join(work, "known_hosts")
        self.timings = []

    def install(self, name, edits=None):
        """Copy the tree's files (git ls-files: no .venv, no build output), apply `edits`
        ({path: function(text) -> text}), build the tarball, install it; returns its version."""
        source = os.path.join(self.work, "source-" + name)
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               stdout=subprocess.PIPE).stdout.decode().split("\0")
        for rel in filter(None, files):
            if os.path.isfile(os.path.join(REPO, rel)):
                os.makedirs(os.path.dirname(os.path.join(source, rel)), exist_ok=True)
                shutil.copy2(os.path.join(REPO, rel), os.path.join(source, rel))
        for rel, edit in (edits or {}).items():
            with open(os.path.join(source, rel)) as f:
                text = f.read()
            with open(os.path.join(source, rel), "w") as f:
                f.write(edit(text))
        dist = os.path.join(self.work, "dist-" + name)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=DEPENDENCIES, ANSIBLE_NOCOLOR="1")
        rc, out = _run([os.path.join(VENV_BIN, "ansible-galaxy"), "collection", "build", "--output-path", dist],
                       env=env, cwd=source)
        assert rc == 0, out
        tarball = re.search(r"Created collection for dogestry.dogestry at (\S+)", out).group(1)
        # Galaxy is not reachable here: --offline takes community.docker from DEPENDENCIES.
        rc, out = _run([os.path.join(VENV_BIN, "ansible-galaxy"), "collection", "install", "--offline", "--force",
                        "-p", self.collections, tarball], env=env)
        assert rc == 0 and "dogestry.dogestry" in out, out
        with open(os.path.join(self.collections, "ansible_collections", "dogestry", "dogestry", "MANIFEST.json")) as f:
            return json.load(f)["collection_info"]["version"]

    def play(self, playbook, inventory, expect_ok=True, **extra):
        """ansible-playbook -i INVENTORY dogestry.dogestry.PLAYBOOK -e ..., as the README says it."""
        cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, "dogestry.dogestry." + playbook]
        if extra:
            cmd += ["-e", json.dumps(extra)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([self.collections, DEPENDENCIES]), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(self.work, "cp"))
        started = time.monotonic()
        rc, out = _run(cmd, env=env, cwd=self.work)
        self.timings.append(("%s %s" % (playbook, " ".join("%s=%s" % kv for kv in extra.items())),
                             time.monotonic() - started))
        assert (rc == 0) == expect_ok, out[-6000:]
        return out


class Fleet:
    """The build host and three fleet hosts, the remote they share (as they would share a bucket),
    and the controller."""

    def __init__(self, work, root, docker_host):
        self.work, self.remote = work, os.path.join(work, "remote")
        self.controller = Controller(work)
        self.version = self.controller.install("1")
        keys = os.path.join(work, "authorized_keys")
        with open(keys, "w") as f:
            f.write(self.controller.public_key)
        self.build = SshHost("build-host", "127.0.0.10", os.path.join(root, "b"), keys)
        self.build.docker_host = docker_host
        self.hosts = [SshHost("fleet-%d" % i, "127.0.0.%d" % (10 + i), os.path.join(root, str(i)), keys)
                      for i in (1, 2, 3)]
        self.accelerators = {}
        self.registry_free = False
        # The release key (the operator keeps it in a vault) and its public half, which the hosts trust.
        self.signing_key = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        self.trusted_key = subprocess.run(["openssl", "pkey", "-pubout"], input=self.signing_key,
                                          stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout

    def start(self):
        for host in [self.build] + self.hosts:
            host.start()
        for host in self.hosts:
            # A setting of the host's own in its daemon.json, which the registry_block role must keep.
            os.makedirs(host.path("/etc/docker"), exist_ok=True)
            with open(host.path("/etc/docker/daemon.json"), "w") as f:
                json.dump({"log-level": "info"}, f)
            host.dockerd = HostDockerd(host, os.path.join(self.work, "%s-dockerd.log" % host.name))
            host.dockerd.start()
            host.docker_host = host.dockerd.host
        with open(self.controller.known_hosts, "w") as f:
            f.writelines(host.known_hosts_line() for host in [self.build] + self.hosts)
        for host in self.hosts:
            host.dockerd.wait()
            subprocess.run(["nsenter", "--net=%s" % host.dockerd.netns, "ip", "link", "set", "lo", "up"], check=True)
            routes = subprocess.run(["nsenter", "--net=%s" % host.dockerd.netns, "ip", "route", "show", "default"],
                                    stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
            assert routes.strip() == "", "%s must have no route anywhere: %s" % (host.name, routes)

    def inventory(self, path, app, unreachable=None):
        """The inventory an operator writes (see examples/inventory): hosts by address, the app in
        group_vars. `unreachable` names a host whose remote cannot be reached (a closed port)."""
        def host_vars(host):
            found = dict(host.ssh_vars(), dogestry_docker_host=host.docker_host)
            if host.name == unreachable:
                found["dogestry_remote"] = "http://127.0.0.1:9/remote/"
            return found
        os.makedirs(os.path.join(path, "group_vars"), exist_ok=True)
        with open(os.path.join(path, "hosts.yml"), "w") as f:
            yaml.safe_dump({"dogestry_build": {"hosts": {self.build.name: host_vars(self.build)}},
                            "dogestry_fleet": {"hosts": {h.name: host_vars(h) for h in self.hosts}}}, f)
        group_vars = {
            "ansible_user": "root", "ansible_ssh_private_key_file": self.controller.key,
            "ansible_ssh_common_args": "-o UserKnownHostsFile=%s" % self.controller.known_hosts,
            "ansible_pipelining": True,
            "app_name": app, "dogestry_remote": self.remote, "app_health_timeout": 30,
            "app_container": {"name": app, "command": APP_CMD, "network_mode": "none", "stop_timeout": 2,
                              "healthcheck": {"test": ["CMD", "/bin/busybox", "test", "-f", "/release"],
                                              "interval": "1s", "timeout": "2s", "retries": 2}},
            "accelerator_remote": "{{ dogestry_remote }}",
        }
        with open(os.path.join(path, "group_vars", "all.yml"), "w") as f:
            yaml.safe_dump(group_vars, f)
        with open(os.path.join(path, "group_vars", "dogestry_fleet.yml"), "w") as f:
            f.write("# No systemd on these test hosts: the test runs the installed command as the unit would.\n"
                    "accelerator_serve: false\n")
            yaml.safe_dump({"dogestry_trusted_keys": [self.trusted_key]}, f)
        with open(os.path.join(path, "group_vars", "dogestry_build.yml"), "w") as f:
            yaml.safe_dump({"dogestry_signing_key": self.signing_key}, f)
        return path

    def make_registry_free(self):
        """Step 2 of the walkthrough (once): fleet.yml, then each host's accelerator and Docker's reload."""
        if self.registry_free:
            return
        self.controller.play("fleet", self.inventory(os.path.join(self.work, "inventory-fleet"), "unused"))
        for host in self.hosts:
            self.start_accelerator(host)
            host.dockerd.reload()
            wait_for(lambda: host.dockerd.api().info()["RegistryConfig"]["Mirrors"] ==
                     ["http://127.0.0.1:%d/" % MIRROR_PORT], 30, "dockerd of %s to take its mirror" % host.name)
        self.registry_free = True

    def start_accelerator(self, host):
        """The host's installed `dogestry serve`, as its unit runs it, in its Docker's network namespace."""
        old = self.accelerators.get(host.name)
        if old:
            old.terminate()
            old.wait(30)
        log = os.path.join(self.work, "%s-accelerator.log" % host.name)
        start = os.path.getsize(log) if os.path.exists(log) else 0
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                ["nsenter", "--mount=/proc/%d/ns/mnt" % host.holder.pid, "--net=%s" % host.dockerd.netns, "--",
                 "/usr/local/bin/dogestry", "serve", self.remote, "--listen", "127.0.0.1:%d" % MIRROR_PORT,
                 "--read-only", "--cache-dir", "/var/cache/dogestry"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.accelerators[host.name] = proc
        host.accelerator_log = log
        wait_for(lambda: proc.poll() is None and "dogestry: serving" in self.accelerator_output(host)[start:], 30,
                 "the accelerator of %s" % host.name)

    def accelerator_output(self, host):
        with open(host.accelerator_log, "rb") as f:
            return f.read().decode("latin-1")

    def recorded(self, host):
        """What the role recorded on the host: ansible_local.dogestry."""
        with open(host.path("/etc/ansible/facts.d/dogestry.fact")) as f:
            return json.load(f)

    def stop(self):
        for proc in self.accelerators.values():
            proc.terminate()
            proc.wait(30)
        for host in self.hosts:
            if getattr(host, "dockerd", None):
                host.dockerd.stop()
        for host in [self.build] + self.hosts:
            host.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, docker_host):
    for tool in ("unshare", "nsenter", "ip", "dockerd", "ssh", "ssh-keygen", "/usr/sbin/sshd", "git"):
        if not shutil.which(tool):
            pytest.fail("the fleet test needs %s (scripts/setup.sh installs it)" % tool, pytrace=False)
    work = str(tmp_path_factory.mktemp("fleet"))
    # Short paths: dockerd's and containerd's sockets live under the exec roots (108-byte limit).
    root = "/tmp/dogestry-fleet-%d" % os.getpid()
    fleet = Fleet(work, root, docker_host)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
        shutil.rmtree(root, ignore_errors=True)
        print("\nfleet playbook timings: " + "; ".join("%s %.1fs" % t for t in fleet.controller.timings))


def running(hosts, app):
    """{host: (release label, previous label, container id)} of the app container on each host."""
    state = {}
    for host in hosts:
        info = host.dockerd.api().inspect_container(app)
        assert info["State"]["Running"], (host.name, info["State"])
        labels = info["Config"]["Labels"]
        state[host.name] = (labels.get("dogestry.release"), labels.get("dogestry.previous"), info["Id"])
    return state


def releases(state):
    return {name: (release, previous) for name, (release, previous, _id) in state.items()}


def test_walkthrough_on_fresh_hosts_over_ssh(fleet, docker_host, build_image, tmp_path):
    hosts, controller = fleet.hosts, fleet.controller
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    for tag in ("1", "2", "3"):
        build_image(docker_host, "%s:%s" % (app, tag), [{"/release": tag}], cmd=APP_CMD)
    build_image(docker_host, app + ":bad", [{"/not-release": "bad"}], cmd=APP_CMD)    # never healthy
    inventory = fleet.inventory(str(tmp_path / "inventory"), app)

    # Hosts as they come: their Python has none of the modules' libraries, and nothing runs there yet.
    if not fleet.registry_free:
        output = controller.play("publish", inventory, expect_ok=False, tag="1")
        assert "build-host has no Python for the dogestry modules" in output, output[-3000:]

    # Step 2: fleet.yml. Every host records the collection version and the environment it installed.
    fleet.make_registry_free()
    for host in [fleet.build] + hosts:
        recorded = fleet.recorded(host)
        assert recorded["version"] == fleet.version and recorded["python"] == "/opt/dogestry/venv-pypi/bin/python"
        assert recorded["packages"]["docker"] and recorded["packages"]["requests"] and recorded["packages"]["lz4"]
        assert "accelerator" not in recorded, recorded     # no unit was installed on these hosts
    for host in hosts:
        with open(host.path("/etc/docker/daemon.json")) as f:
            assert json.load(f) == {"log-level": "info", "live-restore": True,
                                    "registry-mirrors": ["http://127.0.0.1:%d" % MIRROR_PORT]}
        with open(host.path("/etc/hosts")) as f:
            assert "0.0.0.0 registry-1.docker.io" in f.read()
    assert not os.path.exists("/etc/ansible/facts.d/dogestry.fact"), "the hosts' files must stay theirs"

    # Step 3: publish from the build host, over SSH.
    for tag in ("1", "3", "bad"):
        controller.play("publish", inventory, tag=tag)
    controller.play("publish", inventory, tag="2", publish_move_tags=["production"])
    tags = json.loads(dogestry("tags", fleet.remote, app + ":*", "--json").stdout)["tags"]
    assert sorted(tags) == sorted("%s:%s" % (app, t) for t in ("1", "2", "3", "bad", "production"))
    assert tags[app + ":production"]["image_id"] == tags[app + ":2"]["image_id"]

    # Step 4: first deploy: every host runs 1; phase two starts only after every host has pulled.
    output = controller.play("deploy", inventory, tag="1")
    assert releases(running(hosts, app)) == {h.name: ("1", "") for h in hosts}
    assert output.index("PLAY [Phase two") > output.rindex("TASK [Docker holds exactly the image the remote names]")

    # Roll out 2: every host switches, remembering 1; 1 stays in Docker for a rollback.
    controller.play("deploy", inventory, tag="2")
    on_2 = running(hosts, app)
    assert releases(on_2) == {h.name: ("2", "1") for h in hosts}
    for host in hosts:
        assert host.dockerd.api().inspect_image(app + ":1")["Id"]

    # A tag re-pointed in the remote by a writer without the release key (an image of its own, pushed
    # straight into the remote): every host refuses it in phase one, none switches.
    build_image(docker_host, app + ":4", [{"/release": "4"}], cmd=APP_CMD)
    controller.play("publish", inventory, tag="4")
    build_image(docker_host, app + ":4", [{"/release": "not the release"}], cmd=APP_CMD)
    dogestry("push", fleet.remote, app + ":4", "--docker-host", docker_host)
    output = controller.play("deploy", inventory, expect_ok=False, tag="4")
    assert "PLAY [Phase two" not in output and "is not signed" in output, output[-3000:]
    for host in hosts:
        assert "fatal: [%s]" % host.name in output, output[-3000:]
    assert running(hosts, app) == on_2, "no host may switch to an unsigned release"

    # A deploy where one host cannot reach the remote: refused before any host switches.
    unreachable = fleet.inventory(str(tmp_path / "inventory-unreachable"), app, unreachable="fleet-3")
    output = controller.play("deploy", unreachable, expect_ok=False, tag="3")
    assert "fleet-3" in output and "PLAY [Phase two" not in output
    assert running(hosts, app) == on_2, "no host may switch when one cannot pull"

    # A release that never gets healthy: the first host is put back on 2, healthy again before the deploy
    # stops; the others are not touched.
    output = controller.play("deploy", inventory, expect_ok=False, tag="bad")
    assert "failed on fleet-1" in output and "it is back on 2 (healthy)" in output, output[-3000:]
    assert hosts[0].dockerd.api().inspect_container(app)["State"]["Health"]["Status"] == "healthy"
    after_bad = running(hosts, app)
    assert releases(after_bad) == {h.name: ("2", "1") for h in hosts}
    assert after_bad["fleet-2"] == on_2["fleet-2"] and after_bad["fleet-3"] == on_2["fleet-3"]

    # Step 5: rollback, one command, back to the release before 2.
    controller.play("rollback", inventory)
    assert releases(running(hosts, app)) == {h.name: ("1", "2") for h in hosts}
    # Deploying what runs changes nothing.
    before = running(hosts, app)
    controller.play("deploy", inventory, tag="1")
    assert running(hosts, app) == before


def test_deploy_through_each_hosts_accelerator(fleet, docker_host, build_image, tmp_path):
    """Phase one with deploy_pull_via=accelerator: each host's Docker pulls the release through the accelerator the
    role recorded, by the digest the release key signed; without deploy_pull_via the same hosts take the default way,
    dogestry_pull, and ask no accelerator; a tag re-pointed to an unsigned image stops phase one on every host before
    Docker asks its accelerator for anything."""
    fleet.make_registry_free()
    hosts, controller = fleet.hosts, fleet.controller
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, app + ":1", [{"/release": "1"}], cmd=APP_CMD)
    build_image(docker_host, app + ":2", [{"/release": "2"}], cmd=APP_CMD)
    inventory = fleet.inventory(str(tmp_path / "inventory"), app)
    for tag in ("1", "2"):
        controller.play("publish", inventory, tag=tag)

    # These hosts' accelerators run without the role's unit: record one as the role does where it runs the unit, so
    # that phase one finds its address there.
    records = {}
    for host in hosts:
        records[host.name] = fleet.recorded(host)
        with open(host.path("/etc/ansible/facts.d/dogestry.fact"), "w") as f:
            json.dump(dict(records[host.name], accelerator={"user": "dogestry", "user_created": True,
                                                            "listen": "127.0.0.1:%d" % MIRROR_PORT}), f)
    try:
        starts = {host.name: len(fleet.accelerator_output(host)) for host in hosts}
        controller.play("deploy", inventory, tag="1", deploy_pull_via="accelerator")
        assert releases(running(hosts, app)) == {h.name: ("1", "") for h in hosts}
        for host in hosts:
            image = host.dockerd.api().inspect_image(app + ":1")
            assert image["Id"] == image_id, (host.name, image["Id"], image_id)
            log = fleet.accelerator_output(host)[starts[host.name]:]
            fetched = re.findall(r'"GET /v2/%s/manifests/(sha256:[0-9a-f]{64})" 200' % re.escape(app), log)
            assert len(set(fetched)) == 1, "%s: Docker must pull the signed digest through its accelerator: %s" % (host.name, log[-2000:])
            assert image["RepoDigests"] == ["127.0.0.1:%d/%s@%s" % (MIRROR_PORT, app, fetched[0])], (host.name, image["RepoDigests"])

        # The default way, with the accelerator recorded all the same: dogestry_pull, no request to any accelerator.
        starts = {host.name: len(fleet.accelerator_output(host)) for host in hosts}
        controller.play("deploy", inventory, tag="2")
        assert releases(running(hosts, app)) == {h.name: ("2", "1") for h in hosts}
        for host in hosts:
            log = fleet.accelerator_output(host)[starts[host.name]:]
            assert "/v2/%s/" % app not in log, "%s: the default way asked the accelerator: %s" % (host.name, log[-2000:])
    finally:
        for host in hosts:
            with open(host.path("/etc/ansible/facts.d/dogestry.fact"), "w") as f:
                json.dump(records[host.name], f)
    on_2 = running(hosts, app)

    # Tag 1 re-pointed by a writer without the release key: refused on every host, by the signature check before
    # Docker's pull, so no accelerator is even asked for it.
    build_image(docker_host, app + ":1", [{"/release": "not the release"}], cmd=APP_CMD)
    dogestry("push", fleet.remote, app + ":1", "--docker-host", docker_host)
    starts = {host.name: len(fleet.accelerator_output(host)) for host in hosts}
    output = controller.play("deploy", inventory, expect_ok=False, tag="1", deploy_pull_via="accelerator")
    assert "PLAY [Phase two" not in output and "is not signed" in output, output[-3000:]
    for host in hosts:
        assert "fatal: [%s]" % host.name in output, output[-3000:]
        log = fleet.accelerator_output(host)[starts[host.name]:]
        assert "/v2/%s/" % app not in log, "%s asked its accelerator for a refused release: %s" % (host.name, log[-2000:])
    assert running(hosts, app) == on_2, "no host may switch to an unsigned release"


def test_plain_docker_pull_and_run_through_each_hosts_accelerator(fleet, docker_host, build_image, tmp_path):
    fleet.make_registry_free()
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, app + ":4", [{"/release": "4"}], cmd=["/bin/busybox", "cat", "/release"])
    fleet.controller.play("publish", fleet.inventory(str(tmp_path / "inventory"), app), tag="4")
    for host in fleet.hosts:
        # A Docker Hub name: Docker asks its mirror, the accelerator, for library/<app>.
        start = len(fleet.accelerator_output(host))
        docker_cli(host.docker_host, "pull", app + ":4")
        assert host.dockerd.api().inspect_image(app + ":4")["Id"] == image_id
        assert docker_cli(host.docker_host, "run", "--rm", "--network", "none", app + ":4").stdout == "4"
        log = fleet.accelerator_output(host)[start:]
        assert '"HEAD /v2/library/%s/manifests/4" 200' % app in log, log[-2000:]
        assert log.count('"GET /v2/library/%s/blobs/sha256:' % app) >= 2, log[-2000:]
        # What the remote does not hold fails: the accelerator says 404 and Docker Hub is not there to fall back on.
        start = len(fleet.accelerator_output(host))
        missing = docker_cli(host.docker_host, "pull", app + ":404", check=False)
        assert missing.returncode != 0, missing.stdout
        log = fleet.accelerator_output(host)[start:]
        assert '/v2/library/%s/manifests/404" 404' % app in log, log[-2000:]
        docker_cli(host.docker_host, "rmi", app + ":4")


def test_upgrading_the_collection_and_rerunning_fleet_yml_upgrades_the_hosts(fleet, docker_host, build_image,
                                                                             tmp_path):
    fleet.make_registry_free()
    name, choices = UPGRADE_PIN
    with open(os.path.join(REPO, "roles", "accelerator", "defaults", "main.yml")) as f:
        current = re.search(r"- %s==(\S+)" % name, f.read()).group(1)
    new_pin = next(v for v in choices if v != current)
    marker = "# upgraded: %s\n" % uuid.uuid4().hex

    def bump(text):
        version = re.search(r"^version: (\S+)$", text, re.M).group(1)
        parts = version.split(".")
        return text.replace("version: " + version, "version: " + ".".join(parts[:-1] + [str(int(parts[-1]) + 1)]))

    upgraded = fleet.controller.install("2", {
        "galaxy.yml": bump,
        "roles/accelerator/defaults/main.yml": lambda text: text.replace("- %s==%s" % (name, current), "- %s==%s" % (name, new_pin)),
        "plugins/module_utils/_version.py": lambda text: text + marker})
    assert upgraded != fleet.version
    app = "dogestry-fleet-%s" % uuid.uuid4().hex[:8]
    inventory = fleet.inventory(str(tmp_path / "inventory"), app)
    fleet.controller.play("fleet", inventory)
    for host in [fleet.build] + fleet.hosts:
        recorded = fleet.recorded(host)
        assert recorded["version"] == upgraded, (host.name, recorded)
        assert recorded["packages"][name] == new_pin, (host.name, recorded)
        with open(host.path("/opt/dogestry/lib/dogestry/_version.py")) as f:
            assert f.read().endswith(marker), "%s runs the old engine" % host.name
    # The upgraded build host publishes; an accelerator restarted on the new engine (as its unit would be) serves it.
    image_id = build_image(docker_host, app + ":5", [{"/release": "5"}], cmd=["/bin/busybox", "cat", "/release"])
    fleet.controller.play("publish", inventory, tag="5")
    host = fleet.hosts[0]
    fleet.start_accelerator(host)
    docker_cli(host.docker_host, "pull", app + ":5")
    assert host.dockerd.api().inspect_image(app + ":5")["Id"] == image_id
    docker_cli(host.docker_host, "rmi", app + ":5")
