# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""What the commands print: results as text or JSON, progress on a terminal.

May import _errors and _ops.common.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Dict, Optional, Tuple


class Output:
    def __init__(self, as_json: bool, stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.progress = not as_json and sys.stderr.isatty()

    def result(self, doc: Dict, line: str) -> None:
        self.stream.write((json.dumps(doc, sort_keys=True) if self.as_json else line) + "\n")
        self.stream.flush()

    def step(self, text: str) -> None:
        if self.progress:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()

    def done(self) -> None:
        if self.progress:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def error(self, message: str, status: int) -> int:
        """One line on stderr; with --json, scripts get the same as a document on stdout."""
        self.done()
        message = message.replace("\n", " ")
        sys.stderr.write("dogestry: error: %s\n" % message)
        if self.as_json:
            self.result({"error": message, "exit_status": status}, "")
        return status


class Progress:
    """A progress bar on stderr (a terminal only): layers done of the total, bytes, rate, ETA, and the layer
    whose bytes are moving.

    advance() (a layer done, its bytes counted then) and moved() (bytes of a layer as they move) may be
    called from transfer threads; the line is redrawn at most every REDRAW seconds while bytes move."""

    WIDTH = 24
    REDRAW = 0.1

    def __init__(self, out: Output, label: str, layers: int, total_bytes: int, clock=time.monotonic):
        self.out, self.label, self.layers, self.total = out, label, layers, total_bytes
        self.clock = clock
        self.started = clock()
        self.done_layers = self.done_bytes = 0
        self.current: Optional[Tuple[str, int, int]] = None      # (layer, its bytes moved, its size) last moved
        self.exported = 0                                          # bytes of `docker save` read (a push)
        self._layer_bytes: Dict[str, int] = {}
        self._drawn = 0.0
        self._lock = threading.Lock()
        self.render()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_layers += 1
            self.done_bytes += nbytes
            self.render()

    def moved(self, layer: str, nbytes: int, size: int) -> None:
        """`nbytes` more of `layer` (of `size` bytes) moved (the layer is done when advance(0) says so)."""
        with self._lock:
            moved = self._layer_bytes.get(layer, 0) + nbytes
            self._layer_bytes[layer] = moved
            self.done_bytes += nbytes
            self.current = (layer, moved, size)
            if self.clock() - self._drawn >= self.REDRAW:
                self.render()

    def read_export(self, nbytes: int) -> None:
        """`nbytes` more of the `docker save` stream read: a push moves while it spools a layer."""
        with self._lock:
            self.exported += nbytes
            if self.clock() - self._drawn >= self.REDRAW:
                self.render()

    def line(self) -> str:
        from .._ops.common import human_size
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        share = self.done_bytes / self.total if self.total else (self.done_layers / self.layers if self.layers else 1)
        filled = int(self.WIDTH * min(share, 1.0))
        left = None
        if self.total and rate > 0:
            left = max(self.total - self.done_bytes, 0) / rate
        elif not self.total and self.done_layers:       # sizes unknown ahead: by layers
            left = (self.layers - self.done_layers) * elapsed / self.done_layers
        eta = "%d:%02d" % (left // 60, left % 60) if left is not None else "--:--"
        text = "%s [%s%s] %d/%d layers %s%s %s/s ETA %s" % (
            self.label, "#" * filled, "." * (self.WIDTH - filled), self.done_layers, self.layers,
            human_size(self.done_bytes), " of " + human_size(self.total) if self.total else "", human_size(rate), eta)
        if self.current and self.current[1] < self.current[2]:
            layer, moved, size = self.current
            text += " | layer %s %s of %s" % (layer[:12], human_size(moved), human_size(size))
        if self.exported:
            text += " | docker save %s read" % human_size(self.exported)
        return text

    def render(self) -> None:
        self._drawn = self.clock()
        self.out.step(self.line())


class _CountedRemote:
    """The remote, with every read of a layer being pulled reported to a Progress as its bytes arrive."""

    def __init__(self, remote, layers: Dict[str, Tuple[str, int]], progress: Progress):
        self._remote, self._layers, self._progress = remote, layers, progress      # key -> (oid, stored size)

    def open(self, key, size=None):
        reader = self._remote.open(key, size)
        return _CountedReader(reader, *self._layers[key], self._progress) if key in self._layers else reader

    def __getattr__(self, name):
        return getattr(self._remote, name)


class _CountedDaemon:
    """The daemon, with the `docker save` stream of a push reported to a Progress as it is read."""

    def __init__(self, daemon, progress: Progress):
        self._daemon, self._progress = daemon, progress

    def save(self, ref: str):
        for chunk in self._daemon.save(ref):
            self._progress.read_export(len(chunk))
            yield chunk

    def __getattr__(self, name):
        return getattr(self._daemon, name)


class _CountedReader:
    def __init__(self, reader, oid: str, size: int, progress: Progress):
        self._reader, self._oid, self._size, self._progress = reader, oid, size, progress

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if data:
            self._progress.moved(self._oid, len(data), self._size)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._reader, name)
