# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Fleet peers at scale, by simulation: a deploy's phase one on 10, 100 and 1,000 hosts.

The peer protocol's own code decides everything a host does: plugins/module_utils/_peers/policy.py
(rendezvous ownership `ranked`, the source order `Fetch`, the health memory `PeerHealth`, upload slots
`Uploads`, the holders an owner names `Holders`, what a peer answers `answer`), driven here in one
process with a virtual clock instead of sockets. What the simulation supplies is the world:

- hosts with an uplink and a downlink each (`--link-gbps`), a request latency between hosts
  (`--rtt-ms`); a host downloads up to `--parallel` objects at once (Docker pulls three layers at a time);
- the remote: a latency per request (`--remote-ms`), a bandwidth per connection (`--remote-mbps`,
  `--remote-connections` per object: ranged GETs in parallel) and, optionally, a cap on what the whole
  fleet can read from it at once (`--egress-gbps`: a NAT gateway, a cross-region link, a bucket's limit);
- transfers as fluid flows: each gets the smallest of its shares (the sender's uplink over its flows, the
  receiver's downlink over its flows, the remote's caps), recomputed whenever a flow starts or ends; a host
  that serves an object while it still fetches it from the remote sends no faster than it receives;
- failures (`--failures`): 5 % of the hosts dead from the start (a request to them costs the connect timeout),
  one host that accepts connections but never answers (the answer timeout), one that serves wrong bytes (caught
  at the end of the object by the receiver), and the owner of the largest object killed halfway through the
  run (its transfers break; the receivers go on from the byte they reached).

Three ways, for each fleet size: "remote" (every host reads every object from the remote), "one owner" (one
host reads the remote and serves all the others, as one shared accelerator would) and "peers" (the protocol,
its default settings unless --max-uploads is given). It prints, per way: the bytes read from the remote (as a
multiple of the release), the busiest host's upload and the time until every live host holds the release.

    python3 benchmarks/peer_sim.py [--hosts 10,100,1000] [--release-mb 1000] [--failures] [--seed 1]
"""

import argparse
import hashlib
import heapq
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "plugins", "module_utils"))
sys.path.insert(0, os.path.join(HERE, "..", "plugins"))

from module_utils._peers.policy import (  # noqa: E402  (the collection's own code, by path: no install needed)
    BUSY, FAILED, MISSING, SERVED, Fetch, Holders, PeerHealth, Settings, Uploads, answer, ranked,
)

REMOTE = -1
LAYER_SHARES = (0.002, 0.35, 0.25, 0.20, 0.10, 0.098)     # bench.py's image: base, text, random, sparse, mixed, app


class Flow:
    """A transfer of `key` from `src` (a host, or REMOTE) to `dst`, bytes `done`.. of `size`. A flow that
    `follow`s another (the sender's own fetch of the object from the remote) is never faster than it."""

    __slots__ = ("src", "dst", "key", "size", "done", "rate", "follow", "liar", "on_done", "on_fail", "alive")

    def __init__(self, src, dst, key, offset, size, follow=None, liar=False):
        self.src, self.dst, self.key, self.size, self.done = src, dst, key, size, float(offset)
        self.rate, self.follow, self.liar, self.alive = 0.0, follow, liar, True
        self.on_done = self.on_fail = None


class Host:
    def __init__(self, index, sim):
        self.index = index
        self.url = "https://10.%d.%d.%d:22376" % (index >> 16, (index >> 8) & 255, index & 255)
        self.health = PeerHealth(sim.settings, sim.now)
        self.uploads = Uploads(sim.settings.max_uploads)
        self.holders = Holders()
        self.rng = random.Random("%d-%d" % (sim.seed, index))
        self.held = set()           # verified objects
        self.fetching = {}          # key -> this host's fetch of it from the remote (one per object)
        self.from_peers = set()     # keys this host is downloading from peers (hidden until verified)
        self.waiting = {}           # key -> what to do once this host holds it
        self.queue = []             # objects it has not started on
        self.active = 0
        self.dead = self.stalled = self.liar = False
        self.finished = None
        self.uploaded = 0.0
        self.n_up = self.n_down = 0


class Sim:
    def __init__(self, args, way, hosts, seed):
        self.args, self.way, self.seed = args, way, seed
        self.settings = Settings(**({"max_uploads": args.max_uploads} if args.max_uploads else {}))
        self.clock = 0.0
        self.events, self.counter, self.version = [], 0, 0
        self.flows = set()
        self.remote_flows = 0
        self.remote_bytes = 0.0
        self.link = args.link_gbps * 1e9 / 8
        self.conn = args.remote_mbps * 1e6 * args.remote_connections
        self.egress = args.egress_gbps * 1e9 / 8 if args.egress_gbps else None
        release = args.release_mb * 1e6
        self.objects = []
        for i, share in enumerate(LAYER_SHARES):
            hexdigest = hashlib.sha256(b"%d-%d" % (seed, i)).hexdigest()
            self.objects.append(("blobs/sha256/%s/%s.lz4" % (hexdigest[:2], hexdigest), share * release))
        self.size = dict(self.objects)
        self.hosts = [Host(i, self) for i in range(hosts)]
        self.urls = [host.url for host in self.hosts]
        self.by_url = {host.url: host for host in self.hosts}
        self.victim = None

    def now(self):
        return self.clock

    # -- events ---------------------------------------------------------------------------------
    def at(self, when, action, *args):
        self.counter += 1
        heapq.heappush(self.events, (when, self.counter, action, args))

    def later(self, seconds, action, *args):
        self.at(self.clock + seconds, action, *args)

    def run(self):
        while self.events:
            when, _n, action, args = heapq.heappop(self.events)
            self._advance(when)
            action(*args)
        return self

    # -- flows (fluid) --------------------------------------------------------------------------
    def _advance(self, when):
        delta = when - self.clock
        if delta > 0:
            for flow in self.flows:
                moved = flow.rate * delta
                flow.done += moved
                if flow.src == REMOTE:
                    self.remote_bytes += moved
                else:
                    self.hosts[flow.src].uploaded += moved
            self.clock = when

    def start_flow(self, flow):
        if not flow.alive or self.hosts[flow.dst].dead or (flow.src != REMOTE and self.hosts[flow.src].dead):
            flow.alive = False
            if flow.on_fail and not self.hosts[flow.dst].dead:
                flow.on_fail(flow, "the sender is dead")
            return
        self.flows.add(flow)
        if flow.src == REMOTE:
            self.remote_flows += 1
        else:
            self.hosts[flow.src].n_up += 1
        self.hosts[flow.dst].n_down += 1
        self._rerate()

    def end_flow(self, flow):
        if flow not in self.flows:
            flow.alive = False
            return
        flow.alive = False
        self.flows.discard(flow)
        if flow.src == REMOTE:
            self.remote_flows -= 1
        else:
            self.hosts[flow.src].n_up -= 1
        self.hosts[flow.dst].n_down -= 1
        self._rerate()

    def _share(self, flow):
        rate = self.link / self.hosts[flow.dst].n_down
        if flow.src == REMOTE:
            rate = min(rate, self.conn, self.egress / self.remote_flows if self.egress else rate)
        else:
            rate = min(rate, self.link / self.hosts[flow.src].n_up)
        return rate

    def _rerate(self):
        self.version += 1
        following = []
        for flow in self.flows:
            if flow.follow is not None and flow.follow.alive:
                following.append(flow)
            else:
                flow.rate = self._share(flow)
        for flow in following:
            flow.rate = min(self._share(flow), flow.follow.rate if flow.follow in self.flows else 0.0)
        best = None
        for flow in self.flows:
            if flow.rate > 0:
                end = self.clock + max(flow.size - flow.done, 0.0) / flow.rate
                best = end if best is None or end < best else best
        if best is not None:
            self.at(best, self._tick, self.version)

    def _tick(self, version):
        if version != self.version:
            return
        finished = [f for f in self.flows if f.done >= f.size * (1 - 1e-9) - 1]
        for flow in finished:
            self.end_flow(flow)
        for flow in finished:
            flow.on_done(flow)
        if not finished:
            self._rerate()

    # -- set-up, and failures -------------------------------------------------------------------
    def setup(self, failures):
        rng = random.Random(self.seed)
        if failures and len(self.hosts) > 3:
            others = list(range(len(self.hosts)))
            rng.shuffle(others)
            for index in others[:max(1, len(self.hosts) // 20)]:
                self.hosts[index].dead = True
            self.hosts[others[-1]].stalled = True
            self.hosts[others[-2]].liar = True
            biggest = max(self.objects, key=lambda o: o[1])[0]
            self.victim = next(self.by_url[u] for u in ranked(biggest, self.urls)
                               if not (self.by_url[u].dead or self.by_url[u].stalled or self.by_url[u].liar))
            self.later(0.05, self._watch_victim)
        order = [key for key, _size in sorted(self.objects, key=lambda o: -o[1])]
        for host in self.hosts:
            if host.dead or host.stalled:
                continue
            host.queue = list(order)
            if self.way == "one owner" and host.index == 0:
                for key in order:       # a shared accelerator asked by everyone fetches everything at once
                    self.own_fetch(host, key, 0, lambda h=host, k=key: self.holds(h, k))
                continue
            for _slot in range(self.args.parallel):
                self.next_object(host)

    def _watch_victim(self):
        """Kill the owner of the largest object once a transfer it serves is half done."""
        victim = self.victim
        serving = [f for f in self.flows if f.src == victim.index]
        if serving and max(f.done / f.size for f in serving) >= 0.5:
            self.kill(victim)
        elif not victim.dead and (victim.finished is None or victim.n_up):
            self.later(0.05, self._watch_victim)

    def kill(self, host):
        host.dead = True
        for flow in [f for f in self.flows if host.index in (f.src, f.dst)]:
            self.end_flow(flow)
            if flow.dst != host.index and flow.on_fail:
                flow.on_fail(flow, "killed")

    # -- a host's downloads ---------------------------------------------------------------------
    def next_object(self, host):
        if host.dead:
            return
        if not host.queue:
            if host.active == 0 and host.finished is None:
                host.finished = self.clock
            return
        key = host.queue.pop(0)
        host.active += 1
        if key in host.held:
            self.got(host, key)
        elif self.way == "remote" or key in host.fetching:
            self.own_fetch(host, key, 0, lambda: self.got(host, key))
        elif self.way == "one owner":
            self.later(self.args.rtt_ms / 1000.0, self.follow_owner, host, key)
        else:
            host.from_peers.add(key)
            fetch = Fetch(key, [u for u in self.urls if u != host.url], host.url, host.health, self.settings,
                          self.now, host.rng)
            self.step(host, key, fetch, 0)

    def holds(self, host, key):
        """`host` verified `key`: serve whoever waited for it."""
        host.held.add(key)
        if len(host.held) == len(self.objects) and host.finished is None:
            host.finished = self.clock
        host.from_peers.discard(key)
        for action in host.waiting.pop(key, []):
            action()

    def got(self, host, key):
        self.holds(host, key)
        host.active -= 1
        self.next_object(host)

    def own_fetch(self, host, key, offset, done):
        """This host's fetch of `key` from the remote, one per object: a second caller joins it."""
        flow = host.fetching.get(key)
        if flow is not None:
            previous = flow.on_done
            flow.on_done = lambda f: (previous(f), done())
            return
        flow = Flow(REMOTE, host.index, key, offset, self.size[key])

        def finished(_flow):
            host.fetching.pop(key, None)
            done()
        flow.on_done, flow.on_fail = finished, (lambda f, why: host.fetching.pop(key, None))
        host.fetching[key] = flow
        self.later(self.args.remote_ms / 1000.0, self.start_flow, flow)

    def follow_owner(self, host, key):
        owner = self.hosts[0]
        flow = Flow(0, host.index, key, 0, self.size[key], follow=owner.fetching.get(key))
        flow.on_done, flow.on_fail = (lambda f: self.got(host, key)), (lambda f, why: None)
        self.start_flow(flow)

    # -- the protocol: _peers/policy.py decides ---------------------------------------------------
    def step(self, host, key, fetch, offset):
        if host.dead:
            return
        step = fetch.next()
        if step.source == "wait":
            self.later(step.seconds, self.step, host, key, fetch, offset)
        elif step.source == "remote":
            host.from_peers.discard(key)
            self.own_fetch(host, key, offset, lambda: self.got(host, key))
        else:
            peer = self.by_url[step.peer]
            if peer.dead:
                self.later(self.settings.connect_timeout, self.failed, host, key, fetch, offset, step)
            elif peer.stalled:
                self.later(self.args.rtt_ms / 1000.0 + self.settings.answer_timeout, self.failed, host, key, fetch,
                           offset, step)
            else:
                self.later(self.args.rtt_ms / 2000.0, self.ask, host, key, fetch, offset, step, peer)

    def failed(self, host, key, fetch, offset, step):
        fetch.answered(step, FAILED, why="no answer")
        self.step(host, key, fetch, offset)

    def ask(self, host, key, fetch, offset, step, peer):
        """`peer` gets `host`'s request: what it answers is _peers/policy.py's answer's."""
        half = self.args.rtt_ms / 2000.0
        if peer.dead:
            self.later(self.settings.connect_timeout, self.failed, host, key, fetch, offset, step)
            return
        outcome = answer(step.mode, key in peer.held, peer.uploads.start())
        if outcome != SERVED:
            if outcome == MISSING:
                peer.uploads.end()
            holders = peer.holders.offer(key, peer.rng, self.settings.holders_offered, [host.url]) \
                if outcome == BUSY else ()
            self.later(half, self.answered, host, key, fetch, offset, step, outcome, holders)
            return
        fetch.answered(step, SERVED)

        def send():
            if peer.dead:
                peer.uploads.end()
                self.failed(host, key, fetch, offset, step)
                return
            flow = Flow(peer.index, host.index, key, offset, self.size[key], follow=peer.fetching.get(key),
                        liar=peer.liar)

            def done(f):
                peer.uploads.end()
                self.received(host, key, fetch, f)

            def broke(f, why):
                peer.uploads.end()
                fetch.answered(step, FAILED, why=why)
                self.step(host, key, fetch, int(f.done))
            flow.on_done, flow.on_fail = done, broke
            self.later(half, self.start_flow, flow)
        if key in peer.held or key in peer.fetching:
            send()                                      # from its cache, or following its fetch from the remote
        elif key in peer.from_peers:
            peer.waiting.setdefault(key, []).append(send)      # its own copy comes from peers: verified first
        else:
            self.own_fetch(peer, key, 0, lambda: self.holds(peer, key))     # the owner reads the remote, once
            send()

    def answered(self, host, key, fetch, offset, step, outcome, holders):
        fetch.answered(step, outcome, holders=holders, retry_after=self.settings.first_retry)
        self.step(host, key, fetch, offset)

    def received(self, host, key, fetch, flow):
        if flow.liar:
            fetch.corrupt()                             # caught at the end: read the remote, from the first byte
            self.step(host, key, fetch, 0)
            return
        owner = fetch.owner()
        if owner is not None:                           # tell the owner: it names this host when it is busy
            target = self.by_url[owner]
            self.later(self.args.rtt_ms / 2000.0, lambda: None if target.dead else target.holders.add(key, host.url))
        self.got(host, key)

    # -- results --------------------------------------------------------------------------------
    def result(self):
        live = [h for h in self.hosts if not h.dead and not h.stalled]
        release = sum(self.size.values())
        return {"remote": self.remote_bytes / release, "busiest": max(h.uploaded for h in self.hosts) / release,
                "time": max(h.finished or 0.0 for h in live), "unfinished": [h.index for h in live if h.finished is None]}


def simulate(args, way, hosts, failures):
    sim = Sim(args, way, hosts, args.seed)
    sim.setup(failures)
    sim.run()
    return sim.result()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", default="10,100,1000")
    parser.add_argument("--release-mb", type=float, default=1000.0)
    parser.add_argument("--link-gbps", type=float, default=1.0, help="each host's uplink and downlink")
    parser.add_argument("--rtt-ms", type=float, default=0.5, help="a request's round trip between hosts")
    parser.add_argument("--remote-ms", type=float, default=30.0, help="a request's latency at the remote")
    parser.add_argument("--remote-mbps", type=float, default=60.0, help="MB/s of one connection to the remote")
    parser.add_argument("--remote-connections", type=int, default=4, help="connections per object (ranged GETs)")
    parser.add_argument("--egress-gbps", type=float, default=0.0, help="what the fleet can read from the remote at "
                        "once (0: no limit)")
    parser.add_argument("--parallel", type=int, default=3, help="objects a host downloads at once")
    parser.add_argument("--max-uploads", type=int, default=0, help="the peers' upload slots (default: Settings')")
    parser.add_argument("--failures", action="store_true")
    parser.add_argument("--ways", default="remote,one owner,peers")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("release %.0f MB in %d objects; links %.1f Gbit/s; %.1f ms between hosts; remote %.0f ms a request, "
          "%.0f MB/s x %d connections an object, fleet egress %s; %d objects at a time; max_uploads %d; seed %d%s"
          % (args.release_mb, len(LAYER_SHARES), args.link_gbps, args.rtt_ms, args.remote_ms, args.remote_mbps,
             args.remote_connections, "%.0f Gbit/s" % args.egress_gbps if args.egress_gbps else "unlimited",
             args.parallel, args.max_uploads or Settings().max_uploads, args.seed, "; with failures" if args.failures else ""))
    print("\n| hosts | way | remote reads (x release) | busiest upload (x release) | time to all hosts | sim cpu |")
    print("|---|---|---|---|---|---|")
    for hosts in [int(n) for n in args.hosts.split(",")]:
        for way in [w.strip() for w in args.ways.split(",")]:
            started = time.process_time()
            got = simulate(args, way, hosts, args.failures)
            note = " (unfinished: %s)" % got["unfinished"][:5] if got["unfinished"] else ""
            print("| %d | %s | %.2f | %.2f | %.1f s%s | %.1f s |"
                  % (hosts, way, got["remote"], got["busiest"], got["time"], note, time.process_time() - started))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
