# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""HTTP basics the registry's server parts share: its log, reason phrases, the OCI error body, listen
addresses, and log-safe text.

May import _errors only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Tuple

from .._errors import DogestryError


LOG = logging.getLogger("dogestry.serve")
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
            400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 507: "Insufficient Storage"}


def printable(text: str, limit: int = 300) -> str:
    """Text from a request as a log line may hold it: control and non-ASCII characters, quotes and
    backslashes escaped, so a request cannot forge or break a log line."""
    return text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')


def oci_error(status: int, message: str) -> bytes:
    """The OCI error body for an answer the HTTP layer gives on its own (no route reached)."""
    code = {401: "UNAUTHORIZED", 413: "SIZE_INVALID", 414: "NAME_INVALID", 429: "TOOMANYREQUESTS"}.get(status, "UNKNOWN")
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


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
