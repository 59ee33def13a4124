"""Fleet peers as pure code: ownership by rendezvous hashing, the order of sources, health memory, busy owners."""

import random

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.content_keys import peer_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.policy import (
    AnswerTimes, BUSY, FAILED, Fetch, Holders, MISSING, PeerHealth, SERVED, Settings, Step, Uploads, answer, ranked,
)

PEERS = ["https://10.0.0.%d:22376" % i for i in range(1, 9)]
HEX = "ab" + "0" * 62


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fetch_of(key, me=None, peers=PEERS, settings=Settings(), clock=None, health=None, seed=1):
    clock = clock or Clock()
    health = health or PeerHealth(settings, clock)
    return Fetch(key, [p for p in peers if p != me], me, health, settings, clock, random.Random(seed))


@pytest.mark.parametrize("key, expected", [
    ("blobs/sha256/ab/%s" % HEX, ("sha256", HEX, "none")),
    ("blobs/sha256/ab/%s.lz4" % HEX, ("sha256", HEX, "lz4")),
    ("blobs/sha512/ab/%s" % ("ab" + "1" * 126), ("sha512", "ab" + "1" * 126, "none")),
    ("manifests/sha256/%s" % HEX, ("sha256", HEX, "none")),
    ("oci-manifests/sha256/%s" % HEX, ("sha256", HEX, "none")),
    ("blobs/sha256/cd/%s" % HEX, None),                     # the directory does not match the digest
    ("blobs/sha512/ab/%s.lz4" % ("ab" + "1" * 126), None),  # only sha256 layers are stored lz4
    ("repositories/app/_tags/1", None),
    ("dogestry.json", None),
    ("images/sha256/%s" % HEX, None),                       # an index: names, does not verify itself
    ("blobs/sha256/AB/%s" % HEX.upper(), None),
    ("blobs/sha256/ab/%s/../x" % HEX, None),
])
def test_only_content_addressed_keys_go_to_peers(key, expected):
    found = peer_key(key)
    assert (found.algorithm, found.hexdigest, found.encoding) == expected if expected else found is None


def test_every_host_names_the_same_owner_and_a_departure_moves_only_its_share():
    keys = ["blobs/sha256/%02x/%064x" % (i % 256, i) for i in range(2000)]
    owners = {key: ranked(key, PEERS)[0] for key in keys}
    assert all(ranked(key, list(reversed(PEERS)))[0] == owners[key] for key in keys)    # order of the list is irrelevant
    share = {peer: sum(1 for o in owners.values() if o == peer) for peer in PEERS}
    assert all(2000 / 8 * 0.6 < n < 2000 / 8 * 1.4 for n in share.values()), share
    gone = PEERS[3]
    after = {key: ranked(key, [p for p in PEERS if p != gone])[0] for key in keys}
    moved = [key for key in keys if after[key] != owners[key]]
    assert moved and all(owners[key] == gone for key in moved)
    assert all(after[key] == ranked(key, PEERS)[1] for key in moved)      # each to the next of its own ranking


def test_the_owner_is_asked_first_and_a_host_that_owns_the_object_reads_the_remote():
    key = "blobs/sha256/ab/%s.lz4" % HEX
    owner = ranked(key, PEERS)[0]
    assert fetch_of(key).next() == Step("peer", owner, "owner")
    assert fetch_of(key, me=owner).next() == Step("remote")
    # a host ranked below the owner asks the owner
    assert fetch_of(key, me=ranked(key, PEERS)[1]).next() == Step("peer", owner, "owner")


def test_a_failed_owner_is_skipped_for_a_while_then_asked_again():
    key = "blobs/sha256/ab/%s" % HEX
    clock = Clock()
    settings = Settings(failure_memory=15.0)
    health = PeerHealth(settings, clock)
    first, second = ranked(key, PEERS)[:2]
    fetch = fetch_of(key, clock=clock, health=health, settings=settings)
    step = fetch.next()
    fetch.answered(step, FAILED, why="refused")
    assert fetch.next() == Step("peer", second, "owner")
    # another fetch (another object's, or a later one) skips it too, without asking
    later = fetch_of(key, clock=clock, health=health, settings=settings)
    assert later.next() == Step("peer", second, "owner") and later.skipped == [first]
    clock.now += 15.0
    assert fetch_of(key, clock=clock, health=health, settings=settings).next() == Step("peer", first, "owner")


def test_past_max_failures_the_remote_is_read():
    key = "blobs/sha256/ab/%s" % HEX
    fetch = fetch_of(key, settings=Settings(max_failures=2))
    for _peer in range(3):
        step = fetch.next()
        assert step.source == "peer"
        fetch.answered(step, FAILED, why="timeout")
    assert fetch.next() == Step("remote") and "3 peers failed" in fetch.why_remote


def test_a_busy_owner_sends_the_fetch_to_holders_then_it_waits_and_asks_again():
    key = "blobs/sha256/ab/%s" % HEX
    owner = ranked(key, PEERS)[0]
    holders = [p for p in PEERS if p != owner][:3]
    fetch = fetch_of(key, settings=Settings(first_retry=0.1, holder_tries=2))
    step = fetch.next()
    fetch.answered(step, BUSY, holders=holders + ["https://stranger:1"], retry_after=0.0)
    tried = [fetch.next(), fetch.next()]
    assert all(s.mode == "holder" for s in tried) and {s.peer for s in tried} <= set(holders)
    for s in tried:
        fetch.answered(s, MISSING if s is tried[0] else BUSY)
    wait = fetch.next()
    assert wait.source == "wait" and 0.05 <= wait.seconds <= 0.1
    assert fetch.next() == Step("peer", owner, "owner")


def test_peers_busy_for_longer_than_the_budget_send_the_fetch_to_the_remote():
    key = "blobs/sha256/ab/%s" % HEX
    clock = Clock()
    fetch = fetch_of(key, clock=clock, settings=Settings(busy_budget=10.0))
    step = fetch.next()
    fetch.answered(step, BUSY)
    clock.now += 10.5
    step = Step("peer", step.peer, "owner")
    fetch.answered(step, BUSY)
    assert [fetch.next() for _attempt in range(2)] == [Step("remote")] * 2
    assert "busy" in fetch.why_remote


def test_the_busy_budget_starts_over_at_the_next_owner_when_the_owner_fails():
    """An owner that dies after keeping a fetch waiting: its successor fetches the object afresh and serves the
    fleet as a new tree, and the fetch waits its turn there (benchmarks/peer_sim.py --failures, 1,000 hosts:
    the owner of the largest layer killed sent 151x the release to the remote while the budget ran on)."""
    key = "blobs/sha256/ab/%s" % HEX
    clock = Clock()
    first, successor = ranked(key, PEERS)[:2]
    fetch = fetch_of(key, clock=clock, settings=Settings(busy_budget=10.0))
    fetch.answered(Step("peer", first, "owner"), BUSY)
    assert fetch.next().source == "wait"
    clock.now += 8.0
    fetch.answered(Step("peer", first, "owner"), FAILED, why="killed")
    assert fetch.next() == Step("peer", successor, "owner")
    clock.now += 1.0
    fetch.answered(Step("peer", successor, "owner"), BUSY)
    assert fetch.next().source == "wait"
    clock.now += 5.0        # 14 s since the first busy answer, 5 s at the successor
    fetch.answered(Step("peer", successor, "owner"), BUSY)
    assert fetch.next().source == "wait" and fetch.why_remote == ""
    clock.now += 5.5
    fetch.answered(Step("peer", successor, "owner"), BUSY)
    assert fetch.next() == Step("remote") and "busy" in fetch.why_remote


def test_an_owner_whose_remote_lacks_the_object_lets_the_remote_say_so():
    key = "manifests/sha256/%s" % HEX
    fetch = fetch_of(key)
    fetch.answered(fetch.next(), MISSING)
    assert fetch.next() == Step("remote")


def test_peers_that_served_wrong_bytes_are_skipped_for_the_liar_memory():
    key = "blobs/sha256/ab/%s" % HEX
    clock = Clock()
    settings = Settings(failure_memory=15.0, liar_memory=600.0)
    health = PeerHealth(settings, clock)
    fetch = fetch_of(key, clock=clock, health=health, settings=settings)
    step = fetch.next()
    fetch.answered(step, SERVED)
    assert fetch.corrupt() == [step.peer]
    # the next of the ranking reads it from the remote once for everyone (not each asker of the liar)
    assert fetch.next() == Step("peer", ranked(key, PEERS)[1], "owner")
    clock.now += 300
    assert not health.usable(step.peer) and health.why(step.peer) == "served wrong bytes"
    health.failed(step.peer, "timeout")             # a shorter penalty does not shorten the longer one
    clock.now += 299
    assert not health.usable(step.peer)
    clock.now += 2
    assert health.usable(step.peer)


def test_uploads_stop_at_their_limit():
    uploads = Uploads(2)
    assert [uploads.start() for _slot in range(3)] == [True, True, False]
    uploads.end()
    assert uploads.start()


def test_holders_are_bounded_and_never_offered_to_themselves():
    holders = Holders(max_keys=2, per_key=3)
    for i in range(5):
        holders.add("k1", "h%d" % i)
    rng = random.Random(3)
    assert sorted(holders.offer("k1", rng, 10)) == ["h2", "h3", "h4"]
    assert sorted(holders.offer("k1", rng, 10, exclude=["h3"])) == ["h2", "h4"]
    holders.add("k2", "a")
    holders.add("k3", "b")
    assert holders.offer("k1", rng, 10) == [] and holders.offer("k3", rng, 10) == ["b"]


@pytest.mark.parametrize("mode, held, slot, expected", [
    ("owner", False, True, SERVED),
    ("owner", True, True, SERVED),
    ("holder", True, True, SERVED),
    ("holder", False, True, MISSING),
    ("owner", True, False, BUSY),
    ("holder", True, False, BUSY),
])
def test_what_a_peer_answers(mode, held, slot, expected):
    assert answer(mode, held, slot) == expected


def test_a_lie_counts_as_a_failure_and_past_max_failures_the_remote_is_read():
    key = "blobs/sha256/ab/%s" % HEX
    fetch = fetch_of(key, settings=Settings(max_failures=2))
    for _liar in range(3):
        step = fetch.next()
        assert step.source == "peer"
        fetch.answered(step, SERVED)
        fetch.corrupt()
    assert fetch.next() == Step("remote")


def test_a_peer_that_keeps_failing_is_skipped_longer_each_time_until_it_answers():
    clock = Clock()
    health = PeerHealth(Settings(failure_memory=10.0, liar_memory=600.0), clock)
    peer = PEERS[0]
    for memory in (10.0, 20.0, 40.0):
        health.failed(peer, "refused")
        clock.now += memory - 0.5
        assert not health.usable(peer)
        clock.now += 0.5
        assert health.usable(peer)
    health.answered(peer)
    health.failed(peer, "refused")
    clock.now += 10.0
    assert health.usable(peer)


def test_one_dead_peer_probed_again_during_a_long_wait_counts_as_one_failure():
    key = "blobs/sha256/ab/%s" % HEX
    clock = Clock()
    settings = Settings(max_failures=1, failure_memory=1.0)
    fetch = fetch_of(key, clock=clock, settings=settings)
    dead = fetch.next()
    for _probe in range(5):
        fetch.answered(dead, FAILED, why="refused")
        clock.now += 1000.0                 # its memory ran out: it is the owner again
        assert fetch.next() == dead
    assert fetch.failures == 1


def test_the_hedge_waits_for_twice_the_recent_answers_95th_percentile_at_least_answer_timeout():
    times = AnswerTimes(Settings(answer_timeout=0.3))
    assert times.timeout() == 0.3
    for _answer in range(60):
        times.add(0.01)
    assert times.timeout() == 0.3                       # a fast fleet: the configured bound
    for _answer in range(60):
        times.add(0.4)                                  # a loaded host: every answer is slower
    assert times.timeout() == pytest.approx(0.8)
    times.timed_out()
    times.timed_out()                                   # answers not coming in time: wait longer
    assert times.timeout() == pytest.approx(3.2)
    times.add(0.4)
    assert times.timeout() == pytest.approx(1.6)
