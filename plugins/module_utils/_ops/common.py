# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""What push and pull share: sizes for people, whether a daemon can take the loopback route, and
Docker's names an operation leaves behind.

May import _errors, _format and _docker.
"""

from __future__ import annotations

import threading
from typing import List, Optional

from .._docker.daemon import Daemon
from .._errors import DockerError
from .loopback import ENGINE_NAME, ENGINE_PORT, HAS_CHEROOT, LoopbackServer


def _unique(items: List[str]) -> List[str]:
    return list(dict.fromkeys(items))


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return "%d B" % size


def _serves_daemon(daemon: Daemon) -> bool:
    """Whether the engine can serve the remote to the daemon as a registry (loopback.py): on the containerd
    store its push and pull move only what is missing, where `docker save` / `docker load` move the whole
    image slowly. On the classic store those are faster than Docker's push (which gzips every layer)."""
    return HAS_CHEROOT and daemon.containerd_store and daemon.reaches_our_loopback


class _EndpointUnreachable(Exception):
    """Docker's push or pull failed without one request reaching the loopback endpoint: the daemon's 127.0.0.1
    is not ours after all (a tcp:// address on our loopback that forwards to a daemon elsewhere). Nothing was
    moved, so the operation goes the docker save / docker load way instead."""


def _drop_stale_names(daemon: Daemon, server: LoopbackServer, keep: str) -> Optional[threading.Thread]:
    """Drop the names of the endpoint that a killed run left on the daemon, beside the operation (a
    thread: it costs the daemon a listing). While this process holds the fixed port no other run uses
    it, so every name under it but `keep` (this run's) is stale. join() the thread before moving on."""
    if not server.host.endswith(":%d" % ENGINE_PORT):
        return None

    def drop():
        try:
            for name in daemon.names_under("%s/%s" % (server.host, ENGINE_NAME)):
                if name != keep:
                    daemon.untag(name)
        except DockerError:
            pass        # only tidying: the next run tries again
    thread = threading.Thread(target=drop, name="dogestry-tidy", daemon=True)
    thread.start()
    return thread
