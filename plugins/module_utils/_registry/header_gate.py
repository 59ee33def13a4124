# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The header gate: connections are handed to a worker thread only when their request head is whole,
so slow or silent clients hold back no worker.

May import _errors only.
"""

from __future__ import annotations

import _pyio
import collections
import re
import selectors
import socket
import ssl
import threading
import time
from traceback import format_exc
try:
    from cheroot.makefile import StreamReader
except ImportError:  # server.py's serve() refuses to run without cheroot and says why
    class StreamReader:  # pylint: disable=too-few-public-methods
        """Stands in for cheroot's reader, so that this file imports without it."""

from .http import LOG, _REASONS, oci_error, printable


HEADER_SECONDS = 20.0       # a request head (and a TLS handshake) must arrive whole within this
MAX_HEADER = 64 << 10       # bytes of a request head (Docker's bearer tokens take a few KiB)
MAX_WAITING = 1000          # connections whose head is still arriving; beyond, the longest-waiting is dropped
_BARE_LF = re.compile(rb"(?:^|[^\r])\n")


# ---- the HTTP server ---------------------------------------------------------------------------

def head_complete(data: bytes) -> bool:
    """Whether `data` holds a whole request head, or enough of one for cheroot to refuse it at once
    (HTTP lines end in CRLF: a bare LF is a 400)."""
    return b"\r\n\r\n" in data or _BARE_LF.search(data) is not None


class _HeadFirstIO(socket.SocketIO):
    """A socket's input, after the bytes the header gate already read from it."""

    def __init__(self, sock, head: bytes):
        socket.SocketIO.__init__(self, sock, "rb")
        self.head = head

    def readinto(self, b):
        if self.head:
            count = min(len(b), len(self.head))
            b[:count], self.head = self.head[:count], self.head[count:]
            return count
        return socket.SocketIO.readinto(self, b)


class _HeadFirstReader(StreamReader):
    """cheroot's socket reader, over a _HeadFirstIO."""

    def __init__(self, sock, head: bytes, bufsize: int):  # pylint: disable=super-init-not-called
        # StreamReader's own __init__ would make a plain SocketIO: build its BufferedReader over ours
        _pyio.BufferedReader.__init__(self, _HeadFirstIO(sock, head), bufsize)  # pylint: disable=non-parent-init-called
        self.bytes_read = 0

    def has_data(self):
        return StreamReader.has_data(self) or bool(self.raw.head)


class _Waiting:
    """A connection whose request head is still arriving."""

    def __init__(self, conn, deadline: float):
        self.conn, self.deadline = conn, deadline
        self.fd = conn.socket.fileno()
        self.head = b""
        self.events = 0


class _HeaderGate:
    """Holds connections until their request head has arrived whole, reading it (and a TLS handshake)
    without blocking, in one thread; then hands them to the worker pool (`dispatch`). A head that takes
    longer than HEADER_SECONDS gets 408, one over MAX_HEADER gets 431; past MAX_WAITING connections
    waiting, the one that has waited longest is dropped."""

    def __init__(self, dispatch, timeout: float, max_waiting: int = MAX_WAITING):
        self._dispatch, self._timeout, self._max_waiting = dispatch, timeout, max_waiting
        self._clock = time.monotonic
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._arrivals: "collections.deque" = collections.deque()
        self._waiting: "collections.OrderedDict[int, _Waiting]" = collections.OrderedDict()   # oldest first
        self._dropped, self._dropped_logged = 0, 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="dogestry-header-gate")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(5)

    def admit(self, conn) -> None:
        """Take a connection (new, or kept alive for its next request): called from cheroot's threads."""
        self._arrivals.append(conn)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:         # the pipe is full: a wake-up is pending anyway
            pass

    def _run(self) -> None:
        while not self._stopping:
            for key, _events in self._selector.select(timeout=0.5):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._safely(self._advance, key.data, key.data.conn)
            while self._arrivals:
                conn = self._arrivals.popleft()
                self._safely(self._take, conn, conn)
            self._expire()
        for waiting in list(self._waiting.values()):
            self._close(waiting)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _safely(self, step, argument, conn) -> None:
        """One connection's step; a failure (a bug) costs that connection, never the gate thread."""
        try:
            step(argument)
        except Exception:  # pylint: disable=broad-except
            LOG.error("header gate: %s", printable(format_exc(), 4000))
            waiting = self._waiting.get(getattr(conn.socket, "fileno", lambda: -1)())
            if waiting is not None and waiting.conn is conn:
                self._close(waiting)
            else:
                _close_quietly(conn)

    def _take(self, conn) -> None:
        try:
            waiting = _Waiting(conn, self._clock() + HEADER_SECONDS)
            while conn.rfile.has_data():        # what a kept-alive connection had read ahead
                waiting.head += conn.rfile.read1(MAX_HEADER)
            conn.socket.settimeout(0.0)
        except OSError:
            _close_quietly(conn)
            return
        if len(self._waiting) >= self._max_waiting:
            self._close(next(iter(self._waiting.values())))
            self._dropped += 1
            if self._clock() - self._dropped_logged > 60:
                self._dropped_logged = self._clock()
                LOG.warning("slow clients: %d connection(s) dropped so far whose request head had not arrived "
                            "(at most %d wait at once)", self._dropped, self._max_waiting)
        self._waiting[waiting.fd] = waiting
        self._advance(waiting)

    def _advance(self, waiting: _Waiting) -> None:
        conn = waiting.conn
        try:
            if isinstance(conn.socket, ssl.SSLSocket) and not conn.handshaken:
                conn.socket.do_handshake()
                conn.handshaken = True
            while not head_complete(waiting.head) and len(waiting.head) <= MAX_HEADER:
                data = conn.socket.recv(1 << 16)
                if not data:
                    self._close(waiting)        # the client went away
                    return
                waiting.head += data
        except ssl.SSLWantWriteError:
            self._watch(waiting, selectors.EVENT_WRITE)
            return
        except (BlockingIOError, ssl.SSLWantReadError):
            self._watch(waiting, selectors.EVENT_READ)
            return
        except OSError:                         # reset, or not TLS on a TLS port
            self._close(waiting)
            return
        if not head_complete(waiting.head) or waiting.head.find(b"\r\n\r\n") + 4 > MAX_HEADER:
            self._refuse(waiting, 431, "the request head is over %d bytes" % MAX_HEADER)
            return
        self._forget(waiting)
        try:
            conn.socket.settimeout(self._timeout)
        except OSError:
            _close_quietly(conn)
            return
        conn.rfile = _HeadFirstReader(conn.socket, waiting.head, conn.rbufsize)
        self._dispatch(conn)

    def _watch(self, waiting: _Waiting, events: int) -> None:
        if not waiting.events:
            self._selector.register(waiting.fd, events, waiting)
        elif waiting.events != events:
            self._selector.modify(waiting.fd, events, waiting)
        waiting.events = events

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting:
            waiting = next(iter(self._waiting.values()))
            if waiting.deadline > now:
                break           # deadlines are in arrival order
            if isinstance(waiting.conn.socket, ssl.SSLSocket) and not waiting.conn.handshaken:
                self._close(waiting)            # no TLS yet to answer in
            else:
                self._refuse(waiting, 408, "the request head did not arrive within %.0f s" % HEADER_SECONDS)

    def _refuse(self, waiting: _Waiting, status: int, message: str) -> None:
        body = oci_error(status, message)
        try:
            waiting.conn.socket.send(("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                      "Connection: close\r\n\r\n" % (status, _REASONS[status], len(body))).encode() + body)
        except OSError:
            pass                # best effort: the connection goes either way
        self._close(waiting)

    def _forget(self, waiting: _Waiting) -> None:
        if waiting.events:
            self._selector.unregister(waiting.fd)
            waiting.events = 0
        self._waiting.pop(waiting.fd, None)

    def _close(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        _close_quietly(waiting.conn)


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except OSError:
        pass
