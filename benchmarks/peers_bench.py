# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Fleet peers, measured: 8 hosts pull one image from S3 at once, each through its own accelerator.

Each host is an accelerator (`dogestry serve --cache-dir`) on a loopback address of its own, 127.0.0.N
(tests/support/peer_fleet.py: TLS and the fleet's secret between peers). Hosts 1-3 have a real Docker
daemon each (the system's dockerd, three more of them, as fanout_bench.py starts them) that `docker pull`s
through its host's accelerator; hosts 4-8 are driven by skopeo (`skopeo copy docker://... dir:`), a registry
client like any other. The image is bench.py's (six layers: text, random, sparse, mixed; --size-mb), pushed
untimed into a bucket on moto_server, which every accelerator reads through tests/support/s3_faults.py's
proxy, shaped as registry_bench.py's --s3 shaped (30 ms a request, 60 MB/s a connection each way), which
counts the bytes read.

Rounds (each --repeat times, the order rotating):
  alone          one host (a Docker daemon) pulls through its accelerator, no other host pulling: the time to beat
  no peers       the 8 hosts at once, each accelerator reading S3 on its own (today's fleet)
  peers          the 8 hosts at once, the accelerators each other's peers
  peers (2 killed) as peers, one peer SIGKILLed before the pulls, and the owner of the largest layer SIGKILLed
                 as soon as it serves a peer (the 6 others pull)
Once, for correctness (not timed: the release is warmed first with `dogestry warm`, as publish.yml does):
  peers (liar)   the owner of the largest layer serves corrupted bytes (its cache entries damaged after the warm)
Each round starts from empty caches and daemons that hold none of the image's layers (checked); every pull must
succeed with the image's own ID (Docker) or digests (skopeo checks them); the exit status is non-zero otherwise.
It prints: bytes read from S3 (x the image's stored size), the wall time until every host is done, each host's
pull time, and the accelerators' peak RSS (VmHWM); and the machine's load.

    python benchmarks/peers_bench.py [--size-mb 300] [--repeat 3] [--hosts 8] [--docker 3] [--setting answer_timeout=1.0]
"""

import argparse
import os
import re
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
from bench import REPO, Engine, Moto, log, run  # noqa: E402
from registry_bench import VENV_DOGESTRY  # noqa: E402
from fanout_bench import DaemonsBench  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "support"))
sys.path.insert(0, os.path.join(REPO, "plugins"))
from module_utils._peers.policy import ranked  # noqa: E402
from peer_fleet import Fleet  # noqa: E402
from s3_faults import FaultProxy  # noqa: E402

ROUNDS = ("alone", "no peers", "peers", "peers (2 killed)")


class PeersBench(DaemonsBench):
    label = "peerbench"

    def __init__(self, args, engine, tmp, root):
        super().__init__(args, engine, tmp, root)
        self.samples = defaultdict(list)        # round -> [dict]
        self.base = 100

    def push(self, moto, proxy):
        self.remote = "s3://bench/peers-%s/" % uuid.uuid4().hex[:6]
        run([VENV_DOGESTRY, "push", self.remote, self.image, "--docker-host", self.args.docker_host,
             "--endpoint-url", moto.url], env=self.env)
        prefix = self.remote.split("/", 3)[3]
        self.stored = 0
        self.objects = {}
        for page in moto.s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix):]
                if key.startswith(("blobs/", "manifests/")):
                    self.objects[key] = obj["Size"]
        self.stored = sum(self.objects.values())
        self.layers = sorted((k for k in self.objects if k.endswith(".lz4")), key=lambda k: -self.objects[k])
        self.proxy = proxy

    # -- one round ------------------------------------------------------------------------------
    def fleet(self, count, peers, label):
        self.base += 10         # fresh addresses (and empty caches) every round
        directory = os.path.join(self.tmp, "fleet-%s-%d" % (re.sub(r"\W+", "-", label), self.base))
        return Fleet(directory, self.remote, count, VENV_DOGESTRY, self.env, peers=peers, base=self.base,
                     remote_args=["--endpoint-url", self.proxy.url], settings=self.args.settings)

    def pull(self, host, index, out):
        """(seconds, error or None) of one client's pull through `host`'s accelerator."""
        ref = "%s/%s" % (host.registry, self.image)
        started = time.perf_counter()
        if index < len(self.daemons):
            cmd = ["docker", "-H", self.daemons[index].host, "pull", "-q", ref]
        else:
            target = os.path.join(self.tmp, "skopeo-%d" % index)
            shutil.rmtree(target, ignore_errors=True)
            cmd = ["skopeo", "copy", "-q", "--src-tls-verify=false", "--retry-times", "3", "docker://" + ref,
                   "dir:" + target]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=1800, check=False)
        seconds = time.perf_counter() - started
        error = None
        if proc.returncode:
            error = "host %d: %s: %s" % (index + 1, " ".join(cmd[:4]), proc.stderr.strip()[-400:])
        elif index < len(self.daemons):
            got = self.e.Daemon(self.daemons[index].host).inspect(self.image_id) or {}
            if got.get("Id") != self.image_id:
                error = "host %d: Docker does not hold %s after the pull" % (index + 1, self.image_id)
        else:
            shutil.rmtree(os.path.join(self.tmp, "skopeo-%d" % index), ignore_errors=True)
        out[index] = (seconds, error)

    def measure(self, label):
        self.clear_daemons()
        count = 1 if label == "alone" else self.args.hosts
        fleet = self.fleet(count, peers=label.startswith("peers"), label=label)
        hosts = list(fleet.hosts)
        clients = list(range(count))
        dead = victim = None
        if label == "peers (2 killed)":
            urls = [h.url for h in hosts]
            dead = hosts[-1]                                    # a skopeo host: killed before the run
            biggest = self.layers[0]
            victim = next(h for h in hosts if h.url == ranked(biggest, [u for u in urls if u != dead.url])[0])
            clients = [i for i in clients if hosts[i] not in (dead, victim)]
        out, rss = {}, {}
        try:
            fleet.start()
            if dead is not None:
                dead.kill()
            self.proxy.reset_counts()
            killer = None
            if victim is not None:
                killer = threading.Thread(target=self.kill_when_serving, args=(victim,))
                killer.start()
            barrier = threading.Barrier(len(clients) + 1)

            def client(index):
                barrier.wait()
                self.pull(hosts[index], index, out)
            threads = [threading.Thread(target=client, args=(i,)) for i in clients]
            for thread in threads:
                thread.start()
            barrier.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            if killer is not None:
                killer.join()
                if victim.alive:
                    out["victim"] = (0.0, "the owner of the largest layer never served a peer: not killed")
            for host in hosts:
                if host.alive:
                    rss[host.index] = host.peak_rss_kb() / 1024.0
            read = sum(n for path, (_c, n) in self.proxy.counts("GET").items())
        finally:
            fleet.stop()
            self.keep_logs(fleet, out)
        errors = [error for _s, error in out.values() if error]
        self.failures += ["%s: %s" % (label, e) for e in errors]
        sample = {"wall": wall, "read": read, "pulls": {i: s for i, (s, _e) in out.items() if i != "victim"},
                  "rss": max(rss.values()) if rss else 0.0}
        self.samples[label].append(sample)
        log("%-14s %6.2f s  %7.1f MB read from S3 (%.2fx)  peak RSS %.0f MB  pulls %s%s" % (
            label, wall, read / 1e6, read / self.stored, sample["rss"],
            " ".join("%d:%.2f" % (i + 1, s) for i, s in sorted(sample["pulls"].items())),
            "  FAILED: %s" % "; ".join(errors) if errors else ""))

    def keep_logs(self, fleet, out):
        """The accelerators' logs go to --keep-logs (if given); the rest of the round's files are removed."""
        if self.args.keep_logs:
            os.makedirs(self.args.keep_logs, exist_ok=True)
            for host in fleet.hosts:
                shutil.copy(host.log_path, os.path.join(self.args.keep_logs, "%s-%s" % (
                    os.path.basename(fleet.directory), os.path.basename(host.log_path))))
            log("logs of %s kept in %s" % (fleet.directory, self.args.keep_logs))
        shutil.rmtree(fleet.directory, ignore_errors=True)

    @staticmethod
    def kill_when_serving(victim):
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if victim.metric("dogestry_peer_sent_bytes_total") > 0:
                    victim.kill()
                    return
            except OSError:
                return
            time.sleep(0.01)

    def liar_round(self):
        """Correctness only: the owner of the largest layer serves damaged bytes; every pull must still succeed."""
        self.clear_daemons()
        fleet = self.fleet(self.args.hosts, True, "liar")
        urls = [h.url for h in fleet.hosts]
        liar = next(h for h in fleet.hosts if h.url == ranked(self.layers[0], urls)[0])
        out = {}
        try:
            fleet.start()
            run([VENV_DOGESTRY, "warm", self.remote, self.image, "--peers-file", fleet.client_peers_file,
                 "--endpoint-url", self.proxy.url], env=self.env)
            owned = [k for k in self.objects if ranked(k, urls)[0] == liar.url]
            paths = [os.path.join(liar.cache, k.rsplit("/", 1)[-1]) for k in owned]
            deadline = time.time() + 600
            while not all(os.path.exists(p) for p in paths) and time.time() < deadline:
                time.sleep(0.05)
            for path in paths:
                with open(path, "r+b") as handle:
                    handle.seek(os.path.getsize(path) // 2)
                    byte = handle.read(1)
                    handle.seek(-1, os.SEEK_CUR)
                    handle.write(bytes([byte[0] ^ 0xFF]))
            clients = [h.index for h in fleet.hosts if h is not liar]
            threads = [threading.Thread(target=self.pull, args=(fleet.hosts[i], i, out)) for i in clients]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            named = sum(fleet.hosts[i].metric("dogestry_peer_errors_total", peer=liar.url, kind="corrupt")
                        for i in clients)
            logged = sum(1 for i in clients if "peer %s served" % liar.url in fleet.hosts[i].output())
        finally:
            fleet.stop()
            self.keep_logs(fleet, out)
        errors = [e for _s, e in out.values() if e]
        if not named or not logged:
            errors.append("the liar %s was not reported (metrics %d, logs %d)" % (liar.url, named, logged))
        self.failures += ["liar: %s" % e for e in errors]
        log("peers (liar): %d pulls, %d failed; the liar named %d times in metrics, in the logs of %d hosts"
            % (len(out), len([e for _s, e in out.values() if e]), named, logged))
        self.liar = (len(out), len(errors), named, logged)

    # -- report ---------------------------------------------------------------------------------
    def report(self):
        alone = statistics.median(s["wall"] for s in self.samples["alone"]) if self.samples["alone"] else None
        nopeers = self.samples["no peers"]
        print("\n| %d MB image (%.1f MB stored), %d hosts (%d Docker, %d skopeo), S3 shaped | wall time (all hosts) "
              "| vs alone | read from S3 | slowest pull vs no peers (same host) | accelerator peak RSS |" % (
                  self.args.size_mb, self.stored / 1e6, self.args.hosts, len(self.daemons),
                  self.args.hosts - len(self.daemons)))
        print("|---|---|---|---|---|---|")
        for label in ROUNDS:
            got = self.samples[label]
            if not got:
                continue
            walls = [s["wall"] for s in got]
            reads = [s["read"] / self.stored for s in got]
            text = "%.2f s (%.2f-%.2f)" % (statistics.median(walls), min(walls), max(walls))
            ratio = "%.2fx" % (statistics.median(walls) / alone) if alone else "-"
            slower = "-"
            if label.startswith("peers") and nopeers:
                base = {i: statistics.median(s["pulls"][i] for s in nopeers if i in s["pulls"])
                        for i in nopeers[0]["pulls"]}
                deltas = [s["pulls"][i] - base[i] for s in got for i in s["pulls"] if i in base]
                slower = "%+.2f s" % max(deltas)
            print("| %s | %s | %s | %.2fx (%.2f-%.2f) | %s | %.0f MB |" % (
                label, text, ratio, statistics.median(reads), min(reads), max(reads), slower,
                max(s["rss"] for s in got)))
        if getattr(self, "liar", None):
            pulls, failed, named, logged = self.liar
            print("| peers (liar) | %d pulls, %d failed | - | - | - | the liar named %d times in metrics, "
                  "in the logs of %d hosts |" % (pulls, failed, named, logged))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--docker", type=int, default=3, help="hosts with a Docker daemon (the others use skopeo)")
    parser.add_argument("--s3-delay-ms", type=float, default=30.0)
    parser.add_argument("--s3-mbps", type=float, default=60.0, help="MB/s per connection, each way")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the peers file (e.g. answer_timeout=1.0, max_uploads=2); repeatable")
    parser.add_argument("--rounds", default=",".join(ROUNDS) + ",liar", help="of: %s, liar" % ", ".join(ROUNDS))
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the accelerators' logs of every round here")
    args = parser.parse_args()
    args.settings = {}
    for setting in args.setting:
        name, _sep, value = setting.partition("=")
        args.settings[name.strip()] = float(value) if "." in value else int(value)
    rounds = [r.strip() for r in args.rounds.split(",") if r.strip()]
    if os.geteuid() != 0:
        sys.exit("peers_bench.py starts Docker daemons and bridges: run it as root")
    os.environ["DOCKER_HOST"] = args.docker_host
    tmp = tempfile.mkdtemp(prefix="dogestry-peerbench-", dir=args.tmpdir)
    root = "/tmp/dogestry-peerbench-%d" % os.getpid()
    os.makedirs(os.path.join(tmp, "shim"))
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(tmp, "shim", "dogestry"))
    bench = PeersBench(args, Engine(tmp), tmp, root)
    load_start = os.getloadavg()
    moto = proxy = None
    try:
        moto = Moto(tmp)
        proxy = FaultProxy(moto.url, faults={}, delay=args.s3_delay_ms / 1000.0, rate=args.s3_mbps * 1e6)
        log("building the %d MB image, starting %d daemons" % (args.size_mb, args.docker))
        bench.build()
        bench.start_daemons(args.docker)
        bench.push(moto, proxy)
        log("image stored as %.1f MB in %d layers" % (bench.stored / 1e6, len(bench.layers)))
        timed = [r for r in ROUNDS if r in rounds]
        for i in range(args.repeat if timed else 0):
            log("repeat %d/%d" % (i + 1, args.repeat))
            for label in timed[i % len(timed):] + timed[:i % len(timed)]:
                bench.measure(label)
        if "liar" in rounds:
            bench.liar_round()
        bench.report()
    finally:
        bench.tidy()
        if proxy:
            proxy.stop()
        if moto:
            moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for failure in bench.failures:
        print("FAILED: %s" % failure)
    print("peers' settings: %s" % (args.settings or "the defaults"))
    print("\nmachine: %d cores, load %.1f / %.1f / %.1f at the start, %.1f / %.1f / %.1f at the end; dockerd %s; %s"
          % ((os.cpu_count(),) + load_start + os.getloadavg() +
             (run(["dockerd", "--version"]).stdout.decode().strip(), time.strftime("%Y-%m-%d %H:%M"))))
    sys.exit(1 if bench.failures else 0)


if __name__ == "__main__":
    main()
