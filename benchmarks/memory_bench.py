# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Peak memory (RSS) of a push, a pull and the accelerator with one big layer (default 2 GB).

Each runs as its own process, so its peak RSS (VmHWM, polled from /proc while it runs) is its
own: `dogestry push` and `dogestry pull` (the CLI, the engine the modules run) against a
directory remote, and `dogestry serve` while Docker pulls the image through it (cold, from a
daemon without the layer) and while Docker pushes it through (into an empty remote). The
layer is random data, so compression cannot shrink the work. Target (issue 10): every peak under
200 MB. Exit status 0 only if every peak is under --limit-mb. MB/s is the layer's size over the
command's (or Docker's) time, for comparing runs on one machine, not an S3 speed.

With --s3 raw|shaped the same four run against an s3:// remote too: moto_server on loopback,
`shaped` behind tests/support/s3_faults.py's proxy (no faults; a delay per request and a
bandwidth cap per connection, as registry_bench.py), the accelerator with a --cache-dir as the
role deploys it. moto reads the whole object for every ranged GET, so keep --layer-mb at 512 or
so with --s3 (peaks do not depend on the layer's size once it spans a few parts); --s3-only skips
the directory rows. --layers N splits the data into N layers: Docker then pulls three at once
through the accelerator (three ranged readers), and the engine reads ahead into the next one.

    python3 benchmarks/memory_bench.py [--layer-mb 2048] [--limit-mb 200] [--docker-host URL]
                                       [--s3 raw|shaped [--s3-only]] [--layers 1] [--jobs 4] [--baseline DIR]

--baseline DIR runs every row with another checkout's code as well (right before or after this
one's, alternating, so both see the same machine load): before/after numbers of a change in one run.

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
from bench import REPO, Moto, free_port, log, peak_rss  # noqa: E402

DOGESTRY = os.path.join(REPO, ".venv", "bin", "dogestry")
MiB = 1 << 20


def thread_count(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class Peak:
    """Poll a process's VmHWM (its peak RSS so far) and thread count until it exits."""

    def __init__(self, proc):
        self.proc, self.peak, self.threads = proc, 0, 0
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while self.proc.poll() is None:
            try:
                self.peak = max(self.peak, peak_rss(self.proc.pid))
                self.threads = max(self.threads, thread_count(self.proc.pid))
            except (OSError, ValueError):
                break
            time.sleep(0.05)

    def wait(self):
        self.proc.wait()
        self.thread.join()
        return self.peak, self.threads


def run_measured(cmd, env):
    """Run cmd to completion; (seconds, peak RSS bytes, most threads) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = Peak(proc)
    _out, err = proc.communicate()
    rss, threads = peak.wait()
    if proc.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), err.decode(errors="replace").strip()))
    return time.perf_counter() - start, rss, threads


def docker(host, *args):
    subprocess.run(["docker", "-H", host] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--layer-mb", type=int, default=2048)
    parser.add_argument("--limit-mb", type=int, default=200)
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1, help="split --layer-mb into this many layers (Docker "
                        "moves three at once through the accelerator)")
    parser.add_argument("--s3", choices=["raw", "shaped"], help="also against an s3:// remote (moto_server)")
    parser.add_argument("--s3-only", action="store_true", help="with --s3: skip the directory remote")
    parser.add_argument("--s3-delay-ms", type=float, default=30.0)
    parser.add_argument("--s3-mbps", type=float, default=60.0, help="MB/s per connection, each way")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout (e.g. `git worktree add DIR HEAD~1`): "
                        "every row runs with its plugins/module_utils too, right before or after this one's")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="dogestry-membench-", dir=args.tmpdir)
    trees = [("", REPO)] + ([(" [baseline]", os.path.abspath(args.baseline))] if args.baseline else [])
    envs = {}
    for label, tree in trees:
        if not os.path.isdir(os.path.join(tree, "plugins", "module_utils")):
            sys.exit("%s has no plugins/module_utils" % tree)
        shim = os.path.join(tmp, "shim%d" % len(envs))
        os.makedirs(shim)
        os.symlink(os.path.join(tree, "plugins", "module_utils"), os.path.join(shim, "dogestry"))
        envs[label] = dict(os.environ, PYTHONPATH=shim)
    name = "dogestry-membench-%s" % uuid.uuid4().hex[:8]
    host = args.docker_host
    results = {}
    moto = proxy = None
    try:
        ctx = os.path.join(tmp, "ctx")
        os.makedirs(ctx)
        log("writing %d MB of random data for %d layer(s)" % (args.layer_mb, args.layers))
        lines = ["FROM scratch"]
        for layer in range(args.layers):
            with open(os.path.join(ctx, "big%d.bin" % layer), "wb") as fh:
                for _i in range(args.layer_mb // args.layers):
                    fh.write(os.urandom(MiB))
            lines.append("COPY big%d.bin /big%d.bin" % (layer, layer))
        with open(os.path.join(ctx, "Dockerfile"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        subprocess.run(["docker", "-H", host, "build", "-q", "--network", "none", "-t", name + ":1", ctx], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, DOCKER_BUILDKIT="0"))
        shutil.rmtree(ctx)
        stores = [] if args.s3 and args.s3_only else [("", lambda what: os.path.join(tmp, what), [])]
        if args.s3:
            moto = Moto(tmp)          # also sets dummy AWS_* credentials for every client
            for env in envs.values():
                env.update({k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
            url = moto.url
            if args.s3 == "shaped":
                sys.path.insert(0, os.path.join(REPO, "tests", "support"))
                from s3_faults import FaultProxy
                proxy = FaultProxy(moto.url, faults={}, delay=args.s3_delay_ms / 1000.0, rate=args.s3_mbps * 1e6)
                url = proxy.url
            stores.append((" (s3 %s)" % args.s3, lambda what: "s3://bench/%s/" % what, ["--endpoint-url", url]))
        jobs = ["--jobs", str(args.jobs)]

        def serve(store, extra, env):
            port = free_port()
            server = subprocess.Popen([DOGESTRY, "serve", store, "--listen", "127.0.0.1:%d" % port, "--spool-dir",
                                       tmp] + extra + jobs, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _i in range(100):
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/v2/" % port, timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.1)
            return server, Peak(server), "127.0.0.1:%d/%s" % (port, name)

        def through(store, extra, env, what, *docker_args):
            """Time `docker ARGS` against an accelerator over `store`; record the server's peak."""
            server, watch, ref = serve(store, extra, env)
            start = time.perf_counter()
            if docker_args[0] == "push":
                docker(host, "tag", name + ":1", ref + ":1")
            docker(host, *docker_args, ref + ":1")
            seconds = time.perf_counter() - start
            server.terminate()
            results[what] = (seconds,) + watch.wait()
            log("%s: %.1fs, peak RSS %.0f MB" % (what, seconds, results[what][1] / 1e6))
            return ref

        for suffix, where, extra in stores:
            # Row by row, each code tree in turn, the first one alternating: a run's later rows see a
            # busier moto and page cache, which must not always favour the same tree.
            remotes = {label: (where("remote%d" % i), where("pushed%d" % i)) for i, label in enumerate(envs)}
            caches = {label: ["--cache-dir", os.path.join(tmp, "cache%d" % i)] if extra else [] for i, label in enumerate(envs)}
            for number, row in enumerate(("dogestry push", "dogestry pull", "accelerator serving a docker pull",
                                          "accelerator taking a docker push")):
                for label in list(envs)[::-1 if number % 2 else 1]:
                    env, (remote, pushed), what = envs[label], remotes[label], row + suffix + label
                    if row.startswith("dogestry"):           # the image is there for a push, not for a pull
                        if row == "dogestry pull":
                            docker(host, "rmi", name + ":1")
                        results[what] = run_measured([DOGESTRY, row.split()[1], remote, name + ":1", "--docker-host",
                                                      host] + extra + jobs, env)
                        log("%s: %.1fs, peak RSS %.0f MB" % (what, results[what][0], results[what][1] / 1e6))
                    elif row == "accelerator serving a docker pull":
                        docker(host, "rmi", name + ":1")
                        ref = through(remote, extra + caches[label], env, what, "pull")
                        docker(host, "tag", ref + ":1", name + ":1")
                        docker(host, "rmi", ref + ":1")
                    else:
                        target = through(pushed, extra, env, what, "push")  # into an empty remote
                        docker(host, "rmi", target + ":1")
            for cache in caches.values():
                if cache:
                    shutil.rmtree(cache[1], ignore_errors=True)
    finally:
        subprocess.run(["docker", "-H", host, "rmi", "-f", name + ":1"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if proxy:
            proxy.stop()
        if moto:
            moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    size = "%d MB layer" % args.layer_mb if args.layers == 1 else "%d MB in %d layers" % (args.layer_mb, args.layers)
    print("\n| %s | seconds | MB/s | peak RSS | threads | limit %d MB |" % (size, args.limit_mb))
    print("|---|---|---|---|---|---|")
    ok = True
    for what in sorted(results, key=lambda w: (w.replace(" [baseline]", ""), " [baseline]" not in w)):
        seconds, peak, threads = results[what]
        passed = peak < args.limit_mb * 1e6 or "[baseline]" in what
        ok &= passed
        cells = (what, seconds, args.layer_mb * MiB / 1e6 / seconds, peak / 1e6, threads, "PASS" if passed else "FAIL")
        print("| %s | %.1f | %.0f | %.0f MB | %d | %s |" % cells)
    print("machine: %d cores, load %.1f; %s" % (os.cpu_count(), os.getloadavg()[0], time.strftime("%Y-%m-%d")))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
