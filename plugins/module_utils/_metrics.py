# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The accelerator's Prometheus metrics (prometheus_client, one private registry per server)."""

from __future__ import annotations

import traceback
from typing import Tuple

try:
    import prometheus_client
    HAS_PROMETHEUS = True
    PROMETHEUS_IMPORT_ERROR = None
except ImportError:
    HAS_PROMETHEUS = False
    PROMETHEUS_IMPORT_ERROR = traceback.format_exc()


class Metrics:
    """Counters; without prometheus_client every call is a no-op and render() says why."""

    def __init__(self):
        self.enabled = HAS_PROMETHEUS
        if not self.enabled:
            return
        self.registry = prometheus_client.CollectorRegistry()
        counter = prometheus_client.Counter
        self._requests = counter("dogestry_requests", "HTTP requests answered", ["method", "code"],
                                 registry=self.registry)
        self._bytes = counter("dogestry_bytes_served", "Body bytes sent to clients", registry=self.registry)
        self._hits = counter("dogestry_cache_hits", "Blob reads served from the local cache", registry=self.registry)
        self._misses = counter("dogestry_cache_misses", "Blob reads fetched from the remote", registry=self.registry)
        self._remote_errors = counter("dogestry_remote_errors", "Remote failures (unreachable, refused, corrupt)",
                                      registry=self.registry)
        # Fleet peers (_peers): where stored blob bytes came from, and what the peers did.
        self._blob_bytes = counter("dogestry_blob_bytes", "Stored bytes of blobs read, by source: remote, peer "
                                   "(another host's accelerator) or cache (a verified local copy)", ["source"],
                                   registry=self.registry)
        self._peer_errors = counter("dogestry_peer_errors", "Peers that failed a request, by peer and kind: refused, "
                                    "timeout, broken, bad_answer, corrupt (served wrong bytes)", ["peer", "kind"],
                                    registry=self.registry)
        self._peer_skipped = counter("dogestry_peer_skipped", "Peers passed over because they failed recently",
                                     ["peer"], registry=self.registry)
        self._peer_busy = counter("dogestry_peer_busy", "Busy answers received from peers (sent on to holders)",
                                  registry=self.registry)
        self._peer_answers = counter("dogestry_peer_answers", "Peer requests this host answered, by answer: served, "
                                     "busy, missing, refused", ["answer"], registry=self.registry)
        self._peer_sent = counter("dogestry_peer_sent_bytes", "Bytes sent to peers", registry=self.registry)

    def request(self, method: str, code: int, sent: int) -> None:
        if self.enabled:
            self._requests.labels(method if method in ("GET", "HEAD") else "other", str(code)).inc()
            self._bytes.inc(sent)

    def cache_hit(self) -> None:
        if self.enabled:
            self._hits.inc()

    def cache_miss(self) -> None:
        if self.enabled:
            self._misses.inc()

    def remote_error(self) -> None:
        if self.enabled:
            self._remote_errors.inc()

    def blob_bytes(self, source: str, count: int) -> None:
        if self.enabled and count:
            self._blob_bytes.labels(source).inc(count)

    def peer_error(self, peer: str, kind: str) -> None:
        if self.enabled:
            self._peer_errors.labels(peer, kind).inc()

    def peer_skipped(self, peer: str) -> None:
        if self.enabled:
            self._peer_skipped.labels(peer).inc()

    def peer_busy(self) -> None:
        if self.enabled:
            self._peer_busy.inc()

    def peer_answer(self, answer: str) -> None:
        if self.enabled:
            self._peer_answers.labels(answer).inc()

    def peer_sent(self, count: int) -> None:
        if self.enabled and count:
            self._peer_sent.inc(count)

    def render(self) -> Tuple[int, bytes, str]:
        if not self.enabled:
            return 503, b"prometheus_client is not installed: pip install prometheus_client\n", "text/plain"
        return 200, prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
