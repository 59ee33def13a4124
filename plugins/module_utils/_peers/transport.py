# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""HTTP(S) connections to peers: a small pool per peer, one-line reasons for a peer's failures.

May import _errors and _peers.config.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .config import POOL, PeerFailure
from .policy import Settings


class _Answer:
    """A peer's answer: status and headers, the body as a reader; its connection goes back to the pool
    once the body was read whole."""

    def __init__(self, transport: "HttpsTransport", peer: str, conn, sock, response, stall: float):
        self._transport, self._peer, self._conn, self._response = transport, peer, conn, response
        self.status = response.status
        sock.settimeout(stall)      # not conn.sock: http.client hands the socket to an answer that closes it

    def header(self, name: str) -> Optional[str]:
        return self._response.getheader(name)

    def read(self, size: int = -1) -> bytes:
        return self._response.read(size if size is not None and size >= 0 else None)

    def close(self) -> None:
        if self._conn is None:
            return
        if self._response.isclosed() and not self._response.will_close:
            self._transport.release(self._peer, self._conn)
        else:
            self._conn.close()
        self._conn = None


class HttpsTransport:
    """HTTPS to peers, with the fleet secret, keep-alive connections, and the timeouts of `settings`."""

    def __init__(self, settings: Settings, ca_file: Optional[str], secret: str):
        self.settings = settings
        self._context = ssl.create_default_context(cafile=ca_file)
        self._auth = "Bearer " + secret
        self.on_handshake: Optional[Callable[[float], None]] = None
        self._idle: Dict[str, List[http.client.HTTPSConnection]] = {}
        self._lock = threading.Lock()

    def _connection(self, peer: str) -> Tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            idle = self._idle.get(peer)
            if idle:
                return idle.pop(), True
        parts = urlsplit(peer)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=self._context,
                                           timeout=self.settings.connect_timeout)
        try:
            started = time.monotonic()
            conn.connect()
            if self.on_handshake is not None:       # a round trip through the peer's process: an answer time
                self.on_handshake(time.monotonic() - started)
        except ssl.SSLError as exc:
            conn.close()
            raise PeerFailure("refused", "TLS with %s failed: %s" % (peer, exc))
        except socket.timeout:
            conn.close()
            raise PeerFailure("timeout", "%s did not accept a connection within %.1f s" % (peer, self.settings.connect_timeout))
        except OSError as exc:
            conn.close()
            raise PeerFailure("refused", "cannot reach %s: %s" % (peer, exc.strerror or exc))
        return conn, False

    def release(self, peer: str, conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(peer, [])
            if len(idle) < POOL:
                idle.append(conn)
                return
        conn.close()

    def request(self, peer: str, method: str, path: str, headers: Dict[str, str],
                answer_timeout: Optional[float] = None) -> _Answer:
        """The answer (its head within `answer_timeout`, default the settings'), or PeerFailure. A kept-alive
        connection the peer closed meanwhile is replaced once, silently."""
        headers = dict(headers, Authorization=self._auth)
        answer_timeout = answer_timeout or self.settings.answer_timeout
        for _attempt in range(2):
            conn, reused = self._connection(peer)
            sock = conn.sock
            try:
                sock.settimeout(answer_timeout)
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
            except socket.timeout:
                conn.close()
                raise PeerFailure("timeout", "%s did not answer within %.2f s" % (peer, answer_timeout))
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:
                    continue
                raise PeerFailure("broken", "%s: %s" % (peer, _one_line(exc) or type(exc).__name__))
            return _Answer(self, peer, conn, sock, response, self.settings.stall_timeout)
        raise PeerFailure("broken", "%s closed every connection" % peer)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def printable(text: str, limit: int = 300) -> str:
    """Request text as a log line may hold it (as the registry server's): escaped, so that a request cannot forge a line."""
    return text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')
