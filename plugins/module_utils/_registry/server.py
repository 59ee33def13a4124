# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""`dogestry serve`: the registry API (api.py, writer.py) behind cheroot, a threaded WSGI server.

cheroot (CherryPy's server) was chosen by measurement (benchmarks/serve_bench.py): the engine
and its remotes are blocking code, so a threaded server streams them without an executor hop,
keeps memory at one chunk per busy thread, and closes the connection when a body fails
mid-stream, which is how a blob that fails verification is refused.

A worker thread takes a connection once its request head has arrived whole: cheroot hands a
connection to a worker as soon as one byte is readable, and the worker then blocks reading the
rest, so a few clients trickling their headers (or, with TLS, their handshake) would hold every
worker. _HeaderGate (header_gate.py) reads heads (and TLS handshakes) without blocking, in one thread, within a
total deadline (HEADER_SECONDS) and a size bound (MAX_HEADER); bodies are the API's to bound.

May import _errors and the rest of _registry.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import types
from traceback import format_exc
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs
try:
    from cheroot import server as cheroot_server
    from cheroot import wsgi as cheroot_wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    HAS_CHEROOT = True
    CHEROOT_IMPORT_ERROR = None
except ImportError:
    HAS_CHEROOT = False
    CHEROOT_IMPORT_ERROR = traceback.format_exc()

    class _Missing:
        """Stands in for cheroot's base classes, so that this file imports without it (serve() refuses to run)."""

    cheroot_server = types.SimpleNamespace(HTTPRequest=_Missing, HTTPConnection=_Missing, ChunkedRFile=_Missing)
    cheroot_wsgi = types.SimpleNamespace(Server=_Missing, Gateway_10=_Missing)
    BuiltinSSLAdapter = _Missing

from .._errors import DogestryError
from .api import RegistryApi
from .header_gate import MAX_HEADER, MAX_WAITING, _HeaderGate
from .htpasswd import Htpasswd, Throttled
from .http import LOG, _REASONS, is_loopback, oci_error, parse_listen, printable
from .routes import ApiError, Response, error_response


DEFAULT_LISTEN = "127.0.0.1:22375"


# Request headers the API reads, by their WSGI names.
_HEADERS = {"HTTP_ACCEPT": "accept", "HTTP_RANGE": "range", "CONTENT_TYPE": "content-type",
            "CONTENT_LENGTH": "content-length", "HTTP_CONTENT_RANGE": "content-range"}


TIMEOUT = 30                # seconds a body read or a response write may stall (cheroot's socket timeout)


class _Body:
    """The response iterable: logs one line when the server is done with it (sent or aborted)."""

    def __init__(self, response: Response, log_line):
        self._body = [response.body] if isinstance(response.body, bytes) else response.body
        self._log_line = log_line
        self.sent = 0
        self.failed = None

    def __iter__(self):
        try:
            for chunk in self._body:
                self.sent += len(chunk)
                yield chunk
        except Exception as exc:
            self.failed = exc
            raise   # the server drops the connection: the client sees a short body and fails

    def close(self):
        close = getattr(self._body, "close", None)
        if close:
            close()
        self._log_line(self)


class _RequestBody:
    """wsgi.input as the API reads it: a body that breaks off or is malformed is the client's doing (400)."""

    def __init__(self, stream, length: Optional[str]):
        self._stream = stream
        self._length = int(length) if length and length.isdigit() else None
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except (ValueError, OSError) as exc:    # cheroot: a bad chunk; the socket: timed out or reset
            raise ApiError(400, "BLOB_UPLOAD_INVALID", "the request body broke off after %d bytes: %s"
                           % (self._read, printable(str(exc), 100)))
        self._read += len(data)
        if not data and size != 0 and self._length is not None and self._read < self._length:
            raise ApiError(400, "BLOB_UPLOAD_INVALID", "the request body ended after %d of its %d bytes"
                           % (self._read, self._length))
        return data


class WsgiApp:
    def __init__(self, api: RegistryApi, users: Optional[Htpasswd] = None):
        self.api = api
        self.users = users

    def __call__(self, environ, start_response):
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        client = environ.get("REMOTE_ADDR", "-")
        query = {key: values[0] for key, values in
                 parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
        headers: Dict[str, List[str]] = {name: [environ[key]] for key, name in _HEADERS.items() if environ.get(key)}
        target = printable(path + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else ""))
        try:
            response = self._refused(method, path, environ.get("HTTP_AUTHORIZATION"), client)
            if response is None:
                body = environ.get("wsgi.input")
                body = _RequestBody(body, environ.get("CONTENT_LENGTH")) if body is not None else None
                response = self.api.handle(method, path, query, headers, body=body)
        except Exception:  # a bug, not a remote failure: answer 500 and keep serving
            LOG.error("internal error on %s %s: %s", printable(method, 20), target, printable(format_exc(), 4000))
            response = error_response(ApiError(500, "UNKNOWN", "internal error"), method == "HEAD")

        def log_line(body):
            self.api.metrics.request(method, response.status, body.sent, path, time.monotonic() - started)
            outcome = "aborted: %s" % printable(str(body.failed)) if body.failed else "ok"
            LOG.info('%s "%s %s" %d %d %.3fs %s', client, printable(method, 20), target, response.status, body.sent,
                     time.monotonic() - started, outcome)

        start_response("%d %s" % (response.status, _REASONS.get(response.status, "")), response.headers)
        return _Body(response, log_line)

    def _refused(self, method: str, path: str, authorization: Optional[str], client: str) -> Optional[Response]:
        """The answer to a request without valid credentials (where they are required), else None."""
        if self.users is None:
            return None
        head = method == "HEAD"
        try:
            if self.users.check(authorization, client):
                return None
        except Throttled as exc:
            return error_response(ApiError(429, "TOOMANYREQUESTS", "too many failed logins from this address: %s" % exc,
                                           [("Retry-After", str(int(math.ceil(exc.retry_after))))]), head)
        if path == "/healthz":          # liveness for load balancers and service checks, and nothing more
            return self.api.health(head, detailed=False)
        return error_response(ApiError(401, "UNAUTHORIZED", "authentication required",
                                       [("WWW-Authenticate", 'Basic realm="dogestry"'),
                                        ("Docker-Distribution-API-Version", "registry/2.0")]), head)


class _Request(cheroot_server.HTTPRequest):
    def simple_response(self, status, msg=""):
        """cheroot's own answers (a malformed request line or header, a timeout), with an OCI error body."""
        code = int(str(status)[:3])
        body = oci_error(code, msg or str(status)[4:]) if code >= 400 else msg.encode("latin-1")
        if code in (413, 414):
            self.close_connection = True
        head = "%s %s\r\nContent-Length: %d\r\nContent-Type: application/json\r\n%s\r\n" % (
            self.server.protocol, status, len(body), "Connection: close\r\n" if self.close_connection else "")
        try:
            self.conn.wfile.write(head.encode("latin-1") + body)
        except OSError:
            pass


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    handshaken = False          # TLS: the gate has completed the handshake


class _Gateway(cheroot_wsgi.Gateway_10):
    def start_response(self, status, headers, exc_info=None):
        # A request body the app did not read (a refused or failed write) is not drained: cheroot would
        # read all of it, at the client's pace, before answering. The connection closes instead.
        body = self.req.rfile
        if getattr(body, "remaining", 0) or (isinstance(body, cheroot_server.ChunkedRFile) and not body.closed):
            self.req.close_connection = True
        return cheroot_wsgi.Gateway_10.start_response(self, status, headers, exc_info)


class _TlsAdapter(BuiltinSSLAdapter):
    def wrap(self, sock):
        """TLS without the handshake: cheroot would do it in its one accepting thread, where a client that
        never finishes it stops every other connection; the header gate does it without blocking."""
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), {}


class _Server(cheroot_wsgi.Server):
    ConnectionClass = _Connection

    def __init__(self, *args, **kwargs):
        cheroot_wsgi.Server.__init__(self, *args, **kwargs)
        self.gateway = _Gateway
        self.max_request_header_size = MAX_HEADER       # what the gate lets through; a second bound
        self.gate = None

    def prepare(self):
        cheroot_wsgi.Server.prepare(self)
        self.gate = _HeaderGate(lambda conn: cheroot_wsgi.Server.process_conn(self, conn), self.timeout,
                                max_waiting=min(MAX_WAITING, _open_files_limit() // 4))
        self.gate.start()

    def process_conn(self, conn):
        self.gate.admit(conn)

    def stop(self):
        cheroot_wsgi.Server.stop(self)
        if self.gate is not None:
            self.gate.stop()

    def error_log(self, msg="", level=20, traceback=False):     # pylint: disable=redefined-outer-name
        """cheroot's messages (a client that reset, a worker's crash), one escaped line each."""
        text = printable(str(msg), 1000)
        if traceback:
            text += " " + printable(format_exc(), 4000)
        LOG.log(level if level >= logging.WARNING else logging.DEBUG, "http: %s", text)


def _open_files_limit() -> int:
    """The soft limit on open files, raised to the hard limit: every waiting client holds a descriptor."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
            if wanted > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
        return soft
    except (ImportError, ValueError, OSError):
        return 1024


def _build_server(app, listen: str, threads: int, tls: Optional[Tuple[str, str]]) -> "_Server":
    host, port = parse_listen(listen)
    # A listen backlog of 128, not cheroot's 5: Docker opens a dozen connections at once (each request tries
    # TLS first on a plain-http registry), and a connection the backlog drops waits 1 s for its SYN retry.
    server = _Server((host, port), app, numthreads=threads, server_name="dogestry", timeout=TIMEOUT,
                     request_queue_size=128)
    server.stats["Enabled"] = False
    if tls:
        for path in tls:
            if not os.path.isfile(path):
                raise DogestryError("TLS file %s does not exist" % path)
        try:
            server.ssl_adapter = _TlsAdapter(tls[0], tls[1])
        except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
            raise DogestryError("cannot use the TLS certificate %s and key %s: %s" % (tls[0], tls[1], exc))
    return server


def serve(api: RegistryApi, listen: str = DEFAULT_LISTEN, threads: int = 16, ready=None,
          tls: Optional[Tuple[str, str]] = None, htpasswd: Optional[str] = None, peers=None) -> None:
    """Serve until SIGTERM/SIGINT. `ready(host, port)` is called once the socket is bound.

    `tls`: (certificate chain file, private key file); `htpasswd`: a bcrypt htpasswd file whose
    users alone may use it (Basic auth). Both are required to listen on anything but loopback.
    `peers`: (WSGI app, HOST:PORT, tls, threads) of the fleet-peer listener (_peers.PeerApp, which checks
    the fleet's secret itself), served beside the registry; it always needs TLS."""
    if not HAS_CHEROOT:
        raise DogestryError("the Python package 'cheroot' is required for dogestry serve: pip install cheroot")
    host, _port = parse_listen(listen)
    if not is_loopback(host) and not (tls and htpasswd):
        raise DogestryError("--listen %s is not a loopback address: serving other hosts needs TLS (--tls-cert, "
                            "--tls-key) and credentials (--htpasswd)" % listen)
    users = Htpasswd(htpasswd) if htpasswd else None
    server = _build_server(WsgiApp(api, users), listen, threads, tls)
    peer_server = None
    if peers is not None:
        peer_app, peer_listen, peer_tls, peer_threads = peers
        if not peer_tls:
            raise DogestryError("--peer-listen %s needs TLS (--peer-tls-cert, --peer-tls-key)" % peer_listen)
        peer_server = _build_server(peer_app, peer_listen, peer_threads, peer_tls)

    def stop(signum, _frame):
        LOG.info("signal %d: shutting down", signum)
        raise SystemExit(0)     # cheroot's safe_start stops the server on SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.prepare()
    except OSError as exc:
        raise DogestryError("cannot listen on %s: %s" % (listen, exc.strerror or exc))
    if peer_server is not None:
        try:
            peer_server.prepare()
        except OSError as exc:
            server.stop()
            raise DogestryError("cannot listen on %s for peers: %s" % (peers[1], exc.strerror or exc))
        threading.Thread(target=peer_server.serve, daemon=True, name="dogestry-peer-listener").start()
        LOG.info("serving peers on https://%s:%d%s", peer_server.bind_addr[0], peer_server.bind_addr[1], "/peer/v1/")
    bound = server.bind_addr
    LOG.info("serving %s on %s://%s:%d/v2/%s", api.repo.url, "https" if tls else "http", bound[0], bound[1],
             " (Basic auth: %d user(s))" % len(users.users) if users else "")
    if ready:
        ready(bound[0], bound[1])
    try:
        server.serve()
    except SystemExit:
        pass
    finally:
        server.stop()
        if peer_server is not None:
            peer_server.stop()
        LOG.info("stopped")


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("dogestry")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
