# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""dogestry against a registry, on the same image in the same run: what a user would pick instead.

Columns (each with a fresh store every repeat):
  registry     `docker push` / `docker pull` through Debian's docker-registry (CNCF distribution
               2.8, filesystem storage) on loopback
  accelerator  `docker push` / `docker pull` through `dogestry serve` over a directory remote
  dogestry     the modules' engine (dogestry_push / dogestry_pull) into / from a directory remote
  cli          the `dogestry push` / `dogestry pull` commands (the same engine, plus their start-up)
  skopeo       `skopeo copy docker-daemon:IMG oci:DIR:TAG` and back (`oci:DIR:TAG docker-daemon:IMG`):
               an OCI layout directory as the store, skopeo's defaults (it gzips the layers)
  floor        `docker save` to a file and `docker load` from it
Rows: cold push, no-op push (the same image again), one-layer update push, cold pull (the daemon
lacks every layer), no-op pull (the image again), one-layer update pull (the daemon has the
previous release). The image is bench.py's (six layers of text, random,
sparse and mixed data; :v2 differs only in its top layer). Prints medians (min-max), ratios to the
registry and to the floor, bytes stored, and the servers' peak RSS; exits non-zero if a target
of issues 8 and 10 is missed:
  - docker pull through the accelerator, cold and update: at most the registry's time
  - one-layer update push, through the accelerator and through dogestry: at most the registry's time
  - cold push through dogestry: at most 0.7x the registry's
  - no-op push and no-op pull through dogestry: under 0.1 s of engine time
Ratios over 1.0 within the spread of repeats are noise: judge with --repeat 3 or more.

    python3 benchmarks/registry_bench.py [--size-mb 220] [--repeat 3] [--docker-host unix:///...]
                                         [--s3 raw|shaped] [--docker28 | --netns-pid PID]

--docker28 runs the whole table against Docker 28 on the containerd image store, started (or
shared) the way tests/conftest.py starts it (scripts/fetch-docker.sh 28, its own containerd, its own
network namespace). A daemon in another network namespace pulls from and pushes to its own
loopback, so the benchmark moves itself into that namespace (setns, as root) before it starts the
registry, the accelerator, the engine and the CLI: the engine serves the daemon on its loopback
there, as it does on a host whose daemon shares its namespace. --netns-pid PID does the same for a
daemon given by --docker-host. The S3 columns need moto on the host's loopback, so they are not
offered there.

Targets on the containerd store (issue 22): every row of the accelerator, dogestry and cli columns
within 1.2x of the registry's time. On the classic store, issues 8 and 10's (above).

With --s3, three more columns store into S3 (moto_server on loopback): the registry with its S3
storage driver, the accelerator and the engine with an s3:// remote. moto serves every ranged GET
by reading the whole object and shares the cores, so `shaped` puts a proxy in front of it
(tests/support/s3_faults.py, without faults) with a delay per request and a bandwidth cap per
connection (--s3-delay-ms 30, --s3-mbps 60), closer to S3 as seen from EC2; `raw` talks to moto.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict

from docker import errors as docker_errors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import REPO, Engine, Moto, docker_build, free_port, log, make_context, peak_rss, run  # noqa: E402

VENV_DOGESTRY = os.path.join(REPO, ".venv", "bin", "dogestry")
ROWS = ("cold push", "no-op push", "update push", "cold pull", "no-op pull", "update pull")
PUSHES = (("cold push", "v1"), ("no-op push", "v1"), ("update push", "v2"))
PULLS = (("cold pull", "v1"), ("no-op pull", "v1"), ("update pull", "v2"))
COLUMNS = ("registry", "accelerator", "dogestry", "cli", "skopeo", "floor")
S3_COLUMNS = ("registry s3", "accelerator s3", "dogestry s3")


def du(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def enter_netns(netns_pid):
    """Move this process (and what it starts from now on) into the network namespace of `netns_pid`."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/%d/ns/net" % netns_pid) as ns:
        if libc.setns(ns.fileno(), 0x40000000) != 0:        # CLONE_NEWNET
            sys.exit("setns into the network namespace of %d failed: %s (run as root)"
                     % (netns_pid, os.strerror(ctypes.get_errno())))


def in_netns(netns_pid, cmd):
    """`cmd` run in the network namespace of process `netns_pid` (nsenter execs it: same pid)."""
    return ["nsenter", "--net=/proc/%d/ns/net" % netns_pid, "--"] + cmd if netns_pid else cmd


def answers(url, netns_pid=None):
    """Whether GET url succeeds, from inside the namespace when there is one."""
    if not netns_pid:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except OSError:
            return False
    probe = "import urllib.request; urllib.request.urlopen(%r, timeout=2).read()" % url
    return subprocess.run(in_netns(netns_pid, [sys.executable, "-c", probe]), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


class ApiVersionRelay:
    """A unix-socket relay to a Docker daemon that rewrites the API version of each request ("/v1.22/" ->
    "/v1.24/", the same length), bytes otherwise untouched: skopeo 1.9's docker-daemon transport speaks
    API 1.22, which Docker >= 25 refuses (minimum 1.24). Used for the skopeo column only, when needed."""

    def __init__(self, daemon_socket, path, old=b"/v1.22/", new=b"/v1.24/"):
        self.daemon_socket, self.path, self.old, self.new = daemon_socket, path, old, new
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(16)
        self.host = "unix://" + path
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _addr = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.daemon_socket)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _requests(self, client, upstream):
        """Client to daemon: each request's head rewritten, its body (Content-Length or chunked) copied."""
        reader = client.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    break
                head = [line.replace(self.old, self.new, 1)]
                length, chunked = 0, False
                while head[-1] not in (b"\r\n", b"\n", b""):
                    header = reader.readline()
                    name, _sep, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                        chunked = True
                    head.append(header)
                upstream.sendall(b"".join(head))
                while chunked:
                    size_line = reader.readline()
                    upstream.sendall(size_line)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:         # trailers, then the blank line
                            trailer = reader.readline()
                            upstream.sendall(trailer)
                            if trailer in (b"\r\n", b"\n", b""):
                                break
                        break
                    length = size + 2       # the chunk and its CRLF
                    while length:
                        data = reader.read(min(length, 1 << 20))
                        upstream.sendall(data)
                        length -= len(data)
                while length and not chunked:
                    data = reader.read(min(length, 1 << 20))
                    if not data:
                        return
                    upstream.sendall(data)
                    length -= len(data)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def stop(self):
        self.server.close()
        os.unlink(self.path)


class Server:
    """A registry-API server on a free loopback port (of the daemon's network namespace), stopped by stop()."""

    def __init__(self, cmd, store, log_path, env=None, port=None, netns_pid=None):
        self.port = port or free_port()
        self.store = store
        self.host = "127.0.0.1:%d" % self.port
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(in_netns(netns_pid, [c.replace("{PORT}", str(self.port)) for c in cmd]),
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if answers("http://%s/v2/" % self.host, netns_pid):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        sys.exit("%s did not start (log %s)" % (cmd[0], log_path))

    def stop(self):
        rss = peak_rss(self.proc.pid) if self.proc.poll() is None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return rss


def start_registry(tmp, s3=None, netns_pid=None, store=None):
    """docker-registry on a free port, storing in a new directory, or under a new prefix of S3
    (`s3`: (endpoint URL, bucket)); or in `store`, a directory or prefix an earlier one used."""
    exe = shutil.which("docker-registry")
    if not exe:
        sys.exit("docker-registry is not installed (scripts/setup.sh installs Debian's docker-registry)")
    if store is None:
        store = "reg-%s" % uuid.uuid4().hex[:6] if s3 else os.path.join(tmp, "registry-store-%s" % uuid.uuid4().hex[:6])
    if s3:
        storage = ("  s3:\n    accesskey: bench\n    secretkey: bench\n    region: us-east-1\n"
                   "    regionendpoint: %s\n    bucket: %s\n    secure: false\n    v4auth: true\n"
                   "    rootdirectory: /%s\n" % (s3[0], s3[1], store))
    else:
        storage = "  filesystem:\n    rootdirectory: %s\n" % store
    port = free_port()
    config = os.path.join(tmp, "registry-%d.yml" % port)
    with open(config, "w") as fh:
        fh.write("version: 0.1\nlog:\n  level: error\nstorage:\n%s  delete:\n    enabled: true\n"
                 "http:\n  addr: 127.0.0.1:%d\n" % (storage, port))
    return Server([exe, "serve", config], store, os.path.join(tmp, "registry.log"), port=port, netns_pid=netns_pid)


def start_accelerator(tmp, s3=None, netns_pid=None):
    """dogestry serve over a new directory remote, or a new prefix of S3 (`s3`: (endpoint, bucket))."""
    store = os.path.join(tmp, "accelerator-remote-%s" % uuid.uuid4().hex[:6])
    extra = []
    if s3:
        store = "s3://%s/acc-%s/" % (s3[1], uuid.uuid4().hex[:6])
        extra = ["--endpoint-url", s3[0]]
    env = dict(os.environ, PYTHONPATH=os.path.join(tmp, "shim"))
    return Server([VENV_DOGESTRY, "serve", store, "--listen", "127.0.0.1:{PORT}", "--spool-dir", tmp] + extra, store,
                  os.path.join(tmp, "accelerator.log"), env, netns_pid=netns_pid)


class RegistryBench:
    def __init__(self, args, engine, tmp):
        self.args, self.e, self.tmp = args, engine, tmp
        self.daemon = engine.Daemon(args.docker_host)
        self.samples = defaultdict(lambda: defaultdict(list))
        self.stored = defaultdict(list)
        self.rss = defaultdict(list)
        self.nonce = uuid.uuid4().hex[:12]
        self.name = "dogestry-regbench-%s" % self.nonce
        info = self.daemon.api.info()
        self.skopeo_host, self.relay = args.docker_host, None
        if tuple(int(n) for n in self.daemon.api.version().get("MinAPIVersion", "1.12").split(".")) > (1, 22):
            if not args.docker_host.startswith("unix://"):
                sys.exit("skopeo 1.9 speaks Docker API 1.22, which %s refuses: give a unix:// daemon" % args.docker_host)
            self.relay = ApiVersionRelay(args.docker_host[len("unix://"):], os.path.join(tmp, "api-1.24.sock"))
            self.skopeo_host = self.relay.host
        self.daemon_version = "%s (%s)" % (info.get("ServerVersion"), "containerd store" if any(
            "containerd" in str(pair) for pair in info.get("DriverStatus") or []) else info.get("Driver"))

    def docker(self, *cmd):
        run(["docker", "-H", self.args.docker_host] + list(cmd))

    def cli(self, *args):
        """The `dogestry` command of this checkout, on this checkout's engine (the shim)."""
        env = dict(os.environ, PYTHONPATH=os.path.join(self.tmp, "shim"))
        try:
            run([VENV_DOGESTRY] + list(args) + ["--docker-host", self.args.docker_host], env=env)
        except subprocess.CalledProcessError as exc:
            sys.exit("dogestry %s failed: %s" % (args[0], exc.stderr.decode(errors="replace").strip()))

    def skopeo(self, src, dest):
        daemon = "--src-daemon-host" if src.startswith("docker-daemon:") else "--dest-daemon-host"
        try:
            run(["skopeo", "--insecure-policy", "copy", "--quiet", daemon, self.skopeo_host, src, dest])
        except subprocess.CalledProcessError as exc:
            sys.exit("skopeo failed: %s" % exc.stderr.decode(errors="replace").strip())

    def timed(self, column, row, fn):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        self.samples[column][row].append(elapsed)
        log("%-12s %-12s %.2fs" % (column, row, elapsed))

    def build(self):
        ctx = os.path.join(self.tmp, "ctx")
        make_context(ctx, self.args.size_mb, self.nonce)
        for version in ("v1", "v2"):
            docker_build(ctx, "Dockerfile.app-" + version, "%s:%s" % (self.name, version))
        self.layers = {v: [d.split(":", 1)[1] for d in self.daemon.inspect("%s:%s" % (self.name, v))["RootFS"]["Layers"]]
                       for v in ("v1", "v2")}
        self.archive = os.path.join(self.tmp, "images.tar")
        self.docker("save", "-o", self.archive, self.name + ":v1", self.name + ":v2")
        shutil.rmtree(ctx)
        # The classic builder's intermediate images (one per step) outlive the image on the containerd
        # store, holding its layers: remove them, and start from what the archive loads.
        intermediates = []
        for version in ("v1", "v2"):
            parent = self.daemon.api.inspect_image("%s:%s" % (self.name, version)).get("Parent")
            while parent and parent not in intermediates:
                intermediates.append(parent)
                parent = self.daemon.api.inspect_image(parent).get("Parent")
        self.forget(check=False)
        for image in intermediates:
            try:
                self.daemon.api.remove_image(image)
            except docker_errors.APIError:
                pass        # gone with its child already (classic store)
        self.restore()

    def forget(self, check=True):
        """Remove every tag of the bench images, so that the daemon holds none of their layers."""
        for image in self.daemon.api.images(name=None):
            for tag in image.get("RepoTags") or []:
                if self.name in tag:
                    self.daemon.api.remove_image(tag, force=True)
        if not check:
            return
        present = self.daemon.present_chain_ids()
        if any(c in present for c in self.e.chain_ids(self.layers["v1"])):
            sys.exit("the daemon still holds layers of the bench image: the cold pulls would not be cold")

    def restore(self):
        self.forget()
        self.docker("load", "-i", self.archive)

    def stores(self):
        """(column suffix, S3 (endpoint, bucket) or None) of each store this run compares."""
        return [("", None)] + ([(" s3", (self.s3_url, "bench"))] if self.args.s3 else [])

    def stored_bytes(self, store, s3):
        if not s3:
            return du(store)
        prefix = store.split("/", 3)[3] if store.startswith("s3://") else store + "/"
        total = 0
        for page in self.moto.s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total

    def repeat(self):
        started = []
        try:
            targets = []
            for suffix, s3 in self.stores():
                netns = self.args.netns_pid
                registry, accelerator = start_registry(self.tmp, s3, netns), start_accelerator(self.tmp, s3, netns)
                started += [("registry" + suffix, registry), ("accelerator" + suffix, accelerator)]
                if s3:
                    remote = "s3://bench/eng-%s/" % uuid.uuid4().hex[:6]
                    repo = self.e.Repository(self.e.remote_from_url(remote, endpoint_url=s3[0], jobs=self.args.jobs))
                else:
                    remote = os.path.join(self.tmp, "dogestry-remote-%s" % uuid.uuid4().hex[:6])
                    repo = self.e.Repository(self.e.remote_from_url(remote))
                targets.append((suffix, s3, registry, accelerator, remote, repo))
            # pushes, the images present
            for suffix, _s3, registry, accelerator, _remote, repo in targets:
                for column, server in (("registry" + suffix, registry), ("accelerator" + suffix, accelerator)):
                    for row, version in PUSHES:
                        ref = "%s/%s:%s" % (server.host, self.name, version)
                        self.docker("tag", "%s:%s" % (self.name, version), ref)
                        self.timed(column, row, lambda ref=ref: self.docker("push", ref))
                for row, version in PUSHES:
                    def push(source="%s:%s" % (self.name, version), repo=repo):
                        plan = self.e.plan_push(self.daemon, repo, source)
                        self.e.execute_push(self.daemon, repo, plan, "lz4", self.args.jobs)
                    self.timed("dogestry" + suffix, row, push)
            cli_remote = os.path.join(self.tmp, "dogestry-remote-cli-%s" % uuid.uuid4().hex[:6])
            for row, version in PUSHES:
                self.timed("cli", row, lambda version=version: self.cli("push", cli_remote, "%s:%s" % (self.name, version)))
            layout = os.path.join(self.tmp, "skopeo-oci-%s" % uuid.uuid4().hex[:6])
            for row, version in PUSHES:
                self.timed("skopeo", row, lambda version=version: self.skopeo(
                    "docker-daemon:%s:%s" % (self.name, version), "oci:%s:%s" % (layout, version)))
            # the floor: save, then load into a daemon without the image
            floor_tar = os.path.join(self.tmp, "floor.tar")
            self.timed("floor", "cold push", lambda: self.docker("save", "-o", floor_tar, self.name + ":v1"))
            # pulls, into a daemon without any of the image's layers
            for suffix, _s3, registry, accelerator, _remote, repo in targets:
                for column, server in (("registry" + suffix, registry), ("accelerator" + suffix, accelerator)):
                    self.forget()
                    for row, version in PULLS:
                        ref = "%s/%s:%s" % (server.host, self.name, version)
                        self.timed(column, row, lambda ref=ref: self.docker("pull", ref))
                self.forget()
                for row, version in PULLS:
                    def pull(version=version, repo=repo):
                        plan = self.e.plan_pull(self.daemon, repo, "%s:%s" % (self.name, version))
                        self.e.execute_pull(self.daemon, repo, plan)
                    self.timed("dogestry" + suffix, row, pull)
            self.forget()
            for row, version in PULLS:
                self.timed("cli", row, lambda version=version: self.cli("pull", cli_remote, "%s:%s" % (self.name, version)))
            self.forget()
            for row, version in PULLS:
                self.timed("skopeo", row, lambda version=version: self.skopeo(
                    "oci:%s:%s" % (layout, version), "docker-daemon:%s:%s" % (self.name, version)))
            self.forget()
            self.timed("floor", "cold pull", lambda: self.docker("load", "-i", floor_tar))
            os.unlink(floor_tar)
            for suffix, s3, registry, accelerator, remote, _repo in targets:
                self.stored["registry" + suffix].append(self.stored_bytes(registry.store, s3))
                self.stored["accelerator" + suffix].append(self.stored_bytes(accelerator.store, s3))
                self.stored["dogestry" + suffix].append(self.stored_bytes(remote, s3))
            self.stored["cli"].append(du(cli_remote))
            self.stored["skopeo"].append(du(layout))
        finally:
            for column, server in started:
                self.rss[column].append(server.stop())
                if not server.store.startswith(("s3://", "reg-")):
                    shutil.rmtree(server.store, ignore_errors=True)
            for path in os.listdir(self.tmp):
                if path.startswith(("dogestry-remote-", "skopeo-oci-")):
                    shutil.rmtree(os.path.join(self.tmp, path), ignore_errors=True)
            self.restore()

    def report(self):
        containerd = "containerd store" in self.daemon_version

        def med(values):
            values = sorted(values)
            return values[len(values) // 2] if values else None

        def cell(column, row):
            values = self.samples[column].get(row)
            if not values:
                return "-"
            text = "%.2f s" % med(values)
            if len(values) > 1:
                text += " (%.2f-%.2f)" % (min(values), max(values))
            baseline = "registry s3" if column.endswith(" s3") else "registry"
            reg = med(self.samples[baseline].get(row, []))
            if column not in ("registry", "registry s3", "floor") and reg:
                text += " %.2fx reg" % (med(values) / reg)
            floor_row = "cold push" if "push" in row else "cold pull"
            floor = med(self.samples["floor"].get(floor_row, []))
            if column != "floor" and floor and row.startswith("cold"):
                text += " %.2fx floor" % (med(values) / floor)
            return text

        columns = COLUMNS + (S3_COLUMNS if self.args.s3 else ())
        print("\n| %d MB image, %d repeat(s), Docker %s%s | %s |" % (
            self.args.size_mb, self.args.repeat, self.daemon_version, ", S3 %s" % self.args.s3 if self.args.s3 else "",
            " | ".join(columns)))
        print("|---|%s" % ("---|" * len(columns)))
        for row in ROWS:
            print("| %s | %s |" % (row, " | ".join(cell(c, row) for c in columns)))
        print("| bytes stored (v1+v2) | %s |" % " | ".join(
            "%.1f MB" % (med(self.stored[c]) / 1e6) if self.stored[c] else "-" for c in columns))
        print("| server peak RSS | %s |" % " | ".join(
            "%.0f MB" % (max(self.rss[c]) / 1e6) if self.rss[c] else "-" for c in columns))
        print("(floor: `docker save` in the cold push row, `docker load` in the cold pull row)")
        if self.args.chart:
            import chart
            names = {"registry": "registry", "accelerator": "accelerator", "dogestry": "modules", "cli": "CLI"}
            seconds = {row.replace("update", "one-layer update"):
                       {names[c]: med(self.samples[c][row]) for c in names if self.samples[c].get(row)}
                       for row in ROWS}
            stored = {names[c]: med(self.stored[c]) for c in names if self.stored[c]}
            with open(self.args.chart, "w", encoding="utf-8") as out:
                out.write(chart.render(seconds, stored, "medians of registry_bench.py, %d MB image, Docker %s, %s"
                                       % (self.args.size_mb, self.daemon_version, time.strftime("%Y-%m-%d"))))

        targets = []

        def target(name, column, row, limit, against="registry"):
            got, base = med(self.samples[column][row]), med(self.samples[against][row])
            ok = got <= limit * base
            targets.append(ok)
            print("%s  %-62s %.2fs vs %.2fs (%.2fx, limit %.1fx)" % ("PASS" if ok else "FAIL", name, got, base,
                                                                     got / base, limit))
        print()
        if containerd:      # issue 22: every row of every dogestry column within 1.2x of the registry
            for column in ("accelerator", "dogestry", "cli"):
                for row in ROWS:
                    target("%s through %s" % (row, column), column, row, 1.2)
            return all(targets)
        target("docker pull through the accelerator, cold", "accelerator", "cold pull", 1.0)
        target("docker pull through the accelerator, update", "accelerator", "update pull", 1.0)
        target("one-layer update push through the accelerator", "accelerator", "update push", 1.0)
        target("one-layer update push through dogestry", "dogestry", "update push", 1.0)
        target("cold push through dogestry", "dogestry", "cold push", 0.7)
        for row in ("no-op push", "no-op pull"):      # issue 10: engine time under 0.1 s
            got = med(self.samples["dogestry"][row])
            targets.append(got < 0.1)
            print("%s  %-62s %.3fs (limit 0.1 s)" % ("PASS" if got < 0.1 else "FAIL", row + " through dogestry", got))
        return all(targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=220)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--s3", choices=["raw", "shaped"], help="add S3 columns (moto_server), shaped or not")
    parser.add_argument("--s3-delay-ms", type=float, default=30.0)
    parser.add_argument("--s3-mbps", type=float, default=60.0, help="MB/s per connection, each way")
    parser.add_argument("--docker28", action="store_true", help="against Docker 28 on the containerd store, "
                        "started (or shared) as the tests start it, in its own network namespace")
    parser.add_argument("--chart", metavar="OUT.svg", help="also draw the results as an SVG bar chart (benchmarks/chart.py)")
    parser.add_argument("--netns-pid", type=int, help="the daemon at --docker-host lives in this process's "
                        "network namespace: start the registry and the accelerator in it")
    args = parser.parse_args()
    if not os.path.exists(VENV_DOGESTRY):
        sys.exit("%s is missing: run bash scripts/setup.sh" % VENV_DOGESTRY)
    extra_docker = None
    if args.docker28:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from conftest import _ExtraDocker
        extra_docker = _ExtraDocker("28")
        extra_docker.acquire()          # registers this process as a user; the last user stops it, if tests started it
        args.docker_host = extra_docker.host
        with open(extra_docker.pidfile) as fh:
            args.netns_pid = int(fh.read().strip())
    if args.netns_pid:
        if args.s3:
            sys.exit("--s3 needs moto on the host's loopback, which a daemon in another network namespace cannot reach")
        run(in_netns(args.netns_pid, ["ip", "link", "set", "lo", "up"]))
        enter_netns(args.netns_pid)
        args.netns_pid = None       # everything started from here on is in the daemon's namespace
    os.environ["DOCKER_HOST"] = args.docker_host      # `docker build` (bench.docker_build) goes there too
    tmp = tempfile.mkdtemp(prefix="dogestry-regbench-", dir=args.tmpdir)
    os.makedirs(os.path.join(tmp, "shim"))
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(tmp, "shim", "dogestry"))
    bench = RegistryBench(args, Engine(tmp), tmp)
    proxy = None
    if args.s3:
        bench.moto = Moto(tmp)          # also sets dummy AWS_* credentials for every client
        bench.s3_url = bench.moto.url
        if args.s3 == "shaped":
            sys.path.insert(0, os.path.join(REPO, "tests", "support"))
            from s3_faults import FaultProxy
            proxy = FaultProxy(bench.moto.url, faults={}, delay=args.s3_delay_ms / 1000.0, rate=args.s3_mbps * 1e6)
            bench.s3_url = proxy.url
    try:
        log("building the %d MB image (v1, v2)" % args.size_mb)
        bench.build()
        for i in range(args.repeat):
            log("repeat %d/%d" % (i + 1, args.repeat))
            bench.repeat()
        ok = bench.report()
    finally:
        bench.forget()
        if proxy:
            proxy.stop()
        if args.s3:
            bench.moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if extra_docker:
            extra_docker.release()
    print("\nmachine: %d cores, load %.1f at the end; %s" % (os.cpu_count(), os.getloadavg()[0], time.strftime("%Y-%m-%d")))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
