"""The peer client over a scripted transport: sources in order, bodies that break off go on where they broke,
liars are caught before anyone reads their bytes, the remote is always the last source. (Real HTTPS between
real accelerators: tests/integration/test_peers.py.)"""

import hashlib
import io
import json
import os
import random

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _codecs as _compress
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.policy import Settings, ranked
from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.client import PeerClient, PeerRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.config import PeerConfig, PeerConfigError, PeerFailure, verifier_for
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote

PEERS = ["https://10.0.0.%d:22376" % i for i in range(1, 6)]
SECRET = "s" * 24


def lz4(data):
    encoder = _compress.encoder("lz4")
    return encoder.update(data) + encoder.finish()


def layer(data):
    """(key, stored bytes) of a layer stored lz4 under the digest of its content."""
    hexdigest = hashlib.sha256(data).hexdigest()
    return "blobs/sha256/%s/%s.lz4" % (hexdigest[:2], hexdigest), lz4(data)


class Answer:
    def __init__(self, status, body=b"", headers=None, break_at=None):
        self.status, self._body, self._headers, self._break_at = status, io.BytesIO(body), headers or {}, break_at
        self.closed = False

    def header(self, name):
        return self._headers.get(name)

    def read(self, size=-1):
        data = self._body.read(size)
        if self._break_at is not None and self._body.tell() > self._break_at:
            raise ConnectionResetError("connection reset by peer")
        return data

    def close(self):
        self.closed = True


class Transport:
    """Each peer behaves as scripted: serve, refuse, lie, break (after N bytes), busy (naming holders), missing."""

    def __init__(self, objects, script):
        self.objects, self.script, self.asked = objects, script, []

    def request(self, peer, method, path, headers, answer_timeout=None):
        key = path[len("/peer/v1/"):]
        offset = int(headers["Range"][6:-1]) if "Range" in headers else 0
        self.asked.append((peer, headers.get("X-Dogestry-Peer-Mode"), offset))
        how = self.script.get(peer, "serve")
        if how == "refuse":
            raise PeerFailure("refused", "cannot reach %s: Connection refused" % peer)
        if how.startswith("busy"):
            holders = how.split(":", 1)[1].split(",") if ":" in how else []
            return Answer(503, json.dumps({"holders": holders, "retry_after": 0}).encode())
        if how == "missing":
            return Answer(404, b"{}")
        data = self.objects[key]
        if how == "lie":        # as long as the object, a byte in the middle flipped
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]
        body = data[offset:]
        headers = {"Content-Length": str(len(body))}
        if offset:
            headers["Content-Range"] = "bytes %d-%d/%d" % (offset, len(data) - 1, len(data))
        break_at = int(how.split(":")[1]) - offset if how.startswith("break") else None
        return Answer(206 if offset else 200, body, headers, break_at)


class CountingRemote(LocalRemote):
    def __init__(self, root):
        LocalRemote.__init__(self, root)
        self.opened = []        # keys read whole, (key, first byte) of ranges
        self._in_range = False

    def open(self, key, size=None):
        if not self._in_range:
            self.opened.append(key)
        return LocalRemote.open(self, key, size)

    def get_range(self, key, start, end):
        self.opened.append((key, start))
        self._in_range = True       # LocalRemote reads a range through open()
        try:
            return LocalRemote.get_range(self, key, start, end)
        finally:
            self._in_range = False


@pytest.fixture
def world(tmp_path):
    data = random.Random(7).randbytes(3 << 20)
    key, stored = layer(data)
    remote = CountingRemote(str(tmp_path / "remote"))
    remote.put(key, stored)
    return key, stored, data, remote


def client_for(remote, transport, cache=None, **settings):
    config = PeerConfig(list(PEERS), None, None, SECRET, Settings(**dict({"first_retry": 0.0}, **settings)))
    return PeerClient(config, remote, transport=transport, sleep=lambda seconds: None, rng=random.Random(5), cache=cache)


def pull_through(tmp_path, remote, transport, key, size, **settings):
    """What `dogestry pull --peers-file` reads: the object through peers, verified in a spool first."""
    cache = BlobCache(str(tmp_path / "spool"), 1 << 40)
    client = client_for(remote, transport, cache, **settings)
    peered = PeerRemote(remote, client, cache)
    with peered.open(key, size) as reader:
        got = reader.read()
        reader.verified()
    return got, client


def test_the_owner_serves_and_the_remote_is_not_read(tmp_path, world):
    key, stored, _data, remote = world
    transport = Transport({key: stored}, {})
    got, client = pull_through(tmp_path, remote, transport, key, len(stored))
    assert got == stored and remote.opened == []
    assert transport.asked == [(ranked(key, PEERS)[0], "owner", 0)]


def test_a_refusing_owner_hands_the_object_to_the_next_of_its_ranking(tmp_path, world):
    key, stored, _data, remote = world
    first, second = ranked(key, PEERS)[:2]
    transport = Transport({key: stored}, {first: "refuse"})
    got, client = pull_through(tmp_path, remote, transport, key, len(stored))
    assert got == stored and remote.opened == []
    assert [peer for peer, _mode, _offset in transport.asked] == [first, second]
    assert not client.health.usable(first)


def test_a_body_that_breaks_off_goes_on_from_the_byte_it_reached_at_the_next_owner(tmp_path, world):
    key, stored, _data, remote = world
    first, second = ranked(key, PEERS)[:2]
    transport = Transport({key: stored}, {first: "break:1000000"})
    got, _client = pull_through(tmp_path, remote, transport, key, len(stored))
    assert got == stored and remote.opened == []
    assert transport.asked[0] == (first, "owner", 0)
    assert transport.asked[1][0] == second and 0 < transport.asked[1][2] <= 1000000


def test_with_every_peer_down_the_remote_is_read_from_where_the_peers_stopped(tmp_path, world):
    key, stored, _data, remote = world
    owner = ranked(key, PEERS)[0]
    script = {peer: "refuse" for peer in PEERS}
    script[owner] = "break:2000000"
    transport = Transport({key: stored}, script)
    got, _client = pull_through(tmp_path, remote, transport, key, len(stored), max_failures=10)
    assert got == stored
    assert remote.opened and all(isinstance(item, tuple) and item[1] > 0 for item in remote.opened)     # only the rest


def test_a_liar_is_caught_before_anyone_reads_its_bytes_and_the_next_owner_serves_instead(tmp_path, world):
    key, stored, data, remote = world
    owner, second = ranked(key, PEERS)[:2]
    transport = Transport({key: stored}, {owner: "lie"})
    cache = BlobCache(str(tmp_path / "spool"), 1 << 40)
    client = client_for(remote, transport, cache)
    with PeerRemote(remote, client, cache).open(key, len(stored)) as reader:
        got = reader.read()
        reader.verified()
    assert got == stored and remote.opened == []
    assert [peer for peer, _mode, _offset in transport.asked] == [owner, second]
    assert not client.health.usable(owner) and client.health.why(owner) == "served wrong bytes"
    assert key in cache
    # the next object goes elsewhere, without asking the liar
    transport.asked.clear()
    other_key, other = layer(data[:1000])
    transport.objects[other_key] = other
    remote.put(other_key, other)
    with PeerRemote(remote, client, cache).open(other_key, len(other)) as reader:
        assert reader.read() == other
    assert owner not in [peer for peer, _mode, _offset in transport.asked]


def test_when_every_peer_lies_the_remote_serves(tmp_path, world):
    key, stored, _data, remote = world
    transport = Transport({key: stored}, {peer: "lie" for peer in PEERS})
    got, client = pull_through(tmp_path, remote, transport, key, len(stored), max_failures=2)
    assert got == stored and remote.opened == [key]
    assert len(transport.asked) == 3 and not any(client.health.usable(p) for p, _m, _o in transport.asked)


def test_a_busy_owner_sends_the_asker_to_a_holder(tmp_path, world):
    key, stored, _data, remote = world
    owner, holder = ranked(key, PEERS)[:2]
    transport = Transport({key: stored}, {owner: "busy:%s" % holder})
    got, _client = pull_through(tmp_path, remote, transport, key, len(stored))
    assert got == stored and remote.opened == []
    assert transport.asked == [(owner, "owner", 0), (holder, "holder", 0)]


def test_a_small_object_from_a_liar_is_read_from_the_remote(tmp_path):
    manifest = b'{"a manifest": true}'
    key = "manifests/sha256/" + hashlib.sha256(manifest).hexdigest()
    remote = CountingRemote(str(tmp_path / "remote"))
    remote.put(key, manifest)
    transport = Transport({key: manifest}, {ranked(key, PEERS)[0]: "lie"})
    client = client_for(remote, transport)
    assert client.get(key) == manifest and remote.opened == [key]
    assert not client.health.usable(ranked(key, PEERS)[0])


def test_what_a_key_promises_is_checked_decoded(world):
    key, stored, _data, _remote = world
    assert b"".join(verifier_for(key, "it")(io.BytesIO(stored))) == stored
    with pytest.raises(BlobCorruptError, match="it is corrupt"):
        list(verifier_for(key, "it")(io.BytesIO(lz4(b"something else"))))


@pytest.mark.parametrize("doc, message", [
    ({"peers": "https://a:1", "secret": SECRET}, '"peers" must be a list'),
    ({"peers": ["http://a:1"], "secret": SECRET}, "is not a peer address"),
    ({"peers": ["https://a"], "secret": SECRET}, "is not a peer address"),
    ({"peers": ["https://a:1"], "secret": "short"}, '"secret" must be one line of at least 16'),
    ({"peers": ["https://a:1"], "secret": SECRET, "ca_file": "/nonexistent"}, '"ca_file"'),
    ({"peers": ["https://a:1"], "secret": SECRET, "settings": {"max_upload": 3}}, '"settings" takes'),
    ({"peers": ["https://a:1"], "secret": SECRET, "peer": 1}, "unknown field"),
])
def test_a_bad_peers_file_is_one_line_naming_what_is_wrong(tmp_path, doc, message):
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PeerConfigError, match=message) as info:
        PeerConfig.from_file(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_the_peers_file_makes_self_a_peer_only_for_a_peer(tmp_path):
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"self": "10.0.0.2:22376", "peers": ["https://10.0.0.1:22376", "https://10.0.0.2:22376"],
                                "secret": SECRET, "settings": {"max_uploads": 2}}))
    as_peer = PeerConfig.from_file(str(path))
    assert (as_peer.me, as_peer.peers, as_peer.settings.max_uploads) == (
        "https://10.0.0.2:22376", ["https://10.0.0.1:22376"], 2)
    client = PeerConfig.from_file(str(path), as_peer=False)
    assert client.me is None and client.peers == ["https://10.0.0.1:22376", "https://10.0.0.2:22376"]
    assert os.path.exists(str(path))


def test_an_answer_that_closes_its_connection_is_read_like_any_other(tmp_path):
    """A peer may answer with `Connection: close` (busy, or as its server decides): the transport still reads
    it, with the stall timeout on the socket the answer came on."""
    import http.server
    import ssl
    import subprocess
    import threading
    from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.transport import HttpsTransport
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "1",
                    "-subj", "/CN=peer", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class Closing(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps({"holders": [], "retry_after": 0}).encode()
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Closing)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        peer = "https://127.0.0.1:%d" % server.server_address[1]
        transport = HttpsTransport(Settings(), str(tmp_path / "cert.pem"), SECRET)
        answer = transport.request(peer, "GET", "/peer/v1/x", {})
        assert answer.status == 503 and json.loads(answer.read()) == {"holders": [], "retry_after": 0}
        answer.close()
    finally:
        server.shutdown()
        server.server_close()
