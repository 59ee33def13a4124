"""A static HTTP/1.1 file server that behaves like a CDN in a bad hour: it serves a directory with ETag,
Last-Modified, Range and If-Range, and injects faults: 503 Service Unavailable, a connection reset before
any response, a body cut short (the full Content-Length announced, half of it sent, the connection closed),
and `change` (a cut body, after which the file changes, so that resuming it must be refused).

Faults come from `script` ({url path, or "METHOD path": [fault, ...]}, consumed in order, None for a normal
answer) or, for a request with no script, from a generator seeded with `seed` at the rates `rates`, never more than `in_a_row`
faults in a row for one path (so a client with a few retries always gets through)."""

import email.utils
import hashlib
import http.server
import os
import random
import re
import socket
import threading
from collections import Counter, namedtuple
from urllib.parse import unquote, urlsplit

Request = namedtuple("Request", "method path range if_range fault")
FAULTS = ("503", "reset", "truncate")


class FlakyServer:
    def __init__(self, root, script=None, seed=0, rates=None, in_a_row=2):
        self.root, self.script = root, {path: list(faults) for path, faults in (script or {}).items()}
        self.seed, self.rng = seed, random.Random(seed)
        self.rates, self.in_a_row = dict(rates or {}), in_a_row
        self.requests, self.injected = [], Counter()
        self._streak = Counter()
        self._lock = threading.Lock()
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                flaky._answer(self, head=True)

            def do_GET(self):
                flaky._answer(self, head=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/" % self.server.server_port
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, method, path):
        with self._lock:
            for key in ("%s %s" % (method, path), path):
                if key in self.script:
                    return self.script[key].pop(0) if self.script[key] else None
            roll, fault = self.rng.random(), None
            for name, rate in sorted(self.rates.items()):
                if roll < rate:
                    fault = name
                    break
                roll -= rate
            if fault and self._streak[path] >= self.in_a_row:
                fault = None
            self._streak[path] = self._streak[path] + 1 if fault else 0
            return fault

    def _answer(self, handler, head):
        path = unquote(urlsplit(handler.path).path)
        fault = self._fault(handler.command, path)
        with self._lock:
            self.requests.append(Request(handler.command, path, handler.headers.get("Range"),
                                         handler.headers.get("If-Range"), fault))
            if fault:
                self.injected[fault] += 1
        if fault == "reset":
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "503":
            body = b"Service Unavailable"
            handler.send_response(503)
            handler.send_header("Retry-After", "0")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(b"" if head else body)
            return
        file_path = os.path.join(self.root, *path.lstrip("/").split("/"))
        try:
            with open(file_path, "rb") as f:
                data = f.read()
            modified = os.stat(file_path).st_mtime
        except OSError:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:32]
        start = 0
        match = re.match(r"^bytes=(\d+)-$", handler.headers.get("Range") or "")
        if match and handler.headers.get("If-Range") in (None, etag):
            start = int(match.group(1))
        body = data[start:]
        handler.send_response(206 if start else 200)
        if start:
            handler.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        handler.send_header("ETag", etag)
        handler.send_header("Last-Modified", email.utils.formatdate(modified, usegmt=True))
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if head:
            return
        if fault in ("truncate", "change"):
            if fault == "change":
                # Changed before the cut, not after: a client quick to resume must already find the new version.
                with open(file_path, "ab") as f:
                    f.write(b"changed")
            handler.wfile.write(body[:len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        handler.wfile.write(body)
