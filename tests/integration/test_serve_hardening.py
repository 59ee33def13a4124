"""`dogestry serve` against hostile and clumsy clients, over raw sockets: slow heads and TLS handshakes,
malformed requests, a slow client of a blob others want, a full cache disk. Every refusal is a 4xx with
an OCI error body, nothing from a request reaches the log unescaped, and normal clients are answered."""

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import subprocess
import threading
import time

import bcrypt
import pytest

from dogestry_cli import MiB

BOUND = 60      # seconds within which what must happen happens (generous: the machine is shared)


@pytest.fixture
def remote(tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    path = str(tmp_path / "remote")
    Repository(LocalRemote(path)).check(create=True)
    return path


def push_blob(server, name, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    try:
        conn.request("POST", "/v2/%s/blobs/uploads/?digest=%s" % (name, digest), body=data,
                     headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        assert response.status == 201, response.read()
    finally:
        conn.close()
    return digest


def raw_request(port, data, shut_write=False, tls=None):
    """Send `data` as is; return (status, headers, body) of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
                if len(body) >= int(headers.get("Content-Length", "-1")) >= 0:
                    break
    finally:
        sock.close()
    head, _sep, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}, body


def assert_oci_error(status, headers, body, expected_status):
    assert status == expected_status, (status, body)
    assert headers["content-type"] == "application/json", headers
    assert json.loads(body)["errors"][0]["code"], body


class Tricklers:
    """`count` connections that each send one more byte of `start` + filler every second, from one thread."""

    def __init__(self, port, count, start, tls=False):
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=BOUND) for _n in range(count)]
        for sock in self.socks:
            sock.sendall(start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self):
        while not self._stop.wait(1.0):
            for sock in self.socks:
                try:
                    sock.send(b"a")
                except OSError:
                    pass        # the server closed it: the deadline passed

    def close(self):
        self._stop.set()
        self._thread.join(BOUND)
        for sock in self.socks:
            sock.close()


def test_a_hundred_slow_heads_hold_back_no_client(remote, tmp_path, servers):
    server = servers(remote, tmp_path)
    slow = Tricklers(server.port, 100, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        time.sleep(3)           # every worker thread would be reading a slow head by now
        for path in ("/v2/", "/healthz"):
            assert server.request("GET", path)[0] == 200, path
        # The slow ones get 408 once their head is HEADER_SECONDS (20 s) late.
        slow._stop.set()
        answers = []
        for sock in slow.socks[:5]:
            sock.settimeout(BOUND + 30)
            answers.append(sock.recv(4096))
        assert all(answer.startswith(b"HTTP/1.1 408 ") and b'"errors"' in answer for answer in answers), answers
    finally:
        slow.close()
    status, headers, body = raw_request(server.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 << 10)
                                        + b"\r\n\r\n")
    assert_oci_error(status, headers, body, 431)


def test_slow_tls_handshakes_hold_back_no_client(remote, tmp_path, servers):
    cert, key, users = (str(tmp_path / f) for f in ("cert.pem", "key.pem", "htpasswd"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(users, "wb") as f:
        f.write(b"ci:" + bcrypt.hashpw(b"pass", bcrypt.gensalt(rounds=4)) + b"\n")
    server = servers(remote, tmp_path, args=["--tls-cert", cert, "--tls-key", key, "--htpasswd", users])
    # A TLS record header announcing a 512-byte handshake message, then a byte a second.
    slow = Tricklers(server.port, 10, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    trusted = ssl.create_default_context(cafile=cert)
    try:
        time.sleep(3)
        status, headers, body = raw_request(server.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", tls=trusted)
        assert_oci_error(status, headers, body, 401)
        auth = base64.b64encode(b"ci:pass").decode()
        status, _headers, body = raw_request(server.port, ("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s"
                                                           "\r\n\r\n" % auth).encode(), tls=trusted)
        assert status == 200 and json.loads(body)["remote"] == remote
    finally:
        slow.close()
    status, _headers, body = raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", tls=trusted)
    assert status == 200 and json.loads(body) == {"status": "ok"}      # liveness, and not where the remote is


def test_malformed_requests_get_4xx_with_an_oci_body_and_escaped_log_lines(remote, tmp_path, servers):
    server = servers(remote, tmp_path)
    data = os.urandom(3000)
    digest = push_blob(server, "team/app", data)
    blob = "/v2/team/app/blobs/" + digest
    cases = [
        (b"POST /v2/team/app/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello"
         % digest.encode(), 400),
        (b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
        (b"GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=%s-\r\n\r\n" % (blob.encode(), b"9" * 5000), 416),
        (b"GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-%s\r\nConnection: close\r\n\r\n" % (blob.encode(), b"9" * 5000), 200),
        (b"GET /v2/%s/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 300), 400),
        (b"GET /v2/a%0Afake-line%00/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n", 400),
    ]
    for request, expected in cases:
        status, headers, body = raw_request(server.port, request)
        if expected == 200:
            assert (status, body) == (206, data), request[:120]       # a range to "the end": the whole blob
            continue
        assert_oci_error(status, headers, body, expected)
        assert remote not in body.decode("latin-1"), body
    # A body the API does not read is not waited for (cheroot would drain it at the client's pace first).
    status, headers, _body = raw_request(server.port, b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 1000000\r\n\r\n")
    assert (status, headers.get("connection")) == (202, "close"), (status, headers)
    # A chunked PATCH that stops in the middle of a chunk.
    status, headers, _body = raw_request(server.port, b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 0\r\n\r\n")
    location = headers["location"].encode()
    status, headers, body = raw_request(server.port, b"PATCH %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        b"100\r\n0123456789" % location, shut_write=True)
    assert_oci_error(status, headers, body, 400)
    log = server.output()
    assert "Traceback" not in log and "\x00" not in log, log[-3000:]
    assert not [line for line in log.splitlines() if line.startswith("fake-line")], log[-3000:]
    assert "a\\nfake-line\\x00" in log, log[-3000:]


def test_a_slow_client_of_a_blob_holds_back_no_other_client_of_it(remote, tmp_path, servers):
    seed = random.randrange(1 << 30)
    data = random.Random(seed).randbytes(64 * MiB)
    server = servers(remote, tmp_path, args=["--cache-dir", str(tmp_path / "cache")])
    digest = push_blob(server, "team/big", data)
    # The first client reads one MiB of the blob, then 16 KiB a second (never so little that its
    # connection times out).
    leader = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
    stop = threading.Event()

    def read_slowly():
        while not stop.wait(1.0):
            try:
                leader.recv(16 << 10)
            except OSError:
                return
    try:
        leader.sendall(b"GET /v2/team/big/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % digest.encode())
        got = b""
        while len(got) < MiB:
            got += leader.recv(65536)
        slow = threading.Thread(target=read_slowly, daemon=True)
        slow.start()
        # A second client gets all of it meanwhile.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
        try:
            conn.request("GET", "/v2/team/big/blobs/" + digest)
            response = conn.getresponse()
            body = response.read()
        except socket.timeout:
            pytest.fail("the second client got no blob within %d s while the first one read slowly (seed %d)"
                        % (BOUND, seed))
        finally:
            conn.close()
        assert response.status == 200 and hashlib.sha256(body).hexdigest() == digest[7:], seed
    finally:
        stop.set()
        leader.close()


def test_a_full_cache_disk_serves_blobs_uncached(remote, tmp_path, servers):
    seed = random.randrange(1 << 30)
    data = random.Random(seed).randbytes(8 * MiB)
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        server = servers(remote, tmp_path, args=["--cache-dir", str(cache)])
        digest = push_blob(server, "team/big", data)
        for attempt in (1, 2):
            status, _headers, body = server.request("GET", "/v2/team/big/blobs/" + digest)
            assert status == 200 and hashlib.sha256(body).hexdigest() == digest[7:], (attempt, seed, len(body))
        assert "uncached" in server.output()
        server.stop()
    finally:
        subprocess.run(["umount", str(cache)], check=True)
