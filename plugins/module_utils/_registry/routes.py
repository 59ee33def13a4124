# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The registry's route table (the OCI distribution API's paths, matched by one pattern each) and its answers:
Response, the OCI error body, names as clients send them.

May import _errors and _format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

from .._format.oci import OCI_MANIFEST_MEDIA_TYPE
from .._format.reference import _COMPONENT     # one reference grammar for the engine and the registry


# distribution's reference grammar for repository paths (no domain: that is the host we are)
_ROUTE = re.compile(r"^/v2/(?P<name>%s(?:/%s)*)/(?P<kind>manifests|blobs|tags|referrers)/(?P<ref>[^/]+)$"
                    % (_COMPONENT, _COMPONENT))


_UPLOAD_ROUTE = re.compile(r"^/v2/(?P<name>%s(?:/%s)*)/blobs/uploads/(?P<session>[0-9a-f]{0,64})$" % (_COMPONENT, _COMPONENT))
_LOOSE_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs|tags|referrers)/(?P<ref>[^/]*)$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_NS = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?$")
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,20}$")
MAX_NAME = 255              # distribution's limit on a repository name (so no path component passes NAME_MAX)
MAX_PATH = 2048             # longer request paths are refused before any pattern is matched against them
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
MAX_PAGE = 10000
MAX_REFERRERS = 1000        # descriptors one referrers response lists


@dataclass
class Response:
    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: Union[bytes, Iterator[bytes]] = b""
    length: int = 0     # bytes the body holds (for logs and metrics)


def error_response(exc: ApiError, head: bool = False) -> Response:
    body = json.dumps({"errors": [{"code": exc.code, "message": exc.message, "detail": None}]}).encode()
    return Response(exc.status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                    + exc.headers, b"" if head else body, 0 if head else len(body))


def _header(headers: Dict[str, List[str]], name: str) -> Optional[str]:
    values = headers.get(name)
    return values[0] if values else None


def candidate_names(name: str, ns: Optional[str]) -> List[str]:
    """Stored names a request path may mean: mirrors of Docker Hub ask for library/x, meaning x;
    containerd mirrors (hosts.toml) add ?ns=<registry> for other registries."""
    names = []
    if ns and ns not in DOCKER_HUB:
        names.append("%s/%s" % (ns, name))
    names.append(name)
    if name.startswith("library/") and (not ns or ns in DOCKER_HUB):
        names.append(name[len("library/"):])
    return names


def accepts_oci(accept: List[str]) -> bool:
    if not accept:
        return True
    types = {part.split(";")[0].strip() for value in accept for part in value.split(",")}
    return bool(types & {OCI_MANIFEST_MEDIA_TYPE, "*/*", "application/*"})


class ApiError(Exception):
    """An error the registry API answers with (status, one of the spec's codes, a one-line message)."""

    def __init__(self, status: int, code: str, message: str, headers=()):
        Exception.__init__(self, message)
        self.status, self.code, self.message, self.headers = status, code, message, list(headers)


def check_path(path: str) -> None:
    """A path too long to be a request of this API, or a repository name over MAX_NAME: 400 before
    the remote sees it (a name component over the filesystem's NAME_MAX would fail there)."""
    if len(path) > MAX_PATH:
        raise ApiError(400, "NAME_INVALID", "request path of %d characters: longer than any this registry answers"
                       % len(path))
    route = _ROUTE.match(path) or _UPLOAD_ROUTE.match(path)
    if route and len(route.group("name")) > MAX_NAME:
        raise ApiError(400, "NAME_INVALID", "repository name of %d characters: at most %d"
                       % (len(route.group("name")), MAX_NAME))
