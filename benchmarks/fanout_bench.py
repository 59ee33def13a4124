# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Fan-out: three Docker daemons pull the same image at once, four ways, in one run.

  registry        Debian's docker-registry (CNCF distribution 2.8; filesystem storage, or its S3
                  driver), `docker pull` on each daemon
  shared acc.     one `dogestry serve --cache-dir` over the remote, `docker pull` on each daemon
  acc. per daemon three `dogestry serve --cache-dir` over the same remote, one per daemon
  engine          `dogestry pull REMOTE IMAGE --docker-host A --docker-host B --docker-host C`

The daemons are the system's dockerd 20.10, three more of them, each with its own data root and
containerd namespace, in the host's network namespace (tests/support/docker_daemons.py), so
that all reach servers on loopback. The image is bench.py's v1 (six layers: text, random, sparse,
mixed), built on --docker-host and pushed untimed into each store. Stores: `dir` (a directory
remote; the registry's filesystem storage) and `s3` (moto_server behind the test proxy,
tests/support/s3_faults.py, shaped like registry_bench.py's --s3 shaped: --s3-delay-ms 30 a
request, --s3-mbps 60 a connection each way; `--s3 raw` talks to moto directly).

Each measurement starts from three daemons holding none of the image's layers (checked) and servers
started afresh (empty caches); it takes the wall time from starting the three pulls until all
three daemons hold the image (checked by image ID), and the bytes read from the store:
  s3:  body bytes of the GETs the proxy forwarded (after the servers started)
  dir: dogestry processes: bytes read through the directory remote (LocalRemote.open, counted in
       the process); the registry: the bytes its process read (/proc/PID/io rchar: its storage
       files, plus the few bytes of the HTTP requests it received)
Prints medians (min-max) of --repeat runs, each as a ratio to the registry of the same store and
run; the variants' order rotates between repeats. Exits non-zero if a pull failed or a daemon
ended without the image; speed is never a failure.

    python benchmarks/fanout_bench.py [--size-mb 300] [--repeat 3] [--stores dir,s3] [--s3 shaped|raw]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import REPO, Engine, Moto, docker_build, log, make_context, run  # noqa: E402
from registry_bench import VENV_DOGESTRY, Server, du, start_registry  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "support"))
from docker_daemons import Dockerd  # noqa: E402
from s3_faults import FaultProxy  # noqa: E402

VENV_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
VARIANTS = ("registry", "shared acc.", "acc. per daemon", "engine")
DAEMONS = 3

# `dogestry ARGS...` with the bytes read through directory remotes counted, written to the file named
# by $DOGESTRY_BENCH_READS at exit (serve exits cleanly on SIGTERM).
COUNTING = """
import atexit, os, sys, threading
from dogestry._storage import local as _remote
total, lock = [0], threading.Lock()
class Counted:
    def __init__(self, handle):
        self._handle = handle
    def _add(self, n):
        with lock:
            total[0] += n or 0
    def read(self, *args):
        data = self._handle.read(*args)
        self._add(len(data))
        return data
    def read1(self, *args):
        data = self._handle.read1(*args)
        self._add(len(data))
        return data
    def readinto(self, buf):
        n = self._handle.readinto(buf)
        self._add(n)
        return n
    def __getattr__(self, name):
        return getattr(self._handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._handle.close()
        return False
opened = _remote.LocalRemote.open
_remote.LocalRemote.open = lambda self, key, size=None: Counted(opened(self, key, size))
def report():
    with open(os.environ["DOGESTRY_BENCH_READS"], "w") as out:
        out.write(str(total[0]))
atexit.register(report)
from dogestry._cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


def rchar(pid):
    with open("/proc/%d/io" % pid) as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


class Store:
    """Where the image is kept, for the registry and for dogestry: a directory each, or prefixes of S3."""

    def __init__(self, kind, tmp, s3_url=None):
        self.kind, self.tmp = kind, tmp
        self.s3 = (s3_url, "bench") if kind == "s3" else None
        self.registry_store = None      # set by the first registry start (the push)
        if kind == "s3":
            self.remote = "s3://bench/fan-%s/" % uuid.uuid4().hex[:6]
            self.remote_args = ["--endpoint-url", s3_url]
        else:
            self.remote = os.path.join(tmp, "dogestry-remote")
            self.remote_args = []


class DaemonsBench:
    """An image built once, and Docker daemons of the benchmark's own that pull it cold each round
    (peers_bench.py builds on this too)."""
    label = "bench"

    def __init__(self, args, engine, tmp, root):
        self.args, self.e, self.tmp, self.root = args, engine, tmp, root
        self.nonce = uuid.uuid4().hex[:12]
        self.name = "dogestry-%s-%s" % (self.label, self.nonce)
        self.image = self.name + ":v1"
        self.failures = []
        self.daemons = []

    @property
    def env(self):
        return dict(os.environ, PYTHONPATH=os.path.join(self.tmp, "shim"))      # with moto's credentials, once set

    # -- set-up ---------------------------------------------------------------------------------
    def build(self):
        ctx = os.path.join(self.tmp, "ctx")
        make_context(ctx, self.args.size_mb, self.nonce)
        docker_build(ctx, "Dockerfile.app-v1", self.image)
        shutil.rmtree(ctx)
        info = self.e.Daemon(self.args.docker_host).inspect(self.image)
        self.image_id = info["Id"]
        self.diff_ids = [d.split(":", 1)[1] for d in info["RootFS"]["Layers"]]
        self.image_size = info["Size"]

    def start_daemons(self, count):
        for i in range(count):
            self.daemons.append(Dockerd("%s-%d" % (self.label, i + 1), os.path.join(self.root, str(i + 1)),
                                        os.path.join(self.tmp, "dockerd-%d.log" % (i + 1)), network="host"))
        for daemon in self.daemons:
            daemon.start()
        for daemon in self.daemons:
            daemon.wait()

    def tidy(self):
        """Stop the daemons, remove their state, and the bench image from the daemon it was built on."""
        for daemon in self.daemons:
            daemon.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            run(["docker", "rmi", "-f", self.image])
        except subprocess.CalledProcessError:
            pass

    def clear_daemons(self):
        for daemon in self.daemons:
            api = daemon.api()
            for image in api.images(all=True):
                api.remove_image(image["Id"], force=True)
            present = self.e.Daemon(daemon.host).present_chain_ids()
            if any(c in present for c in self.e.chain_ids(self.diff_ids)):
                sys.exit("%s still holds layers of the bench image: the pulls would not be cold" % daemon.name)


class FanoutBench(DaemonsBench):
    label = "fanbench"

    def __init__(self, args, engine, tmp, root):
        super().__init__(args, engine, tmp, root)
        self.samples = defaultdict(lambda: defaultdict(list))     # store -> variant -> [(seconds, bytes)]
        self.proxy = self.moto = None

    def dogestry(self, *cmd):
        return run([VENV_DOGESTRY] + list(cmd), env=self.env)

    def push(self, store):
        """The image into the store, untimed: `docker push` into the registry, `dogestry push` into the remote."""
        registry = start_registry(self.tmp, store.s3)
        store.registry_store = registry.store
        try:
            ref = "%s/%s" % (registry.host, self.image)
            run(["docker", "tag", self.image, ref])
            run(["docker", "push", ref])
            run(["docker", "rmi", ref])
        finally:
            registry.stop()
        self.dogestry("push", store.remote, self.image, "--docker-host", self.args.docker_host, *store.remote_args)
        if store.kind == "dir":
            store.stored = {"registry": du(store.registry_store), "dogestry": du(store.remote)}
        else:
            store.stored = {"registry": self.s3_bytes("%s/" % store.registry_store),
                            "dogestry": self.s3_bytes(store.remote.split("/", 3)[3])}

    def s3_bytes(self, prefix):
        total = 0
        for page in self.moto.s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total

    # -- one measurement ------------------------------------------------------------------------
    def accelerator(self, store, label):
        reads = os.path.join(self.tmp, "reads-%s" % label)
        cache = os.path.join(self.tmp, "cache-%s" % label)
        shutil.rmtree(cache, ignore_errors=True)
        server = Server([VENV_PYTHON, "-c", COUNTING, "serve", store.remote, "--listen", "127.0.0.1:{PORT}",
                         "--read-only", "--cache-dir", cache] + store.remote_args,
                        store.remote, os.path.join(self.tmp, "accelerator.log"),
                        dict(self.env, DOGESTRY_BENCH_READS=reads))
        server.reads, server.cache = reads, cache
        return server

    def docker_pulls(self, refs):
        """`docker pull` of refs[i] on daemon i, all at once; the seconds until the last one ended."""
        errors = []
        barrier = threading.Barrier(len(refs) + 1)

        def pull(daemon, ref):
            barrier.wait()
            proc = subprocess.run(["docker", "-H", daemon.host, "pull", "-q", ref], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, universal_newlines=True, timeout=1200, check=False)
            if proc.returncode:
                errors.append("%s: docker pull %s: %s" % (daemon.name, ref, proc.stderr.strip()[-500:]))
        threads = [threading.Thread(target=pull, args=(d, r)) for d, r in zip(self.daemons, refs)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start, errors

    def measure(self, store, variant):
        self.clear_daemons()
        servers, refs, errors = [], [], []
        reads = os.path.join(self.tmp, "reads-engine")     # the engine's count of directory reads
        registry_read = 0
        try:
            if variant == "registry":
                servers = [start_registry(self.tmp, store.s3, store=store.registry_store)]
                refs = ["%s/%s" % (servers[0].host, self.image)] * DAEMONS
            elif variant == "shared acc.":
                servers = [self.accelerator(store, "shared")]
                refs = ["%s/%s" % (servers[0].host, self.image)] * DAEMONS
            elif variant == "acc. per daemon":
                servers = [self.accelerator(store, "own-%d" % i) for i in range(DAEMONS)]
                refs = ["%s/%s" % (server.host, self.image) for server in servers]
            if self.proxy:
                self.proxy.reset_counts()
            if variant == "engine":
                cmd = [VENV_PYTHON, "-c", COUNTING, "pull", store.remote, self.image] + store.remote_args
                for daemon in self.daemons:
                    cmd += ["--docker-host", daemon.host]
                start = time.perf_counter()
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                      env=dict(self.env, DOGESTRY_BENCH_READS=reads), timeout=1200, check=False)
                seconds = time.perf_counter() - start
                if proc.returncode:
                    errors.append("dogestry pull: %s" % proc.stderr.strip()[-500:])
            else:
                if variant == "registry":
                    registry_read = -rchar(servers[0].proc.pid)
                seconds, errors = self.docker_pulls(refs)
                if variant == "registry":
                    registry_read += rchar(servers[0].proc.pid)
        finally:
            for server in servers:
                server.stop()
                if getattr(server, "cache", None):
                    shutil.rmtree(server.cache, ignore_errors=True)
        if store.kind == "s3":
            read = sum(n for _count, n in self.proxy.counts("GET").values())
        elif variant == "registry":
            read = registry_read
        else:
            files = [server.reads for server in servers] if servers else [reads]
            read = 0
            for path in files:
                with open(path) as fh:
                    read += int(fh.read())
                os.unlink(path)
        for daemon in self.daemons:
            info = self.e.Daemon(daemon.host).inspect(self.image_id) or {}
            if info.get("Id") != self.image_id:
                errors.append("%s does not hold %s after the pull" % (daemon.name, self.image_id))
        self.failures += ["%s/%s: %s" % (store.kind, variant, e) for e in errors]
        self.samples[store.kind][variant].append((seconds, read))
        failed = "  FAILED: %s" % "; ".join(errors) if errors else ""
        log("%-4s %-16s %6.2fs  %8.1f MB read%s" % (store.kind, variant, seconds, read / 1e6, failed))

    # -- report ---------------------------------------------------------------------------------
    def report(self, stores):
        def med(values):
            return statistics.median(values)

        def cell(values, base, unit):
            text = ("%.2f s" if unit == "s" else "%.1f MB") % (med(values) / (1 if unit == "s" else 1e6))
            if len(values) > 1:
                lo, hi = min(values), max(values)
                text += (" (%.2f-%.2f)" % (lo, hi)) if unit == "s" else (" (%.1f-%.1f)" % (lo / 1e6, hi / 1e6))
            if base:
                text += ", %.2fx" % (med(values) / base)
            return text
        print("\n| %d MB image, %d daemons, %d repeat(s) | %s |" % (
            self.image_size / 1e6, DAEMONS, self.args.repeat, " | ".join(
                "%s time | %s bytes read" % (s.kind, s.kind) for s in stores)))
        print("|---|%s" % ("---|---|" * len(stores)))
        for variant in VARIANTS:
            cells = []
            for store in stores:
                got = self.samples[store.kind][variant]
                reg = self.samples[store.kind]["registry"]
                if not got:
                    cells += ["-", "-"]
                    continue
                base_t = med([t for t, _b in reg]) if variant != "registry" and reg else None
                base_b = med([b for _t, b in reg]) if variant != "registry" and reg else None
                cells += [cell([t for t, _b in got], base_t, "s"), cell([b for _t, b in got], base_b, "B")]
            print("| %s | %s |" % (variant, " | ".join(cells)))
        for store in stores:
            shaping = ""
            if store.kind == "s3":
                shaping = "; S3 through the proxy, %s" % self.args.s3
                if self.args.s3 == "shaped":
                    shaping += " (%g ms a request, %g MB/s a connection)" % (self.args.s3_delay_ms, self.args.s3_mbps)
            print("%s: the image is stored as %.1f MB in the registry (gzip), %.1f MB on the dogestry remote (lz4)%s"
                  % (store.kind, store.stored["registry"] / 1e6, store.stored["dogestry"] / 1e6, shaping))
        print("(ratios: to the registry of the same store and run; medians (min-max) of %d repeats)" % self.args.repeat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stores", default="dir,s3", help="dir, s3 or dir,s3 (default)")
    parser.add_argument("--s3", choices=["raw", "shaped"], default="shaped")
    parser.add_argument("--s3-delay-ms", type=float, default=30.0)
    parser.add_argument("--s3-mbps", type=float, default=60.0, help="MB/s per connection, each way")
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
                        help="the daemon that builds and pushes the image")
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    if not kinds or set(kinds) - {"dir", "s3"}:
        parser.error("--stores takes dir, s3 or dir,s3")
    if os.geteuid() != 0:
        sys.exit("fanout_bench.py starts Docker daemons and bridges: run it as root")
    if not os.path.exists(VENV_DOGESTRY):
        sys.exit("%s is missing: run bash scripts/setup.sh" % VENV_DOGESTRY)
    os.environ["DOCKER_HOST"] = args.docker_host      # the docker CLI calls (build, tag, push) go there
    tmp = tempfile.mkdtemp(prefix="dogestry-fanbench-", dir=args.tmpdir)
    root = "/tmp/dogestry-fanbench-%d" % os.getpid()   # short: containerd's socket paths live below it
    os.makedirs(os.path.join(tmp, "shim"))
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(tmp, "shim", "dogestry"))
    bench = FanoutBench(args, Engine(tmp), tmp, root)
    ok = False
    try:
        stores = []
        if "s3" in kinds:
            bench.moto = Moto(tmp)          # also sets dummy AWS_* credentials for every client
            url = bench.moto.url
            bench.proxy = FaultProxy(url, faults={}, delay=args.s3_delay_ms / 1000.0 if args.s3 == "shaped" else 0,
                                     rate=args.s3_mbps * 1e6 if args.s3 == "shaped" else None)
        log("building the %d MB image, starting %d daemons" % (args.size_mb, DAEMONS))
        bench.build()
        bench.start_daemons(DAEMONS)
        for kind in kinds:
            store = Store(kind, tmp, bench.proxy.url if kind == "s3" else None)
            log("pushing into the %s stores (untimed)" % kind)
            bench.push(store)
            stores.append(store)
        for i in range(args.repeat):
            log("repeat %d/%d" % (i + 1, args.repeat))
            order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
            for store in stores:
                for variant in order:
                    bench.measure(store, variant)
        bench.report(stores)
        ok = not bench.failures
        for failure in bench.failures:
            print("FAILED: %s" % failure)
    finally:
        bench.tidy()
        if bench.proxy:
            bench.proxy.stop()
        if bench.moto:
            bench.moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nmachine: %d cores, load %.1f at the end; dockerd %s; %s" % (
        os.cpu_count(), os.getloadavg()[0], run(["dockerd", "--version"]).stdout.decode().strip(),
        time.strftime("%Y-%m-%d")))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
