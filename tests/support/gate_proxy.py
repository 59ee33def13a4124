"""A TCP proxy in front of a Docker daemon's unix socket that counts the bytes it passes and can stop
passing them at a chosen byte: fault tests place a kill by what the system is doing (after byte N of
`docker save`, or of the archive `docker load` receives), not by the clock."""

import socket
import threading

UP, DOWN = "up", "down"         # client -> daemon, daemon -> client


class GateProxy:
    """Listens on 127.0.0.1 (docker_host: tcp://127.0.0.1:PORT) and forwards to `unix_path`.

    `counts[UP]`/`counts[DOWN]` are the bytes passed each way over all connections. With `limit`, the
    proxy passes exactly `limit` bytes in `direction`, then holds the rest and sets `gated`: whoever
    sends or waits for them is stalled there, however fast or slow the machine is, until close().
    """

    def __init__(self, unix_path, direction=DOWN, limit=None):
        self.unix_path, self.direction, self.limit = unix_path, direction, limit
        self.counts = {UP: 0, DOWN: 0}
        self.gated = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.docker_host = "tcp://127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            daemon = socket.socket(socket.AF_UNIX)
            try:
                daemon.connect(self.unix_path)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, daemon]
            threading.Thread(target=self._pump, args=(client, daemon, UP), daemon=True).start()
            threading.Thread(target=self._pump, args=(daemon, client, DOWN), daemon=True).start()

    def _pump(self, source, sink, direction):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                with self._lock:
                    if direction == self.direction and self.limit is not None:
                        data = data[:max(self.limit - self.counts[direction], 0)]
                    self.counts[direction] += len(data)
                    reached = (direction == self.direction and self.limit is not None
                               and self.counts[direction] >= self.limit)
                if data:
                    sink.sendall(data)
                if reached:
                    self.gated.set()
                    self._closed.wait()         # hold everything after the gate
                    return
        except OSError:
            return

    def close(self):
        """Drop every connection as a killed client's would drop: shutdown() first, since close() alone
        leaves a socket that another thread is blocked on open, and Docker would go on waiting on it
        (Docker 28 then keeps the half-loaded layer's ingest locked, and the next load waits for it)."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
                    try:
                        step()
                    except OSError:
                        pass
