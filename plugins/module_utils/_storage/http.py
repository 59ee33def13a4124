# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A read-only remote over plain HTTP(S): any static web server, CDN or public bucket serving a remote's files.

``https://host/prefix/`` maps key K to ``https://host/prefix/K``.  No listing exists over
plain HTTP, so `list` (image-ID prefixes, tag listing) is refused with a clear message; pulling
by name:tag needs only GET and HEAD.  Uses urllib only (no extra dependency).

A CDN answers 503 or resets a connection now and then: a request is tried up to MAX_ATTEMPTS times
with jittered exponential backoff (a Retry-After is honoured) on 408, 429, 5xx and on connections
that fail before a response, and a body cut short is resumed from the byte it reached with a Range
request of the same version (If-Range on its ETag or Last-Modified), as the S3 remote does.

A URL that carries a query string or ends in ``.json`` is a signed pull URL instead (see ticket.py;
factory.py's remote_from_url tells them apart).

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

import calendar
import http.client
import random
import re
import ssl
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from .._errors import RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError
from .._transfer import parallel_map
from .base import ObjectInfo, Reader, Remote, read_bounded

TIMEOUT = 60            # seconds one read may wait for any byte
MIN_RATE = 16 << 10     # bytes/s a transfer must average once RATE_GRACE has passed, or it is cut off
RATE_GRACE = 30         # seconds a transfer may be slow before MIN_RATE applies (slow starts, tiny objects)
MAX_ATTEMPTS = 6        # tries of one request, and resumptions of one body (as the S3 remote's)
BACKOFF_BASE = 0.5      # seconds before the first retry, doubled at each one ...
BACKOFF_MAX = 8.0       # ... up to this (each wait jittered down by up to half): about 15 s in all
RETRY_AFTER_MAX = 30    # seconds of a server's Retry-After honoured at most
RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504))


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


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _retry_after(headers) -> float:
    value = (headers or {}).get("Retry-After") or ""
    return min(float(value), RETRY_AFTER_MAX) if value.strip().isdigit() else 0.0


class _Retry(Exception):
    """A failure worth another try: `error` is raised if none is left; `after` is the server's Retry-After."""

    def __init__(self, error: RemoteError, after: float = 0.0):
        super().__init__(str(error))
        self.error, self.after = error, after


def _s3_error_code(body: bytes):
    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return (code.group(1) if code else ""), (message.group(1) if message else "")


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) on the same host and port, and never from https to http.

    urllib alone follows redirects to ftp:// and to any host: a hostile server could point a
    pull at another service on the network.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url), urlsplit(newurl)
        try:
            same = (new.scheme in ("http", "https") and new.hostname == old.hostname
                    and (new.port or _DEFAULT_PORTS[new.scheme]) == (old.port or _DEFAULT_PORTS[old.scheme])
                    and not (old.scheme == "https" and new.scheme == "http"))
        except ValueError:
            same = False
        if not same:
            raise RemoteError("%s redirected to %s: refused (redirects may only stay on the same host and port, "
                              "over http(s), never from https to http)" % (display_url(req.full_url), display_url(newurl)))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_DEFAULT_PORTS = {"http": 80, "https": 443}


class RateGuard(Reader):
    """A response reader that is cut off when a transfer averages under MIN_RATE after RATE_GRACE.

    The socket timeout alone bounds one read, so a server dripping a byte every few seconds
    would never be cut off. Reads return what has arrived (read1), so the check runs often.
    """

    def __init__(self, response, what: str, min_rate: Optional[int] = None, grace: Optional[float] = None):
        self._response, self._what = response, what
        self._min_rate = MIN_RATE if min_rate is None else min_rate
        self._grace = RATE_GRACE if grace is None else grace
        self._start, self._total = time.monotonic(), 0

    def read(self, size: int = -1) -> bytes:
        data = self._response.read1(size if 0 < size < (1 << 20) else (1 << 20))
        self._total += len(data)
        elapsed = time.monotonic() - self._start
        if elapsed > self._grace and self._total < self._min_rate * elapsed:
            raise RemoteError("%s: %d bytes in %.0f s, under %d KiB/s: the server is stalling, aborted"
                              % (self._what, self._total, elapsed, self._min_rate >> 10))
        return data

    def close(self):
        self._response.close()


class _ResumingBody(Reader):
    """A GET's body that survives a connection reset or cut short mid-body: the rest is asked for from the
    byte reached (Range), of the same version (If-Range on the first response's ETag, or Last-Modified),
    and a server that then answers with anything but that rest is refused. Rate-guarded piece by piece."""

    def __init__(self, remote: "HttpRemote", url: str, what: str):
        self._remote, self._url, self._what = remote, url, what
        self._offset, self._resumed = 0, 0
        response = remote._request(url, "reading")
        length = response.headers.get("Content-Length")
        self._length = int(length) if length and length.isdigit() else None
        etag = response.headers.get("ETag")
        self._etag = etag if etag and not etag.startswith("W/") else None      # If-Range takes strong ones only
        self._validator = self._etag or response.headers.get("Last-Modified")
        self._body = RateGuard(response, what)

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                data = self._body.read(size)
            except (OSError, http.client.HTTPException) as exc:
                failure = _one_line(exc) or type(exc).__name__
            else:
                if data or self._length is None or self._offset >= self._length:
                    self._offset += len(data)
                    return data
                failure = "the body ended at byte %d of %d" % (self._offset, self._length)
            self._resume(failure)

    def _resume(self, failure: str) -> None:
        self._resumed += 1
        self._body.close()
        if self._resumed >= MAX_ATTEMPTS or not self._validator or self._length is None:
            raise RemoteError("%s failed: %s%s" % (self._what, failure, "" if self._validator and self._length is not None
                                                   else " (the server gives no length and version to resume it by)"))
        self._remote.sleep(_backoff(self._resumed))
        response = self._remote._request(self._url, "reading", headers={
            "Range": "bytes=%d-" % self._offset, "If-Range": self._validator})
        content_range = response.headers.get("Content-Range") or ""
        etag = response.headers.get("ETag")
        if response.status != 206 or not content_range.startswith("bytes %d-" % self._offset) or (
                self._etag and etag != self._etag):
            response.close()
            raise RemoteError("%s failed: %s" % (self._what, (
                "it changed while it was read (the server sent it whole again, not from byte %d)" % self._offset
                if response.status == 200 and etag != self._etag else
                "the server did not resume it at byte %d (HTTP %d %s)" % (self._offset, response.status, content_range))))
        self._body = RateGuard(response, self._what)

    def close(self):
        self._body.close()


class HttpRemote(Remote):
    read_only = True
    sleep = staticmethod(time.sleep)        # between retries (tests record the waits instead)

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
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _SameHostRedirects)

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

    def _request(self, url: str, what: str, method: str = "GET", headers=None):
        """The response to one request, retried (MAX_ATTEMPTS in all, with backoff) while it fails in a way
        another try may not: 408, 429, 5xx, a reset or a timeout before the response."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(url, what, method, headers)
            except _Retry as retry:
                if attempt >= MAX_ATTEMPTS:
                    raise type(retry.error)("%s (%d attempts)" % (retry.error, attempt))
                self.sleep(max(_backoff(attempt), retry.after))

    def _attempt(self, url: str, what: str, method: str, headers):
        request = urllib.request.Request(url, method=method, headers=dict(headers or {}, **{"User-Agent": "dogestry"}))
        try:
            return self._opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    body = exc.read() if method != "HEAD" else b""
                except (OSError, http.client.HTTPException):
                    body = b""
            error = self._http_error(exc.code, body, url, what, exc.reason)
            if exc.code in RETRY_STATUSES:
                raise _Retry(error, _retry_after(exc.headers))
            raise error
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise RemoteError("TLS verification failed for %s: set ca_bundle, or s3_validate_certs=false "
                                  "(--s3-no-verify-certs) for a test server (%s)" % (display_url(url), _one_line(reason)))
            if isinstance(reason, str):     # urllib's own refusals (an unknown scheme): no network involved
                raise RemoteError("%s %s failed: %s" % (what, display_url(url), _one_line(reason)))
            raise _Retry(RemoteError("cannot reach %s: %s" % (display_url(url), _one_line(reason))))
        except (OSError, http.client.HTTPException) as exc:    # reset or closed before the response
            raise _Retry(RemoteError("%s %s failed: %s" % (what, display_url(url), _one_line(exc) or type(exc).__name__)))
        except ValueError as exc:
            raise RemoteError("%s %s failed: %s" % (what, display_url(url), _one_line(exc)))

    def _http_error(self, status: int, body: bytes, url: str, what: str, reason: str = "") -> RemoteError:
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
        return RemoteError("%s %s failed: HTTP %d %s" % (what, shown, status, _one_line(message or code or reason)))

    # -- Remote -------------------------------------------------------------------------------

    def open(self, key, size=None):
        return self._open_url(self._url_for(key), "reading %s" % self._display(key))

    def _open_url(self, url: str, what: str):
        return _ResumingBody(self, url, what)

    def get_url(self, url: str, what: str, limit: int = 1 << 24) -> bytes:
        """A whole small document at a full URL (a signed URL's ticket), bounded in size and time."""
        with self._open_url(url, "%s %s" % (what, display_url(url))) as body:
            return read_bounded(body, limit, lambda: RemoteError(
                "%s %s: over %d MiB, not a dogestry document" % (what, display_url(url), limit >> 20)))

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

    def move(self, key, new_key):
        raise self._read_only("moving")
