# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Peak memory (RSS) of a push, a pull and the accelerator with one big layer (default 2 GB).

Each runs as its own process, so its peak RSS (VmHWM, polled from /proc while it runs) is its
own: `dogestry push` and `dogestry pull` (the CLI, the engine the modules run) against a
directory remote, and `dogestry serve` while Docker pulls the image through it (cold, from a
daemon without the layer) and while Docker pushes it through (into an empty remote). The
layer is random data, so compression cannot shrink the work. Target (issue 10): every peak under
200 MB. Exit status 0 only if every peak is under --limit-mb.

    python3 benchmarks/memory_bench.py [--layer-mb 2048] [--limit-mb 200] [--docker-host URL]

Needs about 4x the layer size free in the temp dir (the build context, the remote, Docker's copy).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import REPO, free_port, log, peak_rss  # noqa: E402

DOGESTRY = os.path.join(REPO, ".venv", "bin", "dogestry")
MiB = 1 << 20


class Peak:
    """Poll a process's VmHWM (its peak RSS so far) until it exits."""

    def __init__(self, proc):
        self.proc, self.peak = proc, 0
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while self.proc.poll() is None:
            try:
                self.peak = max(self.peak, peak_rss(self.proc.pid))
            except OSError:
                break
            time.sleep(0.05)

    def wait(self):
        self.proc.wait()
        self.thread.join()
        return self.peak


def run_measured(cmd, env):
    """Run cmd to completion; (seconds, peak RSS bytes) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = Peak(proc)
    _out, err = proc.communicate()
    peak.wait()
    if proc.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), err.decode(errors="replace").strip()))
    return time.perf_counter() - start, peak.peak


def docker(host, *args):
    subprocess.run(["docker", "-H", host] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--layer-mb", type=int, default=2048)
    parser.add_argument("--limit-mb", type=int, default=200)
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="dogestry-membench-", dir=args.tmpdir)
    shim = os.path.join(tmp, "shim")
    os.makedirs(shim)
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(shim, "dogestry"))
    env = dict(os.environ, PYTHONPATH=shim)
    name = "dogestry-membench-%s" % uuid.uuid4().hex[:8]
    host = args.docker_host
    results = {}
    try:
        ctx = os.path.join(tmp, "ctx")
        os.makedirs(ctx)
        log("writing a %d MB random layer" % args.layer_mb)
        with open(os.path.join(ctx, "big.bin"), "wb") as fh:
            for _i in range(args.layer_mb):
                fh.write(os.urandom(MiB))
        with open(os.path.join(ctx, "Dockerfile"), "w") as fh:
            fh.write("FROM scratch\nCOPY big.bin /big.bin\n")
        subprocess.run(["docker", "-H", host, "build", "-q", "--network", "none", "-t", name + ":1", ctx], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, DOCKER_BUILDKIT="0"))
        shutil.rmtree(ctx)
        remote = os.path.join(tmp, "remote")
        results["dogestry push"] = run_measured([DOGESTRY, "push", remote, name + ":1", "--docker-host", host], env)
        log("push: %.1fs, peak RSS %.0f MB" % (results["dogestry push"][0], results["dogestry push"][1] / 1e6))
        docker(host, "rmi", name + ":1")
        results["dogestry pull"] = run_measured([DOGESTRY, "pull", remote, name + ":1", "--docker-host", host], env)
        log("pull: %.1fs, peak RSS %.0f MB" % (results["dogestry pull"][0], results["dogestry pull"][1] / 1e6))
        docker(host, "rmi", name + ":1")

        def serve(store):
            port = free_port()
            server = subprocess.Popen([DOGESTRY, "serve", store, "--listen", "127.0.0.1:%d" % port, "--spool-dir",
                                       tmp], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _i in range(100):
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/v2/" % port, timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.1)
            return server, Peak(server), "127.0.0.1:%d/%s" % (port, name)

        def through(store, what, *docker_args):
            """Time `docker ARGS` against an accelerator over `store`; record the server's peak."""
            server, watch, ref = serve(store)
            start = time.perf_counter()
            if docker_args[0] == "push":
                docker(host, "tag", name + ":1", ref + ":1")
            docker(host, *docker_args, ref + ":1")
            seconds = time.perf_counter() - start
            server.terminate()
            results[what] = (seconds, watch.wait())
            log("%s: %.1fs" % (what, seconds))
            return ref

        ref = through(remote, "accelerator serving a docker pull", "pull")
        docker(host, "tag", ref + ":1", name + ":1")
        target = through(os.path.join(tmp, "pushed-remote"), "accelerator taking a docker push", "push")   # empty
        for tag in (ref + ":1", target + ":1"):
            docker(host, "rmi", tag)
    finally:
        subprocess.run(["docker", "-H", host, "rmi", "-f", name + ":1"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| %d MB layer | seconds | peak RSS | limit %d MB |" % (args.layer_mb, args.limit_mb))
    print("|---|---|---|---|")
    ok = True
    for what, (seconds, peak) in results.items():
        passed = peak < args.limit_mb * 1e6
        ok &= passed
        print("| %s | %.1f | %.0f MB | %s |" % (what, seconds, peak / 1e6, "PASS" if passed else "FAIL"))
    print("machine: %d cores, load %.1f; %s" % (os.cpu_count(), os.getloadavg()[0], time.strftime("%Y-%m-%d")))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
