# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The accelerator's Prometheus metrics (prometheus_client, one private registry per server).

A base module (the registry and the fleet peers both count): may import _errors only.
"""

from __future__ import annotations

import traceback
from typing import Tuple

from ._errors import BlobCorruptError, FormatError, RemoteAuthError, RemoteNotFoundError

try:
    import prometheus_client
    HAS_PROMETHEUS = True
    PROMETHEUS_IMPORT_ERROR = None
except ImportError:
    HAS_PROMETHEUS = False
    PROMETHEUS_IMPORT_ERROR = traceback.format_exc()


# Request latency buckets: manifests and small blobs answer in milliseconds, a layer streams for minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUTES = ("base", "manifests", "blobs", "uploads", "tags", "referrers", "catalog", "healthz", "metrics", "other")
SOURCES = ("remote", "cache")


def route_of(path: str) -> str:
    """The route a request path names, one of ROUTES: a label of bounded cardinality (no repository names)."""
    if path in ("/v2", "/v2/"):
        return "base"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    if path == "/v2/_catalog":
        return "catalog"
    if "/blobs/uploads" in path:
        return "uploads"
    for route in ("manifests", "blobs", "tags", "referrers"):
        if "/%s/" % route in path:
            return route
    return "other"


def error_kind(exc: BaseException) -> str:
    """What went wrong with the remote, as the label of dogestry_remote_errors_total."""
    if isinstance(exc, BlobCorruptError):
        return "corrupt"
    if isinstance(exc, RemoteAuthError):
        return "denied"
    if isinstance(exc, RemoteNotFoundError):
        return "missing"
    if isinstance(exc, FormatError):
        return "format"
    return "unavailable"


class Metrics:
    """The accelerator's series; without prometheus_client every call is a no-op and render() says why."""

    def __init__(self):
        self.enabled = HAS_PROMETHEUS
        if not self.enabled:
            return
        self.registry = prometheus_client.CollectorRegistry()
        counter, gauge = prometheus_client.Counter, prometheus_client.Gauge
        self._requests = counter("dogestry_requests", "HTTP requests answered", ["method", "code"],
                                 registry=self.registry)
        self._latency = prometheus_client.Histogram(
            "dogestry_request_duration_seconds", "Time from a request's arrival to the last byte of its answer",
            ["route", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._bytes = counter("dogestry_bytes_served", "Body bytes sent to clients", registry=self.registry)
        self._served = counter("dogestry_served_bytes", "Blob body bytes sent to clients, by where they were read "
                               "(remote, cache)", ["source"], registry=self.registry)
        self._blob_bytes = counter("dogestry_blob_bytes", "Stored bytes of blobs read, by source: remote, peer "
                                   "(another host's accelerator) or cache (a verified local copy)", ["source"],
                                   registry=self.registry)
        self._hits = counter("dogestry_cache_hits", "Blob reads served from the local cache", registry=self.registry)
        self._misses = counter("dogestry_cache_misses", "Blob reads fetched from the remote", registry=self.registry)
        self._evictions = counter("dogestry_cache_evictions", "Cache entries evicted to stay within --cache-size",
                                  registry=self.registry)
        self._cache_size = gauge("dogestry_cache_size_bytes", "Bytes the cache holds", registry=self.registry)
        self._cache_limit = gauge("dogestry_cache_limit_bytes", "The cache's bound (--cache-size)", registry=self.registry)
        self._uploads = gauge("dogestry_uploads_in_progress", "Pushes' blob uploads started and not yet finished",
                              registry=self.registry)
        self._upload_bytes = gauge("dogestry_upload_spool_bytes", "Bytes the uploads in progress hold in the spool",
                                   registry=self.registry)
        self._remote_errors = counter("dogestry_remote_errors", "Remote failures, by kind (unavailable, denied, "
                                      "missing, format, corrupt)", ["kind"], registry=self.registry)
        for source in SOURCES:
            self._served.labels(source)
            self._blob_bytes.labels(source)
        self._remote_errors.labels("unavailable")
        # Fleet peers (_peers): what the peers did.
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

    def request(self, method: str, code: int, sent: int, path: str = "", seconds: float = 0.0) -> None:
        if self.enabled:
            self._requests.labels(method if method in ("GET", "HEAD") else "other", str(code)).inc()
            self._latency.labels(route_of(path), str(code)).observe(seconds)
            self._bytes.inc(sent)

    def served_bytes(self, source: str, count: int) -> None:
        if self.enabled:
            self._served.labels(source).inc(count)

    def cache_hit(self) -> None:
        if self.enabled:
            self._hits.inc()

    def cache_miss(self) -> None:
        if self.enabled:
            self._misses.inc()

    def cache_evicted(self) -> None:
        if self.enabled:
            self._evictions.inc()

    def watch_cache(self, cache) -> None:
        """Read the cache's size (and bound) when scraped."""
        if self.enabled:
            self._cache_size.set_function(lambda: cache.size)
            self._cache_limit.set(cache.max_bytes)

    def watch_uploads(self, writer) -> None:
        """Read the uploads in progress, and the spool they hold, when scraped."""
        if self.enabled:
            self._uploads.set_function(lambda: writer.uploads_in_progress)
            self._upload_bytes.set_function(lambda: writer.spool_held)

    def remote_error(self, exc: BaseException) -> None:
        if self.enabled:
            self._remote_errors.labels(error_kind(exc)).inc()

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
