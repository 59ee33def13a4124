# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A read-only remote over plain HTTP(S): any static web server, CDN or public bucket serving a remote's files.

``https://host/prefix/`` maps key K to ``https://host/prefix/K``.  No listing exists over
plain HTTP, so `list` (image-ID prefixes, tag listing) is refused with a clear message; pulling
by name:tag needs only GET and HEAD.  Uses urllib only (no extra dependency).

A URL that carries a query string or ends in ``.json`` is a signed pull URL instead (see _ticket;
_remotes.remote_from_url tells them apart).
"""

from __future__ import annotations

import calendar
import re
import http.client
import ssl
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from ._errors import RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError
from ._remote import ObjectInfo, ReadErrors, Remote
from ._transfer import parallel_map

TIMEOUT = 60


def _one_line(text) -> str:
    return " ".join(str(text).split())


def display_url(url: str) -> str:
    """The URL without credentials or query (a signed URL's signature is a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += ":%d" % parts.port
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def signed_url_expiry(url: str) -> Optional[float]:
    """Epoch seconds at which an S3 SigV4 presigned URL stops working (None: not such a URL)."""
    query = parse_qs(urlsplit(url).query)
    try:
        start = time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        return calendar.timegm(start) + int(query["X-Amz-Expires"][0])
    except (KeyError, ValueError, IndexError):
        return None


def format_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _s3_error_code(body: bytes):
    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return (code.group(1) if code else ""), (message.group(1) if message else "")


class HttpRemote(Remote):
    read_only = True

    def __init__(self, base_url: str, validate_certs: bool = True, ca_bundle: Optional[str] = None, jobs: int = 4):
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.url = display_url(self.base)
        self.jobs = max(1, int(jobs or 4))
        context = None
        if self.base.lower().startswith("https:"):
            context = ssl.create_default_context(cafile=ca_bundle or None)
            if validate_certs is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    @classmethod
    def from_url(cls, url: str, validate_certs=True, ca_bundle=None, jobs=None, **_ignored) -> "HttpRemote":
        parts = urlsplit(str(url).strip())
        if parts.username or parts.password:
            raise RemoteUnsupportedError("remote %s: credentials in an http(s) URL are not supported"
                                         % display_url(url))
        return cls(str(url).strip(), validate_certs, ca_bundle, jobs or 4)

    # -- HTTP ---------------------------------------------------------------------------------

    def _url_for(self, key: str) -> str:
        return self.base + quote(key)

    def _display(self, key: str) -> str:
        return display_url(self._url_for(key))

    def _request(self, url: str, what: str, method: str = "GET"):
        request = urllib.request.Request(url, method=method, headers={"User-Agent": "dogestry"})
        try:
            return self._opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read() if method != "HEAD" else b""
            raise self._http_error(exc.code, body, url, what)
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise RemoteError("TLS verification failed for %s: set ca_bundle, or validate_certs=false for a "
                                  "test server (%s)" % (display_url(url), _one_line(reason)))
            raise RemoteError("cannot reach %s: %s" % (display_url(url), _one_line(reason)))
        except (OSError, ValueError) as exc:
            raise RemoteError("%s %s failed: %s" % (what, display_url(url), _one_line(exc)))

    def _http_error(self, status: int, body: bytes, url: str, what: str) -> RemoteError:
        shown = display_url(url)
        code, message = _s3_error_code(body)
        if status == 403 and "expired" in message.lower():
            expiry = signed_url_expiry(url)
            when = format_time(expiry) if expiry else "an earlier time"
            return RemoteAuthError("signed URL expired at %s; mint a new one (%s)" % (when, shown))
        if status == 403 and code == "SignatureDoesNotMatch":
            return RemoteAuthError("signed URL rejected: signature does not match (tampered or truncated?) (%s)"
                                   % shown)
        if status == 404:
            return RemoteNotFoundError("not found: %s" % shown)
        if status in (401, 403):
            return RemoteAuthError("access denied %s %s (HTTP %d%s): the server needs no credentials we can send; "
                                   "make the files public or use a signed pull URL"
                                   % (what, shown, status, (" " + code) if code else ""))
        return RemoteError("%s %s failed: HTTP %d %s" % (what, shown, status, _one_line(message or code)))

    # -- Remote -------------------------------------------------------------------------------

    def open(self, key, size=None):
        return ReadErrors(self._request(self._url_for(key), "reading"), (OSError, http.client.HTTPException),
                          lambda exc: "reading %s failed: %s" % (self._display(key), _one_line(exc)))

    def head(self, key: str) -> Optional[ObjectInfo]:
        try:
            with self._request(self._url_for(key), "checking", method="HEAD") as response:
                size = int(response.headers.get("Content-Length") or 0)
                modified = response.headers.get("Last-Modified")
        except RemoteNotFoundError:
            return None
        try:
            stamp = parsedate_to_datetime(modified).timestamp() if modified else 0.0
        except (TypeError, ValueError):
            stamp = 0.0
        return ObjectInfo(key, size, stamp)

    def stat(self, keys):
        """One HEAD per key, `jobs` at a time (plain HTTP has no listing)."""
        return {info.key: info for info in parallel_map(self.head, sorted(set(keys)), self.jobs) if info is not None}

    def list(self, prefix):
        raise RemoteUnsupportedError(
            "%s is an http(s) remote and cannot be listed: tag listing and image-ID prefixes need a "
            "listable remote (a directory or s3://); pull by name:tag instead" % self.url)

    def _read_only(self, what: str):
        return RemoteUnsupportedError("%s is read-only (http/https remote): %s needs a directory or s3:// remote"
                                      % (self.url, what))

    def put(self, key, data, overwrite=False):
        raise self._read_only("writing")

    def put_file(self, key, path):
        raise self._read_only("writing")

    def delete(self, key):
        raise self._read_only("deleting")
