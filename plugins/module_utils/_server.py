# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""`dogestry serve`: the registry API (_registry_api, _registry_push) behind cheroot, a threaded WSGI server.

cheroot (CherryPy's server) was chosen by measurement (benchmarks/serve_bench.py): the engine
and its remotes are blocking code, so a threaded server streams them without an executor hop,
keeps memory at one chunk per busy thread, and closes the connection when a body fails
mid-stream, which is how a blob that fails verification is refused.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import signal
import sys
import time
import traceback
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs

try:
    from cheroot import wsgi as cheroot_wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    HAS_CHEROOT = True
    CHEROOT_IMPORT_ERROR = None
except ImportError:
    HAS_CHEROOT = False
    CHEROOT_IMPORT_ERROR = traceback.format_exc()

try:
    import bcrypt
    HAS_BCRYPT = True
except ImportError:
    HAS_BCRYPT = False

from ._errors import DogestryError
from ._registry_api import RegistryApi, Response

DEFAULT_LISTEN = "127.0.0.1:22375"
LOG = logging.getLogger("dogestry.serve")
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
            400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 415: "Unsupported Media Type", 416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 507: "Insufficient Storage"}
# Request headers the API reads, by their WSGI names.
_HEADERS = {"HTTP_ACCEPT": "accept", "HTTP_RANGE": "range", "CONTENT_TYPE": "content-type",
            "CONTENT_LENGTH": "content-length", "HTTP_CONTENT_RANGE": "content-range"}


def parse_listen(text: str) -> Tuple[str, int]:
    """'127.0.0.1:22375', '[::1]:22375', ':22375' (loopback) -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise DogestryError("--listen %r: write it as HOST:PORT, e.g. 127.0.0.1:22375" % text)
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class Htpasswd:
    """Users of a Docker registry htpasswd file (`user:bcrypt-hash` lines, as `htpasswd -B` writes)."""

    def __init__(self, path: str):
        if not HAS_BCRYPT:
            raise DogestryError("--htpasswd needs the Python package 'bcrypt': pip install bcrypt")
        self.users: Dict[str, bytes] = {}
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise DogestryError("--htpasswd %s: %s" % (path, exc.strerror or exc))
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(b"#"):
                continue
            user, sep, hashed = line.partition(b":")
            if not sep or not hashed.startswith((b"$2y$", b"$2b$", b"$2a$")):
                raise DogestryError("--htpasswd %s line %d: expected user:bcrypt-hash (htpasswd -B)" % (path, number))
            self.users[user.decode("utf-8", "replace")] = hashed
        if not self.users:
            raise DogestryError("--htpasswd %s names no user" % path)
        self._good: Dict[str, bool] = {}   # sha256 of accepted credentials: bcrypt costs milliseconds a check

    def check(self, authorization: Optional[str]) -> bool:
        if not authorization or not authorization.startswith("Basic "):
            return False
        key = hashlib.sha256(authorization.encode("utf-8", "replace")).hexdigest()
        if key in self._good:
            return True
        try:
            user, _sep, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None or not bcrypt.checkpw(password.encode(), hashed.replace(b"$2y$", b"$2b$", 1)):
            return False
        self._good[key] = True
        return True


_UNAUTHORIZED = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}'


class WsgiApp:
    def __init__(self, api: RegistryApi, users: Optional[Htpasswd] = None):
        self.api = api
        self.users = users

    def __call__(self, environ, start_response):
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        query = {key: values[0] for key, values in
                 parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
        headers: Dict[str, List[str]] = {name: [environ[key]] for key, name in _HEADERS.items() if environ.get(key)}
        try:
            if self.users is not None and path != "/healthz" and not self.users.check(environ.get("HTTP_AUTHORIZATION")):
                response = Response(401, [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(_UNAUTHORIZED))),
                                          ("WWW-Authenticate", 'Basic realm="dogestry"'),
                                          ("Docker-Distribution-API-Version", "registry/2.0")],
                                    _UNAUTHORIZED, len(_UNAUTHORIZED))
            else:
                response = self.api.handle(method, path, query, headers, body=environ.get("wsgi.input"))
        except Exception:  # a bug, not a remote failure: answer 500 and keep serving
            LOG.error("internal error on %s %s: %s", method, path, traceback.format_exc())
            body = b'{"errors":[{"code":"UNKNOWN","message":"internal error"}]}'
            response = Response(500, [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))], body, len(body))
        client = environ.get("REMOTE_ADDR", "-")
        target = path + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")

        def log_line(body):
            self.api.metrics.request(method, response.status, body.sent)
            outcome = "aborted: %s" % body.failed if body.failed else "ok"
            LOG.info('%s "%s %s" %d %d %.3fs %s', client, method, target[:300], response.status, body.sent,
                     time.monotonic() - started, outcome)

        start_response("%d %s" % (response.status, _REASONS.get(response.status, "")), response.headers)
        return _Body(response, log_line)


def serve(api: RegistryApi, listen: str = DEFAULT_LISTEN, threads: int = 16, ready=None,
          tls: Optional[Tuple[str, str]] = None, htpasswd: Optional[str] = None) -> None:
    """Serve until SIGTERM/SIGINT. `ready(host, port)` is called once the socket is bound.

    `tls`: (certificate chain file, private key file); `htpasswd`: a bcrypt htpasswd file whose
    users alone may use it (Basic auth). Both are required to listen on anything but loopback."""
    if not HAS_CHEROOT:
        raise DogestryError("the Python package 'cheroot' is required for dogestry serve: pip install cheroot")
    host, port = parse_listen(listen)
    if not is_loopback(host) and not (tls and htpasswd):
        raise DogestryError("--listen %s is not a loopback address: serving other hosts needs TLS (--tls-cert, "
                            "--tls-key) and credentials (--htpasswd)" % listen)
    users = Htpasswd(htpasswd) if htpasswd else None
    # A listen backlog of 128, not cheroot's 5: Docker opens a dozen connections at once (each request tries
    # TLS first on a plain-http registry), and a connection the backlog drops waits 1 s for its SYN retry.
    server = cheroot_wsgi.Server((host, port), WsgiApp(api, users), numthreads=threads,
                                 server_name="dogestry", timeout=30, request_queue_size=128)
    server.stats["Enabled"] = False
    if tls:
        for path in tls:
            if not os.path.isfile(path):
                raise DogestryError("TLS file %s does not exist" % path)
        try:
            server.ssl_adapter = BuiltinSSLAdapter(tls[0], tls[1])
        except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
            raise DogestryError("cannot use the TLS certificate %s and key %s: %s" % (tls[0], tls[1], exc))

    def stop(signum, _frame):
        LOG.info("signal %d: shutting down", signum)
        raise SystemExit(0)     # cheroot's safe_start stops the server on SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.prepare()
    except OSError as exc:
        raise DogestryError("cannot listen on %s: %s" % (listen, exc.strerror or exc))
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
        LOG.info("stopped")


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("dogestry")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
