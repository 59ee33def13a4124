# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The remote factory: a URL (and connection options) -> a Remote.

It sits above every backend (they never import it), so nothing imports in a circle, and it is
where a malformed URL becomes one line saying what is wrong.

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .._errors import RemoteUnsupportedError
from .base import Remote
from .http import HttpRemote
from .local import LocalRemote
from .remote_list import RemoteList
from .ticket import TicketRemote

USAGE = "use /path, file:///path, s3://bucket/prefix or https://host/prefix"


def remote_from_url(url: str, **options) -> Remote:
    """'/srv/dogestry', 'file:///srv/dogestry', 's3://bucket/prefix/?region=…', 'https://host/prefix/'.

    An http(s) URL with a query string or ending in .json is a signed pull URL (a ticket).
    """
    text = str(url or "").strip()
    if not text:
        raise RemoteUnsupportedError("remote is empty: give a directory (/srv/dogestry) or an s3:// URL")
    if "\0" in text:
        raise RemoteUnsupportedError("remote contains a NUL byte: %s" % USAGE)
    if text.startswith("/"):
        return LocalRemote(text)
    try:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise RemoteUnsupportedError("remote %r is not a valid URL (%s): %s" % (_shown(text), exc, USAGE))
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise RemoteUnsupportedError("remote %r: a file URL must be file:///absolute/path" % text)
        return LocalRemote(unquote(parts.path))
    if scheme == "s3":
        from .s3 import S3Remote
        return S3Remote.from_url(text, **options)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise RemoteUnsupportedError("remote %r has no host: %s" % (_shown(text), USAGE))
        if parts.query or parts.path.endswith(".json"):
            return TicketRemote.from_url(text, validate_certs=options.get("validate_certs", True),
                                         ca_bundle=options.get("ca_bundle"), jobs=options.get("jobs"))
        return HttpRemote.from_url(text, **options)
    if not scheme:
        raise RemoteUnsupportedError(
            "remote %r is a relative path: use an absolute directory (/srv/dogestry) or a URL" % text)
    raise RemoteUnsupportedError("remote %r: unsupported scheme %r (%s)" % (_shown(text), scheme, USAGE))


def remote_from_urls(urls, **options) -> Remote:
    """A remote, or several copies of one (RemoteList: reads from the first that answers, writes to the first)."""
    remotes = [remote_from_url(url, **options) for url in urls]
    return remotes[0] if len(remotes) == 1 else RemoteList(remotes)


def _shown(text: str) -> str:
    """A URL fit for a message: a query (a signed URL's signature) is a secret."""
    return text.split("?", 1)[0] if "?" in text else text
