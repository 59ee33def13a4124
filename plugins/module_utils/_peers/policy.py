# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Fleet peers as pure code: who owns an object, which source to read next, what a peer answers.

No sockets, no threads, no sleeping: a clock (monotonic seconds) and a random generator come in from
the caller, so the same code drives the real peer client and server (client.py, server.py) and the simulator
(benchmarks/peer_sim.py) with its virtual hosts and time.

- Ownership: rendezvous (highest-random-weight) hashing of the object's key over the peer list, so
  every host names the same owner without talking to the others, and a dead owner moves only its
  own objects to the next host of their ranking.
- A fetch (Fetch) asks the object's live owner; a busy owner names hosts that hold the object
  (verified, they said so: Holders), which are tried next; a peer that fails or is slow is skipped
  for a while (PeerHealth) and the next one of the ranking becomes the owner; past a few failures,
  a lie or a long wait, the remote is read. The remote is always the last source, so a fetch never
  fails because of peers.
- A peer answers (answer) with the object while it has an upload slot (Uploads), else "busy" and
  the holders it knows: an object spreads as a tree, not from one host to all.

May import nothing of the collection.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional


# What a peer's answer (or its absence) was, as the fetch sees it.
SERVED = "served"       # the object's bytes are coming
FAILED = "failed"       # refused, no answer in time, broke off, or an answer that makes no sense
BUSY = "busy"           # at its limit of uploads: try the holders it named, or come back later
MISSING = "missing"     # a holder that does not hold it (any more); an owner whose remote lacks it


@dataclass(frozen=True)
class Settings:
    connect_timeout: float = 0.3    # seconds to reach a peer
    answer_timeout: float = 0.3     # seconds a peer may take to answer (the hedge: then the next source)
    stall_timeout: float = 2.0      # seconds a body may send nothing before the rest is read elsewhere
    failure_memory: float = 15.0    # seconds a peer that failed is skipped
    liar_memory: float = 600.0      # seconds a peer that served wrong bytes is skipped
    max_failures: int = 2           # peers one fetch may find failing before it reads the remote
    busy_budget: float = 60.0       # seconds one fetch may be sent away by busy peers (since its owner last changed) before it reads the remote
    first_retry: float = 0.05       # seconds before a busy owner is asked again, doubled each time ...
    max_retry: float = 2.0          # ... up to this
    max_uploads: int = 2            # peer transfers a host serves at once (benchmarks/peer_sim.py: 2 beats 4 and 8)
    holders_offered: int = 8        # holders a busy answer names
    holder_tries: int = 4           # of those, how many one fetch tries before asking the owner again

    @classmethod
    def from_doc(cls, doc: Dict) -> "Settings":
        """Settings from a peers file's "settings" object (unknown names are refused by the caller)."""
        known = {name: value for name, value in doc.items() if name in cls.__dataclass_fields__}
        return cls(**known)


def weight(key: str, peer: str) -> int:
    return int.from_bytes(hashlib.sha256(("%s\n%s" % (peer, key)).encode()).digest()[:8], "big")


def ranked(key: str, peers: Iterable[str]) -> List[str]:
    """The peers in the order in which they own `key`: the first is the owner, the next takes over
    when it is gone (rendezvous hashing: a peer joining or leaving moves only its own share)."""
    return sorted(set(peers), key=lambda peer: (weight(key, peer), peer), reverse=True)


class PeerHealth:
    """A short memory of peers that failed: skipped until their time is up, then asked again. A peer that
    fails again is skipped twice as long each time (up to liar_memory), until it answers: a host that died
    costs a deploy one connect timeout now and then, not one every failure_memory."""

    def __init__(self, settings: Settings, clock: Callable[[], float]):
        self.settings, self.clock = settings, clock
        self._until: Dict[str, float] = {}
        self._why: Dict[str, str] = {}
        self._strikes: Dict[str, int] = {}
        self._lock = threading.Lock()

    def usable(self, peer: str) -> bool:
        with self._lock:
            until = self._until.get(peer)
            if until is None:
                return True
            if self.clock() >= until:
                del self._until[peer]
                self._why.pop(peer, None)
                return True
            return False

    def why(self, peer: str) -> Optional[str]:
        with self._lock:
            return self._why.get(peer)

    def failed(self, peer: str, why: str) -> None:
        with self._lock:
            strikes = self._strikes[peer] = self._strikes.get(peer, 0) + 1
        memory = min(self.settings.failure_memory * 2 ** min(strikes - 1, 16), self.settings.liar_memory)
        self._forget_for(peer, max(memory, self.settings.failure_memory), why)

    def answered(self, peer: str) -> None:
        """The peer answered (with the object, busy or missing): it is alive."""
        with self._lock:
            self._strikes.pop(peer, None)

    def lied(self, peer: str) -> None:
        self._forget_for(peer, self.settings.liar_memory, "served wrong bytes")

    def _forget_for(self, peer: str, seconds: float, why: str) -> None:
        with self._lock:
            until = self.clock() + seconds
            if until > self._until.get(peer, 0.0):
                self._until[peer], self._why[peer] = until, why


class AnswerTimes:
    """How long a peer may take to answer before the next source is asked (the hedge): the larger of
    answer_timeout and twice the 95th percentile of the last answers' times, doubled for each answer that
    did not come in time (up to 16 times), halved back for each that did. On a loaded host every answer
    is slower, and several peers timing out at once says more about this host than about them: a fixed
    bound would send healthy owners' objects to other owners, each reading the remote again."""

    MAX_PENALTY = 16.0

    def __init__(self, settings: Settings, keep: int = 64):
        self.settings, self.keep = settings, keep
        self._times: "collections.deque[float]" = collections.deque(maxlen=keep)
        self._penalty = 1.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)
            self._penalty = max(1.0, self._penalty / 2)

    def timed_out(self) -> None:
        with self._lock:
            self._penalty = min(self._penalty * 2, self.MAX_PENALTY)

    def timeout(self) -> float:
        with self._lock:
            times, penalty = sorted(self._times), self._penalty
        base = self.settings.answer_timeout
        if len(times) >= 4:
            base = max(base, 2 * times[max(int(len(times) * 0.95) - 1, 0)])
        return base * penalty


class Step(NamedTuple):
    source: str                 # "peer", "remote" or "wait"
    peer: Optional[str] = None
    mode: str = ""              # "owner": fetch it from the remote if you lack it; "holder": only if you hold it
    seconds: float = 0.0        # of a wait


REMOTE = Step("remote")


class Fetch:
    """One host's fetch of one object: which source to read next, given how the earlier ones answered.

    `me` is this host's own peer URL (None for a client that is no peer, such as `dogestry pull`):
    when this host is the object's owner, the remote is read. next() says what to do; answered()
    takes the outcome of a peer step; corrupt() is called when the bytes read did not make the object."""

    def __init__(self, key: str, peers: Iterable[str], me: Optional[str], health: PeerHealth, settings: Settings,
                 clock: Callable[[], float], rng):
        self.key, self.me, self.health, self.settings, self.clock, self.rng = key, me, health, settings, clock, rng
        self.order = ranked(key, list(peers) + ([me] if me else []))
        self.failures = 0                   # peers that failed this fetch (each counted once) or lied to it
        self._failed = set()
        self.used: List[str] = []           # peers whose bytes this fetch took
        self.skipped: List[str] = []        # peers passed over because they failed recently
        self._holders: "collections.deque[str]" = collections.deque()
        self._offered = set()
        self._wait = 0.0
        self._backoff = settings.first_retry
        self._busy_since: Optional[float] = None
        self._to_remote = False
        self.why_remote = ""

    def owner(self) -> Optional[str]:
        """The live owner to ask; None when that is this host (or no peer is left)."""
        for peer in self.order:
            if peer == self.me:
                return None
            if self.health.usable(peer):
                return peer
            if peer not in self.skipped:
                self.skipped.append(peer)
        return None

    def next(self) -> Step:
        if self._to_remote:
            return REMOTE
        if self.failures > self.settings.max_failures:
            self.why_remote = "%d peers failed" % self.failures
            return REMOTE
        while self._holders:
            peer = self._holders.popleft()
            if self.health.usable(peer):
                return Step("peer", peer, "holder")
        if self._wait:
            wait, self._wait = self._wait, 0.0
            return Step("wait", seconds=wait)
        owner = self.owner()
        if owner is None:
            self.why_remote = "this host owns it" if self.me is not None else "no live peer"
            return REMOTE
        return Step("peer", owner, "owner")

    def answered(self, step: Step, outcome: str, holders: Iterable[str] = (), retry_after: float = 0.0,
                 why: str = "") -> None:
        if step.source != "peer":
            return
        if outcome != FAILED:
            self.health.answered(step.peer)
        if outcome == SERVED:
            if step.peer not in self.used:
                self.used.append(step.peer)
            self._busy_since = None
        elif outcome == FAILED:
            self.health.failed(step.peer, why or "failed")
            if step.mode == "owner":    # its successor fetches the object afresh: the wait for a turn starts over
                self._busy_since = None
            if step.peer not in self._failed:   # a dead owner probed again after its memory ran out: once
                self._failed.add(step.peer)
                self.failures += 1
        elif outcome == MISSING and step.mode == "owner":
            self._to_remote = True      # the owner's remote lacks it: let the remote say so itself
            self.why_remote = "the owner did not find it"
        elif outcome == BUSY:
            now = self.clock()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since > self.settings.busy_budget:
                self._to_remote = True
                self.why_remote = "peers were busy for %.0f s" % (now - self._busy_since)
                return
            if step.mode == "owner":
                fresh = [peer for peer in holders if peer not in self._offered and peer != self.me
                         and peer in self.order]
                self.rng.shuffle(fresh)
                fresh = fresh[:self.settings.holder_tries]
                self._offered.update(fresh)
                self._holders.extend(fresh)
                self._wait = max(retry_after, self._backoff) * self.rng.uniform(0.5, 1.0)
                self._backoff = min(self._backoff * 2, self.settings.max_retry)

    def corrupt(self) -> List[str]:
        """The object read was not the one its key names: every peer that contributed bytes is taken for a
        liar (skipped for liar_memory) and counts as a failure; the object is read again, from the next
        source (the next owner, which reads the remote once for everyone; the remote itself past
        max_failures). Not straight from the remote: a liar that holds objects is offered to many askers,
        and each would read the remote (benchmarks/peer_sim.py --failures: 317x the release on 1,000 hosts).
        Returns the peers blamed."""
        for peer in self.used:
            self.health.lied(peer)
        self.failures += max(len(self.used), 1)
        self._holders.clear()
        blamed, self.used = self.used, []
        if not blamed:
            self._to_remote = True      # wrong bytes without a peer to blame: nothing more to try here
        return blamed


class Uploads:
    """The peer transfers a host serves at once, up to its limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def start(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def end(self) -> None:
        with self._lock:
            self.active -= 1


class Holders:
    """Which peers hold which objects, as they reported after verifying them; bounded in memory
    (the most recent keys, and the most recent holders of each)."""

    def __init__(self, max_keys: int = 4096, per_key: int = 64):
        self.max_keys, self.per_key = max_keys, per_key
        self._keys: "collections.OrderedDict[str, collections.OrderedDict[str, None]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str, peer: str) -> None:
        with self._lock:
            holders = self._keys.pop(key, None) or collections.OrderedDict()
            holders.pop(peer, None)
            holders[peer] = None
            while len(holders) > self.per_key:
                holders.popitem(last=False)
            self._keys[key] = holders
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)

    def drop(self, key: str, peer: str) -> None:
        with self._lock:
            holders = self._keys.get(key)
            if holders is not None:
                holders.pop(peer, None)

    def offer(self, key: str, rng, count: int, exclude: Iterable[str] = ()) -> List[str]:
        with self._lock:
            found = [peer for peer in self._keys.get(key, ()) if peer not in set(exclude)]
        return rng.sample(found, min(count, len(found)))


def answer(mode: str, held: bool, slot: bool) -> str:
    """A peer's answer to a request for an object: SERVED (from its cache, or, as the owner, through
    its fetch from the remote), BUSY (no upload slot: `slot` is whether one was free) or MISSING (asked
    as a holder, and it holds no verified copy)."""
    if not slot:
        return BUSY
    if held or mode == "owner":
        return SERVED
    return MISSING
