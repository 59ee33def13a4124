# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The S3 remote (AWS S3 and S3-compatible stores: MinIO, Ceph RGW, moto), through boto3.

URL: ``s3://bucket/prefix/?region=us-west-2`` (the original dogestry form).  Region precedence:
the URL's ``?region=`` (it describes where that bucket lives) > the ``region`` option > boto3's
own chain (AWS_REGION, AWS_DEFAULT_REGION, the profile).  Credentials: explicit keys, or a
profile, or boto3's default chain (environment, shared files, instance/container role); a profile
together with explicit keys is rejected.  Retries: botocore's "standard" mode, 10 attempts,
which backs off on throttling (503 SlowDown), 5xx and connection errors.

Writes of immutable keys are create-only with ``If-None-Match: *`` (PutObject and
CompleteMultipartUpload), so a concurrent writer of the same content address loses cleanly
(412 -> "already there").  A store that rejects that header (501/NotImplemented) is remembered
and served by HEAD-then-PUT instead, which is safe for content-addressed keys (both writers put
the same bytes) but not atomic.  Content is verified by the engine's sha256, never by ETag.

May import _errors, _transfer and _storage.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

    class BotoCoreError(Exception):  # placeholders so except clauses stay valid
        pass

    ClientError = ProfileNotFound = BotoCoreError

from .._errors import BlobCorruptError, DogestryError, RemoteAuthError, RemoteError, RemoteUnsupportedError
from .._transfer import parallel_map
from .base import ObjectInfo, Remote
from .s3_errors import S3Errors, _UNSUPPORTED_CODES, _one_line
from .s3_multipart import DEFAULT_PART_SIZE, MIN_PART_SIZE, MultipartUploads
from .s3_ranged import MAX_ATTEMPTS, _RangedReader, _ReadAhead, _ResumingReader, _backoff


MAX_DELETE_KEYS = 1000           # keys per DeleteObjects request (S3's limit)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
LIST_MIN_GROUPS = 8              # stat(): below this many probes, never list
LIST_PAGE_RATIO = 4              # stat(): a listing may take at most groups/4 pages before we probe the rest


def _common_prefix(keys: List[str]) -> str:
    return os.path.commonprefix(keys) if keys else ""


class S3Remote(MultipartUploads, S3Errors, Remote):
    def __init__(self, client, bucket: str, prefix: str = "", part_size: int = DEFAULT_PART_SIZE,
                 jobs: int = 4, region: Optional[str] = None, read_ahead: Optional[int] = None):
        """`read_ahead`: bytes the ranged readers of this remote may hold at once, all together (default
        (jobs + 2) x part_size; the layer read now is served first, the next one gets the rest); see _ReadAhead."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.part_size = max(MIN_PART_SIZE, int(part_size))
        self.jobs = max(1, int(jobs))
        self.url = "s3://%s/%s" % (bucket, prefix)
        self._conditional = True            # False once the store rejected If-None-Match
        self._part_pool = None
        self._lock = threading.Lock()
        self.read_ahead = _ReadAhead(self.part_size, read_ahead or (self.jobs + 2) * self.part_size)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, access_key=None, secret_key=None, session_token=None, profile=None,
                 region=None, endpoint_url=None, validate_certs=True, ca_bundle=None, part_size=None,
                 jobs=None, read_ahead=None, **_ignored) -> "S3Remote":
        if not HAS_BOTO3:
            raise DogestryError("the Python packages 'boto3' and 'botocore' are required for s3:// remotes: "
                                "pip install boto3")
        bucket, prefix, url_region = parse_s3_url(url)
        where = "s3://%s/%s" % (bucket, prefix)
        if profile and (access_key or secret_key or session_token):
            raise RemoteError("remote %s: give either profile or access_key/secret_key/session_token, not both"
                              % where)
        if bool(access_key) != bool(secret_key):
            raise RemoteAuthError("remote %s: access_key and secret_key must be given together" % where)
        jobs = int(jobs or 4)
        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
                aws_session_token=session_token or None, profile_name=profile or None,
                region_name=url_region or region or None)
        except ProfileNotFound:
            raise RemoteAuthError("remote %s: AWS profile %r is not configured (~/.aws/config)" % (where, profile))
        config = Config(
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            max_pool_connections=max(10, jobs * (jobs + 1)),    # `jobs` transfers of `jobs` parts each
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            signature_version="s3v4",
            connect_timeout=10, read_timeout=60,
        )
        verify = ca_bundle if ca_bundle else (validate_certs is not False)
        try:
            client = session.client("s3", endpoint_url=endpoint_url or None, verify=verify, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise RemoteError("remote %s: cannot set up an S3 client: %s" % (where, _one_line(exc)))
        return cls(client, bucket, prefix, part_size or DEFAULT_PART_SIZE, jobs, client.meta.region_name, read_ahead)

    # -- errors -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    # -- reads --------------------------------------------------------------------------------

    def open(self, key, size=None):
        """With a `size` over one part, parallel ranged GETs of `part_size` read back in order, within
        the remote's read-ahead budget (_ReadAhead); otherwise one GET, resumed where it broke if the
        connection fails mid-body."""
        if size is not None and size > self.part_size:
            return _RangedReader(self, key, size)
        return _ResumingReader(self, key)

    def get_body(self, key: str, offset: int = 0, etag: Optional[str] = None):
        """(streaming body, ETag, length) of `key` from byte `offset`; with `etag`, only that version of it."""
        extra = {"Range": "bytes=%d-" % offset, "IfMatch": etag} if offset else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "reading", key)
        return response["Body"], response.get("ETag"), int(response.get("ContentLength") or 0)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes start..end (inclusive) of `key`; fewer than asked means the object is not the size we were told.

        botocore retries a request until its headers arrive; a body cut short is retried here."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                                  Range="bytes=%d-%d" % (start, end))
                data = response["Body"].read()
                break
            except (BotoCoreError, ClientError, OSError) as exc:
                if self._code(exc) == "InvalidRange":
                    raise BlobCorruptError("%s on %s is shorter than its manifest says (no byte %d)"
                                           % (key, self.url, start))
                if isinstance(exc, ClientError) or attempt == MAX_ATTEMPTS:
                    raise self._error(exc, "reading", key)
                time.sleep(_backoff(attempt))
        if len(data) != end - start + 1:
            raise BlobCorruptError("%s on %s is shorter than its manifest says (%d bytes from %d, expected %d)"
                                   % (key, self.url, len(data), start, end - start + 1))
        return data

    def head(self, key: str) -> Optional[ObjectInfo]:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            if self._status(exc) == 404 and self._code(exc) != "NoSuchBucket":
                return None
            raise self._error(exc, "checking", key)
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp())

    def stat(self, keys):
        """Which of `keys` exist, in as few round trips as we can tell in advance.

        Rule: keys are grouped so that a key and the keys it is a prefix of (a blob and its
        ``.lz4`` twin) form one group; each group costs one request: a HEAD for a lone key, a
        ListObjectsV2 with the group's key as prefix otherwise.  With at least LIST_MIN_GROUPS
        groups we first list their common prefix instead (1000 keys a page, in key order), which
        settles every group whose keys sort before the last key listed; once the listing has
        used groups/LIST_PAGE_RATIO pages (the remote holds far more than we asked about) it
        stops and the groups still open are probed in parallel (`jobs` at a time).  Calls are
        thus at most 1.25 x the number of groups, and one or two for an image on a small remote.
        """
        groups = _group_keys(sorted(set(keys)))
        found: Dict[str, ObjectInfo] = {}
        open_groups = groups
        if len(groups) >= LIST_MIN_GROUPS:
            wanted = {key for group in groups for key in group}
            open_groups, found = self._stat_by_listing(groups, wanted, max(1, len(groups) // LIST_PAGE_RATIO))
        for result in parallel_map(self._probe, open_groups, self.jobs):
            found.update(result)
        return found

    def _stat_by_listing(self, groups, wanted, max_pages):
        found = {}
        last = ""
        complete = False
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._key(_common_prefix([g[0] for g in groups])),
                                   PaginationConfig={"PageSize": 1000})
        try:
            for number, page in enumerate(pages, 1):
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix):]
                    last = key
                    if key in wanted:
                        found[key] = ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
                if not page.get("IsTruncated"):
                    complete = True
                    break
                if number >= max_pages:
                    break
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "listing", _common_prefix([g[0] for g in groups]))
        if complete:
            return [], found
        return [group for group in groups if group[-1] > last], found

    def _probe(self, group: List[str]) -> Dict[str, ObjectInfo]:
        if len(group) == 1:
            info = self.head(group[0])
            return {info.key: info} if info else {}
        return {info.key: info for info in self.list(group[0]) if info.key in group}

    def list(self, prefix):
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"][len(self.prefix):], int(item["Size"]),
                                     item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "listing", prefix)

    # -- writes -------------------------------------------------------------------------------

    def put(self, key, data, overwrite=False):
        if overwrite:
            self._put_object(key, data)
            return True
        return self._put_create_only(key, lambda: data)

    def _put_object(self, key, body, **extra):
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                   ContentType="application/octet-stream", **extra)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "writing", key)

    def _put_create_only(self, key, body) -> bool:
        """`body()` gives the data (or a fresh file object) for each attempt."""
        for attempt in range(5):
            if not self._conditional:
                if self.head(key) is not None:
                    return False
                self._put_object(key, body())
                return True
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body(), IfNoneMatch="*",
                                       ContentType="application/octet-stream")
                return True
            except (BotoCoreError, ClientError) as exc:
                if self._status(exc) == 412 or self._code(exc) == "PreconditionFailed":
                    return False
                if self._code(exc) == "ConditionalRequestConflict":     # a concurrent writer of this key
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if self._unsupported_condition(exc):
                    continue
                raise self._error(exc, "writing", key)
        raise RemoteError("writing %s%s on %s: concurrent writers kept conflicting; retry" % (self.prefix, key, self.url))

    def _unsupported_condition(self, exc) -> bool:
        """A store that does not implement If-None-Match: remember it and use HEAD-then-PUT."""
        if self._code(exc) in _UNSUPPORTED_CODES or self._status(exc) == 501 or (
                self._code(exc) == "InvalidArgument" and "if-none-match" in str(exc).lower()):
            self._conditional = False
            return True
        return False

    def delete(self, key):
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            if self._status(exc) == 404 and self._code(exc) != "NoSuchBucket":
                return
            raise self._error(exc, "deleting", key)

    def delete_many(self, keys):
        """DeleteObjects, MAX_DELETE_KEYS a request (`jobs` requests at once); a store without it gets one
        DELETE per key. Absent keys are no error, as for delete()."""
        batches = [list(keys[i:i + MAX_DELETE_KEYS]) for i in range(0, len(keys), MAX_DELETE_KEYS)]
        parallel_map(self._delete_batch, batches, self.jobs)

    def _delete_batch(self, keys: List[str]) -> None:
        if not keys:
            return
        try:
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(key)} for key in keys], "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            if self._code(exc) in _UNSUPPORTED_CODES or self._status(exc) == 501:
                for key in keys:
                    self.delete(key)
                return
            raise self._error(exc, "deleting %d objects, the first" % len(keys), keys[0])
        failed = [error for error in response.get("Errors") or () if error.get("Code") != "NoSuchKey"]
        if failed:
            raise RemoteError("deleting s3://%s/%s failed: %s (%s)%s" % (
                self.bucket, failed[0].get("Key"), _one_line(failed[0].get("Message") or ""), failed[0].get("Code"),
                "; %d more keys failed" % (len(failed) - 1) if len(failed) > 1 else ""))

    def move(self, key, new_key):
        """Server-side copy (multipart past 5 GB, via boto3's managed copy), then delete."""
        try:
            self.client.copy({"Bucket": self.bucket, "Key": self._key(key)}, self.bucket, self._key(new_key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "moving to %s" % new_key, key)
        self.delete(key)

    # -- signing ------------------------------------------------------------------------------

    def presign_get(self, key: str, expires_in: int) -> str:
        """A URL anyone may GET `key` with until `expires_in` seconds from now (SigV4: at most 7 days).

        With temporary credentials (session token, instance role) the URL also dies with them.
        """
        if not 1 <= int(expires_in) <= MAX_PRESIGN_SECONDS:
            raise RemoteUnsupportedError("signed URLs on %s last 1 second to 7 days (%d s), not %s s"
                                         % (self.url, MAX_PRESIGN_SECONDS, expires_in))
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=int(expires_in))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "signing a URL for", key)


def parse_s3_url(url: str):
    """'s3://bucket/some/prefix?region=r' -> ('bucket', 'some/prefix/', 'r' or None)."""
    parts = urlsplit(str(url).strip())
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise RemoteUnsupportedError("remote %r is not an S3 URL like s3://bucket/prefix/?region=us-west-2" % url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise RemoteUnsupportedError("remote s3://…%s: put credentials in access_key/secret_key, not in the URL"
                                     % parts.path)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"region"})
    if unknown:
        raise RemoteUnsupportedError("remote s3://%s%s: unknown URL parameter %s (only ?region= is understood)"
                                     % (parts.netloc, parts.path, ", ".join(unknown)))
    region = (query.get("region") or [None])[0] or None
    prefix = parts.path.strip("/")
    return parts.netloc, (prefix + "/") if prefix else "", region


def _group_keys(keys: List[str]) -> List[List[str]]:
    """Sorted keys -> groups where the first key is a prefix of all the others in its group."""
    groups: List[List[str]] = []
    for key in keys:
        if groups and key.startswith(groups[-1][0]):
            groups[-1].append(key)
        else:
            groups.append([key])
    return groups
