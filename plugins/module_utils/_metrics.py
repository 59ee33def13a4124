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

    def render(self) -> Tuple[int, bytes, str]:
        if not self.enabled:
            return 503, b"prometheus_client is not installed: pip install prometheus_client\n", "text/plain"
        return 200, prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
