"""An HTTP proxy between S3 clients and moto_server that injects faults and shapes traffic.

Faults (tests): it answers some requests with 503 SlowDown or 500, drops some connections before
or after forwarding them (so an applied write looks failed to the client), delays some, and cuts
some response bodies short; drawn from a seeded generator, counted by kind in `injected`.
Shaping (benchmarks/registry_bench.py, fanout_bench.py): a fixed delay per request and a bandwidth
cap per connection each way, so that parallel ranged GETs are judged under S3-like latency.
Counting (tests/integration/test_fanout.py, fanout_bench.py): every request forwarded to the
server is recorded (method, object path, Range, status, body bytes sent to the client), so a test
can tell how often, and which bytes of, each object were read."""

import http.client
import random
import socket
import threading
import time
from collections import Counter, namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAULTS = {"slowdown": 0.10, "error500": 0.05, "drop_before": 0.05, "drop_after": 0.05, "slow": 0.08, "truncate": 0.04}
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "expect"}
Forwarded = namedtuple("Forwarded", "method path query range status sent")
_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message>'
          '<RequestId>fault</RequestId></Error>')


class FaultProxy:
    def __init__(self, upstream, seed=0, faults=None, delay=0.0, rate=None):
        """`delay`: seconds added to every request; `rate`: bytes per second per connection, each way."""
        self.upstream = urlsplit(upstream).netloc
        self.delay, self.rate = delay, rate
        self.rng = random.Random(seed)
        self.faults = dict(FAULTS if faults is None else faults)
        self.injected = Counter()
        self.forwarded = 0
        self.records = []       # a Forwarded per request answered by the server, oldest first
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status, headers, body, cut=False):
                self.send_response(status)
                head = self.command == "HEAD"       # keeps the object's Content-Length, sends no body
                for key, value in headers:
                    if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                body = body[:len(body) // 2] if cut else body
                if head:
                    return 0
                if proxy.rate:
                    for start in range(0, len(body), 64 << 10):
                        self.wfile.write(body[start:start + (64 << 10)])
                        time.sleep(min(64 << 10, len(body) - start) / proxy.rate)
                else:
                    self.wfile.write(body)
                if cut:
                    self.close_connection = True
                return len(body)

            def _handle(self):
                body = self._body()
                if proxy.delay or proxy.rate:
                    time.sleep(proxy.delay + (len(body) / proxy.rate if proxy.rate else 0))
                fault = proxy.draw()
                if fault in ("slowdown", "error500"):
                    code, message = (("SlowDown", "Please reduce your request rate.") if fault == "slowdown"
                                     else ("InternalError", "We encountered an internal error. Please try again."))
                    self._send(503 if fault == "slowdown" else 500, [("Content-Type", "application/xml")],
                               (_ERROR % (code, message)).encode())
                    return
                if fault == "drop_before":
                    self._drop()
                    return
                if fault == "slow":
                    time.sleep(proxy.rng.uniform(0.2, 1.0))
                status, headers, payload = proxy.forward(self.command, self.path, self.headers, body)
                if fault == "drop_after":       # the write happened; the client cannot know
                    self._drop()
                    return
                sent = self._send(status, headers, payload, cut=(fault == "truncate" and len(payload) > 1))
                proxy.record(self.command, self.path, self.headers.get("Range"), status, sent)

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def draw(self):
        with self.lock:
            roll = self.rng.random()
            for fault, rate in self.faults.items():
                if roll < rate:
                    self.injected[fault] += 1
                    return fault
                roll -= rate
            return None

    def record(self, method, path, range_header, status, sent):
        parts = urlsplit(path)
        with self.lock:
            self.records.append(Forwarded(method, unquote(parts.path), parts.query, range_header, status, sent))

    def reset_counts(self):
        with self.lock:
            self.records = []

    def counts(self, method="GET"):
        """{object path ("/bucket/key" with path-style addressing): (requests, body bytes sent)} of the
        `method` requests forwarded since the start or reset_counts()."""
        found = {}
        with self.lock:
            for rec in self.records:
                if rec.method == method:
                    requests, sent = found.get(rec.path, (0, 0))
                    found[rec.path] = (requests + 1, sent + rec.sent)
        return found

    def forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.upstream, timeout=120)
        try:
            conn.request(method, path, body=body if method not in ("GET", "HEAD") or body else None,
                         headers={k: v for k, v in headers.items() if k.lower() not in _HOP})
            response = conn.getresponse()
            payload = b"" if method == "HEAD" else response.read()
            with self.lock:
                self.forwarded += 1
            return response.status, response.getheaders(), payload
        finally:
            conn.close()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
