# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Benchmark of the dogestry engine against the `docker save` + `docker load` floor.

Builds a synthetic multi-layer image on the local dockerd (FROM scratch + Debian's static
busybox, --network none, no registry needed), then times, in one run and --repeat times each
(median reported):

  cold push          into an empty remote
  no-op push         same image and tag again (must be a no-op)
  cold pull          into a daemon that lacks the image and every one of its layers
  no-op pull         same image again (must be a no-op)
  one-layer push     v2 = v1 with only its top layer changed (informative)
  one-layer pull     v2 pulled while v1 is present: only the changed layer may move
  floor              `docker save -o FILE` (save half) + `docker load -i FILE` (load half)

Ratios: pushes against the save half, pulls against the load half, both also against the
whole floor (save + load). Targets (issue 10, tighter than issue 3's): cold pull <= 1.2x the load
half, no-op push and no-op pull < 0.1 s, the one-layer pull moves only that layer's bytes.

Usage: python3 benchmarks/bench.py [--size-mb 300] [--repeat 3] [--remote local|s3|all]
                                   [--compression lz4|none|both] [--jobs 4] [--profile DIR]
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSYBOX = "/bin/busybox"
MiB = 1 << 20


def log(msg):
    print("[%7.1fs] %s" % (time.perf_counter() - T0, msg), file=sys.stderr, flush=True)


T0 = time.perf_counter()
LOAD_AT_START = os.getloadavg()[0]


# ---- the engine, imported through a private ansible_collections symlink tree ---------------------

class Engine:
    def __init__(self, tmp):
        root = os.path.join(tmp, "collections")
        link = os.path.join(root, "ansible_collections", "dogestry", "dogestry")
        os.makedirs(os.path.dirname(link))
        os.symlink(REPO, link)
        sys.path.insert(0, root)
        base = "ansible_collections.dogestry.dogestry.plugins.module_utils."
        import importlib
        push, pull = importlib.import_module(base + "_ops.push"), importlib.import_module(base + "_ops.pull")
        self.plan_push, self.execute_push = push.plan_push, push.execute_push
        self.plan_pull, self.execute_pull = pull.plan_pull, pull.execute_pull
        self.remote_from_url = importlib.import_module(base + "_storage.factory").remote_from_url
        self.Repository = importlib.import_module(base + "_storage.repository").Repository
        self.Daemon = importlib.import_module(base + "_docker.daemon").Daemon
        self.chain_ids = importlib.import_module(base + "_format.manifest").chain_ids
        self.base = base
        self.s3_error = None
        try:
            importlib.import_module(base + "_storage.s3")
        except Exception as exc:  # noqa: BLE001 - reported, S3 column skipped
            self.s3_error = "%s: %s" % (type(exc).__name__, exc)


# ---- synthetic image ----------------------------------------------------------------------------

WORDS = ("error warning info debug request response user session token cache layer image "
         "docker registry remote push pull manifest config digest sha256 compress stream "
         "daemon container network volume mount kernel cgroup namespace process thread "
         "socket connect timeout retry backoff upload download verify checksum bucket").split()


def text_block(rng, size):
    """Log-like lines: compressible (lz4 ~2-3x), not trivially so."""
    out, n, line_no = [], 0, 0
    while n < size:
        line_no += 1
        line = "2024-01-%02d %02d:%02d:%02d.%03d %s pid=%d %s\n" % (
            1 + line_no % 28, line_no % 24, line_no % 60, (line_no * 7) % 60, line_no % 1000,
            rng.choice(("INFO", "WARN", "DEBUG", "ERROR")), rng.randrange(1, 32768),
            " ".join(rng.choices(WORDS, k=rng.randrange(4, 14))))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def write_text(path, size, rng):
    block = text_block(rng, min(size, 8 * MiB))
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            part = block[:left]
            fh.write(part)
            left -= len(part)


def write_random(path, size):
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n


def write_sparse(path, size):
    """Mostly zeros with a random 64 KiB block in every MiB."""
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, MiB)
            chunk = os.urandom(min(n, 64 * 1024))
            fh.write(chunk + b"\0" * (n - len(chunk)))
            left -= n


def write_mixed(path, size, rng):
    text = text_block(rng, MiB)
    with open(path, "wb") as fh:
        left, i = size, 0
        while left > 0:
            n = min(left, MiB)
            fh.write(os.urandom(n) if i % 2 else text[:n])
            left -= n
            i += 1


def split_files(directory, total, writer, file_size=16 * MiB):
    os.makedirs(directory)
    i = 0
    while total > 0:
        n = min(total, file_size)
        writer(os.path.join(directory, "part-%03d.bin" % i), n)
        total -= n
        i += 1


DOCKERFILE = """FROM scratch
COPY base/ /
COPY text/ /data/text/
COPY random/ /data/random/
COPY sparse/ /data/sparse/
COPY mixed/ /data/mixed/
COPY {app}/ /app/
CMD ["/bin/busybox", "sh", "-c", "ls -l /app"]
"""


def make_context(ctx, size_mb, nonce):
    """Six layers: base (busybox + nonce), text 35%, random 25%, sparse 20%, mixed 10%, app 10%."""
    rng = random.Random(nonce)
    size = size_mb * MiB
    os.makedirs(os.path.join(ctx, "base", "bin"))
    os.makedirs(os.path.join(ctx, "base", "etc"))
    shutil.copy2(BUSYBOX, os.path.join(ctx, "base", "bin", "busybox"))
    # A unique first layer: no other image on the daemon can share any of this image's layers.
    with open(os.path.join(ctx, "base", "etc", "dogestry-bench-nonce"), "w") as fh:
        fh.write(nonce + "\n")
    split_files(os.path.join(ctx, "text"), int(size * 0.35), lambda p, n: write_text(p, n, rng))
    split_files(os.path.join(ctx, "random"), int(size * 0.25), write_random)
    split_files(os.path.join(ctx, "sparse"), int(size * 0.20), write_sparse)
    split_files(os.path.join(ctx, "mixed"), int(size * 0.10), lambda p, n: write_mixed(p, n, rng))
    for app in ("app-v1", "app-v2"):
        split_files(os.path.join(ctx, app), int(size * 0.10), lambda p, n: write_mixed(p, n, rng))
    for app in ("app-v1", "app-v2"):
        with open(os.path.join(ctx, "Dockerfile." + app), "w") as fh:
            fh.write(DOCKERFILE.format(app=app))


def peak_rss(pid):
    """A process's peak RSS so far (VmHWM), in bytes."""
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def docker_build(ctx, dockerfile, tag):
    env = dict(os.environ, DOCKER_BUILDKIT="0")   # classic builder: no BuildKit cache pinning layers
    try:
        run(["docker", "build", "-q", "--network", "none", "--rm", "--force-rm",
             "-f", os.path.join(ctx, dockerfile), "-t", tag, ctx], env=env)
    except subprocess.CalledProcessError as exc:
        sys.exit("docker build failed: %s" % exc.stderr.decode(errors="replace").strip())


# ---- S3 (moto) ----------------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Moto:
    def __init__(self, tmp):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        for var in ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(var, None)
        self.log = open(os.path.join(tmp, "moto.log"), "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(self.url + "/moto-api/", timeout=2).status == 200:
                    break
            except Exception:  # noqa: BLE001 - still starting
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto_server did not start (see %s)" % self.log.name)
                time.sleep(0.2)
        import boto3
        self.s3 = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
        self.s3.create_bucket(Bucket="bench")

    def empty(self, prefix):
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket="bench", Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket="bench", Delete={"Objects": keys})

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class LocalTarget:
    name = "local"

    def __init__(self, tmp):
        self.tmp = tmp

    def fresh(self, label):
        path = os.path.join(self.tmp, "remote-" + label)
        shutil.rmtree(path, ignore_errors=True)
        return path, {}

    def cleanup(self, label):
        shutil.rmtree(os.path.join(self.tmp, "remote-" + label), ignore_errors=True)


class S3Target:
    name = "s3"

    def __init__(self, moto):
        self.moto = moto

    def fresh(self, label):
        self.moto.empty("bench-%s/" % label)
        return "s3://bench/bench-%s/" % label, {"endpoint_url": self.moto.url, "region": "us-east-1"}

    def cleanup(self, label):
        self.moto.empty("bench-%s/" % label)


# ---- measurement --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, engine, tmp):
        self.args, self.e, self.tmp = args, engine, tmp
        self.host = args.docker_host
        self.daemon = engine.Daemon(self.host)
        self.store = "containerd" if self.daemon.containerd_store else "classic"
        self.samples = defaultdict(lambda: defaultdict(list))   # column -> row -> [seconds]
        self.info = defaultdict(dict)                            # column -> facts
        self.checks = defaultdict(list)                          # column -> [(name, ok, detail)]
        self.profiles = {}

    # -- daemon helpers --
    def image_id(self, ref):
        info = self.daemon.inspect(ref)
        return info["Id"] if info else None

    def layers_of(self, ref):
        info = self.daemon.inspect(ref)
        return [d.split(":", 1)[1] for d in info["RootFS"]["Layers"]]

    def remove(self, image_id):
        if image_id and self.daemon.inspect(image_id):
            self.daemon.api.remove_image(image_id, force=True)
        if self.store == "containerd":
            # The containerd store keeps an untagged ("dangling") record of a force-removed image.
            self.daemon.api.prune_images(filters={"dangling": True})

    def is_image(self, ref, layers, image_id):
        """The daemon holds that image under `ref`: by ID on the classic store; on the containerd
        store a loaded image's ID is the digest of dogestry's OCI manifest, so compare its layers."""
        info = self.daemon.inspect(ref)
        if info is None:
            return False
        if self.store == "containerd":
            return [d.split(":", 1)[1] for d in info["RootFS"]["Layers"]] == layers
        return info["Id"] == image_id

    def assert_absent(self, diff_ids, what):
        """The daemon has none of these layer stacks (so `docker load` cannot skip any)."""
        present = self.daemon.present_chain_ids()
        shared = [c for c in self.e.chain_ids(diff_ids) if c in present]
        if shared:
            raise RuntimeError("%s: the daemon still holds %d of its %d layer stacks (another image shares "
                               "them); the cold measurement would not be cold" % (what, len(shared), len(diff_ids)))

    def ensure_v1(self):
        if not self.image_id(self.v1_id):
            self.docker_load(self.v1_tar)
        self.daemon.tag(self.v1_id, self.name, "v1")

    def docker_load(self, path):
        run(["docker", "load", "-q", "-i", path])

    def timed(self, fn, profile_as=None):
        prof = cProfile.Profile() if (profile_as and self.args.profile) else None
        start = time.perf_counter()
        if prof:
            prof.enable()
        try:
            result = fn()
        finally:
            if prof:
                prof.disable()
        elapsed = time.perf_counter() - start
        if prof and profile_as not in self.profiles:
            path = os.path.join(self.args.profile, profile_as.replace(" ", "_").replace("/", "_") + ".prof")
            prof.dump_stats(path)
            self.profiles[profile_as] = path
        return elapsed, result

    # -- engine calls, each as a user run would do them: fresh clients, plan, execute --
    def push(self, url, opts, ref, encoding):
        d = self.e.Daemon(self.host)
        repo = self.e.Repository(self.e.remote_from_url(url, **opts))
        return self.e.execute_push(d, repo, self.e.plan_push(d, repo, ref), encoding, self.args.jobs)

    def pull(self, url, opts, ref, phases=None):
        """`phases` (a dict) gets the seconds at which the plan was ready and the last layer was streamed."""
        start = time.perf_counter()
        d = self.e.Daemon(self.host)
        repo = self.e.Repository(self.e.remote_from_url(url, **opts))
        plan = self.e.plan_pull(d, repo, ref)
        if phases is not None:
            phases["plan"] = time.perf_counter() - start

        def progress(layer):
            if phases is not None:
                phases["streamed"] = time.perf_counter() - start
        return self.e.execute_pull(d, repo, plan, progress)

    def manifest(self, url, opts, ref):
        repo = self.e.Repository(self.e.remote_from_url(url, **opts))
        return repo.read_manifest(repo.resolve(ref)[1])

    # -- build --
    def build(self):
        nonce = uuid.uuid4().hex[:12]
        self.name = "dogestry-bench-%s" % nonce
        ctx = os.path.join(self.tmp, "context")
        log("writing a %d MB build context" % self.args.size_mb)
        make_context(ctx, self.args.size_mb, nonce)
        log("docker build %s:v1 and :v2 (--network none, classic builder)" % self.name)
        docker_build(ctx, "Dockerfile.app-v1", self.name + ":v1")
        docker_build(ctx, "Dockerfile.app-v2", self.name + ":v2")
        shutil.rmtree(ctx)
        self.v1_id, self.v2_id = self.image_id(self.name + ":v1"), self.image_id(self.name + ":v2")
        self.v1_layers, self.v2_layers = self.layers_of(self.v1_id), self.layers_of(self.v2_id)
        if self.v1_layers[:-1] != self.v2_layers[:-1] or self.v1_layers[-1] == self.v2_layers[-1]:
            raise RuntimeError("v2 does not differ from v1 in exactly its top layer")
        # Keep both as archives (untimed helpers), then drop v2 and the build's intermediate images.
        self.v1_tar = os.path.join(self.tmp, "v1.tar")
        self.v2_tar = os.path.join(self.tmp, "v2.tar")
        run(["docker", "save", "-o", self.v1_tar, self.name + ":v1"])
        run(["docker", "save", "-o", self.v2_tar, self.name + ":v2"])
        self.remove(self.v2_id)
        self.remove(self.v1_id)
        self.assert_absent(self.v1_layers, "v1")
        self.docker_load(self.v1_tar)
        info = self.daemon.inspect(self.v1_id)
        self.image_size = info["Size"]
        self.v1_ref, self.v2_ref = self.name + ":v1", self.name + ":v2"
        log("built %s: %d layers, %.0f MB; top layer %s" % (
            self.v1_ref, len(self.v1_layers), self.image_size / 1e6, self.v1_layers[-1][:12]))

    # -- the floor: docker save to a file, docker load from it --
    def floor_once(self, r):
        self.ensure_v1()
        path = os.path.join(self.tmp, "floor.tar")
        t_save = self.timed(lambda: run(["docker", "save", "-o", path, self.v1_ref]))[0]
        self.info["floor"]["archive bytes"] = os.path.getsize(path)
        self.remove(self.v1_id)
        self.assert_absent(self.v1_layers, "v1 (floor)")
        t_load = self.timed(lambda: run(["docker", "load", "-q", "-i", path]))[0]
        os.unlink(path)
        s = self.samples["floor"]
        s["save half"].append(t_save)
        s["load half"].append(t_load)
        s["save+load"].append(t_save + t_load)
        # What a Python reader of the same stream pays with no processing at all (informative).
        t_raw = self.timed(lambda: sum(len(c) for c in self.daemon.save(self.v1_ref)))[0]
        s["SDK save stream, discarded"].append(t_raw)
        log("floor #%d: save %.2fs load %.2fs (SDK save stream read and discarded %.2fs)" % (r + 1, t_save, t_load, t_raw))

    # -- one configuration (remote x compression), one repeat --
    def suite_once(self, target, encoding, r):
        col = "%s/%s/%s" % (target.name, encoding, self.store)
        label = "%s-%s-%d" % (target.name, encoding, r)
        url, opts = target.fresh(label)
        s, info = self.samples[col], self.info[col]
        prof = "%s %s" % (col, "%s")
        self.ensure_v1()
        try:
            t, res = self.timed(lambda: self.push(url, opts, self.v1_ref, encoding), prof % "cold push")
            self.expect(col, "cold push uploads every layer", res["changed"] and len(res["layers_transferred"]) == len(self.v1_layers), res)
            s["cold push"].append(t)
            info["cold push bytes"] = res.get("bytes_transferred")

            t, res = self.timed(lambda: self.push(url, opts, self.v1_ref, encoding), prof % "no-op push")
            self.expect(col, "no-op push changes nothing", not res["changed"], res)
            s["no-op push"].append(t)

            self.remove(self.v1_id)
            self.assert_absent(self.v1_layers, "v1 (cold pull)")
            phases = {}
            t, res = self.timed(lambda: self.pull(url, opts, self.v1_ref, phases), prof % "cold pull")
            s["  plan ready at"].append(phases["plan"])
            s["  last layer sent"].append(phases["streamed"])
            self.expect(col, "cold pull downloads every layer",
                        res["changed"] and len(res["layers_transferred"]) == len(self.v1_layers)
                        and self.is_image(self.v1_ref, self.v1_layers, self.v1_id), res)
            s["cold pull"].append(t)
            info["cold pull bytes"] = res.get("bytes_transferred")

            t, res = self.timed(lambda: self.pull(url, opts, self.v1_ref), prof % "no-op pull")
            self.expect(col, "no-op pull changes nothing", not res["changed"], res)
            s["no-op pull"].append(t)

            # v2: only the top layer differs from v1.
            self.docker_load(self.v2_tar)
            t, res = self.timed(lambda: self.push(url, opts, self.v2_ref, encoding), prof % "one-layer push")
            top = "sha256:" + self.v2_layers[-1]
            self.expect(col, "one-layer push uploads only the top layer", res["layers_transferred"] == [top], res)
            s["one-layer push"].append(t)
            info["one-layer push bytes"] = res.get("bytes_transferred")

            self.remove(self.v2_id)
            present = self.daemon.present_chain_ids()
            chains = self.e.chain_ids(self.v2_layers)
            if chains[-1] in present or not all(c in present for c in chains[:-1]):
                raise RuntimeError("daemon state before the one-layer pull is not v1-without-v2")
            t, res = self.timed(lambda: self.pull(url, opts, self.v2_ref), prof % "one-layer pull")
            entry = self.manifest(url, opts, self.v2_ref).layers[-1]
            ok = (res["layers_transferred"] == [top] and res["bytes_transferred"] == entry.stored_size
                  and len(res["layers_skipped"]) == len(self.v2_layers) - 1
                  and self.is_image(self.v2_ref, self.v2_layers, self.v2_id))
            self.expect(col, "one-layer pull moves only that layer", ok, res)
            s["one-layer pull"].append(t)
            info["one-layer pull bytes"] = res["bytes_transferred"]
            info["one-layer pull layers"] = "%d of %d" % (len(res["layers_transferred"]), len(self.v2_layers))
            info["top layer size"] = entry.size
            info["top layer stored"] = entry.stored_size
            self.remove(self.v2_id)
            if self.store == "containerd":     # what the pulls loaded are other images there (other IDs)
                self.remove(self.v2_ref)
                self.remove(self.v1_ref)
            log("%s #%d: %s" % (col, r + 1, ", ".join("%s %.2fs" % (k, v[-1]) for k, v in s.items())))
        finally:
            target.cleanup(label)

    def expect(self, col, name, ok, result):
        self.checks[col].append((name, bool(ok)))
        if not ok:
            log("CHECK FAILED (%s): %s: %s" % (col, name, json.dumps(result, default=str)[:600]))


# ---- report -------------------------------------------------------------------------------------

def med(values):
    return statistics.median(values) if values else float("nan")


def fmt_s(values):
    if not values:
        return "-"
    return "%.2f" % med(values)


def spread(values):
    return "%.2f-%.2f" % (min(values), max(values)) if values else "-"


def mb(n):
    return "-" if n is None else "%.1f MB" % (n / 1e6)


def report(bench, columns, args):
    fl = bench.samples["floor"]
    save, load, total = med(fl["save half"]), med(fl["load half"]), med(fl["save+load"])
    out = []
    w = out.append
    w("")
    w("Floor (docker CLI, %d repeats, median [min-max]): save -o FILE %.2fs [%s]   load -i FILE %.2fs [%s]   "
      "save+load %.2fs   (archive %s)" % (args.repeat, save, spread(fl["save half"]), load, spread(fl["load half"]),
                                          total, mb(bench.info["floor"].get("archive bytes"))))
    raw = fl["SDK save stream, discarded"]
    w("Informative: the same `docker save` stream read through the Docker SDK and discarded (no hashing, no "
      "compression, no disk): %.2fs [%s]" % (med(raw), spread(raw)))
    w("")
    rows = [("cold push", "save"), ("no-op push", "save"), ("one-layer push", "save"),
            ("cold pull", "load"), ("  plan ready at", "load"), ("  last layer sent", "load"),
            ("no-op pull", "load"), ("one-layer pull", "load")]
    cell = "%5s %-11s %6s %6s"
    width = len(cell % ("", "", "", ""))
    w("%-17s" % "seconds" + "".join(" | %s" % col.center(width) for col in columns))
    w("%-17s" % "" + "".join(" | " + cell % ("med", "[min-max]", "x half", "x floor") for _col in columns))
    w("-" * (17 + (width + 3) * len(columns)))
    for row, half in rows:
        line = "%-17s" % row
        denom = save if half == "save" else load
        for col in columns:
            v = bench.samples[col][row]
            line += " | " + (cell % ("%.2f" % med(v), "[%s]" % spread(v), "%.2fx" % (med(v) / denom),
                                     "%.2fx" % (med(v) / total)) if v else "-".center(width))
        w(line)
    w("(x half: pushes / save half, pulls / load half; x floor: / (save + load). 'plan ready at' and 'last layer\n"
      " sent' are seconds into the cold pull: after the last one, what remains is dockerd registering the layers)")
    w("")
    w("Transfers:")
    for col in columns:
        i = bench.info[col]
        w("  %-10s cold push %s, cold pull %s; one-layer push %s; one-layer pull %s in %s layers "
          "(top layer: %s, stored %s)" % (
              col, mb(i.get("cold push bytes")), mb(i.get("cold pull bytes")),
              mb(i.get("one-layer push bytes")), mb(i.get("one-layer pull bytes")),
              i.get("one-layer pull layers"), mb(i.get("top layer size")), mb(i.get("top layer stored"))))
    w("")
    w("Targets (issue 10):")
    verdicts = []
    for col in columns:
        s = bench.samples[col]
        cp = med(s["cold pull"])
        checks = bench.checks[col]
        one = [ok for name, ok in checks if name == "one-layer pull moves only that layer"]
        targets = [
            ("cold pull <= 1.2x load half", cp <= 1.2 * load, "%.2fs = %.2fx of %.2fs" % (cp, cp / load, load)),
            ("no-op push < 0.1 s", med(s["no-op push"]) < 0.1, "%.3fs" % med(s["no-op push"])),
            ("no-op pull < 0.1 s", med(s["no-op pull"]) < 0.1, "%.3fs" % med(s["no-op pull"])),
            ("one-layer pull moves only that layer", bool(one) and all(one),
             "%s, %s of a %s layer, in every repeat" % (bench.info[col].get("one-layer pull layers"),
                                                        mb(bench.info[col].get("one-layer pull bytes")),
                                                        mb(bench.info[col].get("top layer stored")))),
        ]
        for name, ok, detail in targets:
            w("  %-10s %-40s %s  (%s)" % (col, name, "PASS" if ok else "FAIL", detail))
            verdicts.append(ok)
        bad = [name for name, ok in checks if not ok]
        if bad:
            w("  %-10s correctness checks FAILED: %s" % (col, "; ".join(sorted(set(bad)))))
            verdicts.append(False)
    if bench.profiles:
        w("")
        w("cProfile dumps (python -m pstats FILE): " + ", ".join("%s: %s" % kv for kv in bench.profiles.items()))
    return "\n".join(out), all(verdicts)


def environment(bench, args):
    v = bench.daemon.api.version()
    i = bench.daemon.api.info()
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = "%.1f GB" % (int(fh.readline().split()[1]) / 1e6)
    try:
        import lz4
        lz4v = lz4.__version__
    except ImportError:
        lz4v = "absent"
    try:
        client = run(["docker", "version", "--format", "{{.Client.Version}}"]).stdout.decode().strip()
    except Exception:  # noqa: BLE001
        client = "?"
    load = " / ".join("%.1f" % x for x in (LOAD_AT_START, os.getloadavg()[0]))
    return ("Environment: dockerd %s (API %s, %s, storage %s), docker CLI %s, %s cores (%s), %s RAM, kernel %s,\n"
            "             Python %s, docker SDK %s, lz4 %s; temp dir %s; jobs %d; image %d MB in %d layers;\n"
            "             1-min load average at start / end: %s (other work on the machine adds noise)"
            % (v.get("Version"), v.get("ApiVersion"), i.get("OperatingSystem"), i.get("Driver"), client,
               os.cpu_count(), cpu, mem, platform.release(), platform.python_version(),
               __import__("docker").__version__, lz4v, bench.tmp, args.jobs,
               bench.image_size / 1e6, len(bench.v1_layers), load))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=300, help="approximate image size (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per measurement; the median is reported (default 3)")
    parser.add_argument("--remote", choices=("local", "s3", "all"), default="local",
                        help="local: a temp directory (default); s3: moto_server on loopback; all: both")
    parser.add_argument("--compression", choices=("lz4", "none", "both"), default="lz4",
                        help="layer encoding for pushes (default lz4; both: one column each)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel transfers (default 4)")
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
                        help="the daemon to measure; its image store (classic or containerd) names the columns")
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile dump of the first run of each engine operation")
    parser.add_argument("--tmpdir", help="where remotes, archives and the build context go (default: system temp)")
    args = parser.parse_args()
    os.environ["DOCKER_HOST"] = args.docker_host     # the docker CLI calls (build, save, load) go there too
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    if not os.path.exists(BUSYBOX):
        sys.exit("%s is missing: apt-get install busybox-static" % BUSYBOX)

    tmp = tempfile.mkdtemp(prefix="dogestry-bench-", dir=args.tmpdir)
    moto = None
    bench = None
    try:
        engine = Engine(tmp)
        targets = []
        if args.remote in ("local", "all"):
            targets.append(LocalTarget(tmp))
        if args.remote in ("s3", "all"):
            if engine.s3_error:
                msg = "S3 remote not available in this checkout (%s)" % engine.s3_error
                if args.remote == "s3":
                    sys.exit(msg)
                log(msg + ": S3 column skipped")
            else:
                moto = Moto(tmp)
                targets.append(S3Target(moto))
        encodings = ["lz4", "none"] if args.compression == "both" else [args.compression]
        bench = Bench(args, engine, tmp)
        bench.build()
        columns = ["%s/%s/%s" % (t.name, enc, bench.store) for t in targets for enc in encodings]
        for r in range(args.repeat):
            bench.floor_once(r)
            for target in targets:
                for enc in encodings:
                    bench.suite_once(target, enc, r)
        print(environment(bench, args))
        text, ok = report(bench, columns, args)
        print(text)
        print("\nTotal bench time %.0fs" % (time.perf_counter() - T0))
        return 0 if ok else 1
    finally:
        if bench is not None and getattr(bench, "name", None):
            for ref in (bench.name + ":v2", bench.name + ":v1", getattr(bench, "v2_id", None), getattr(bench, "v1_id", None)):
                with contextlib.suppress(Exception):
                    if ref:
                        bench.remove(bench.image_id(ref))
        if moto:
            moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
