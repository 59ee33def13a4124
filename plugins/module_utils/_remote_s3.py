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
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError, ClientError, ConnectionError as BotoConnectionError, EndpointConnectionError,
        NoCredentialsError, PartialCredentialsError, ProfileNotFound, SSLError,
    )
    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

    class BotoCoreError(Exception):  # placeholders so except clauses stay valid
        pass

    ClientError = BotoConnectionError = EndpointConnectionError = BotoCoreError
    NoCredentialsError = PartialCredentialsError = ProfileNotFound = SSLError = BotoCoreError

from ._errors import (
    BlobCorruptError, DogestryError, RemoteAuthError, RemoteError, RemoteMissingError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ._remote import ObjectInfo, Reader, Remote
from ._transfer import parallel_map

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB          # S3's minimum for every part but the last
MAX_PARTS = 10000
MAX_DELETE_KEYS = 1000           # keys per DeleteObjects request (S3's limit)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
MAX_ATTEMPTS = 6                 # botocore "standard" retries (throttling, 5xx, connection errors): ~30 s at most
LIST_MIN_GROUPS = 8              # stat(): below this many probes, never list
LIST_PAGE_RATIO = 4              # stat(): a listing may take at most groups/4 pages before we probe the rest
FILL_SIZE = 256 << 10            # ranged reads: bytes taken from the socket at a time into a part's buffer

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                 "301", "TemporaryRedirect"}
_UNSUPPORTED_CODES = {"NotImplemented", "501"}


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _common_prefix(keys: List[str]) -> str:
    return os.path.commonprefix(keys) if keys else ""


class S3Remote(Remote):
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

    def _error(self, exc: Exception, what: str, key: Optional[str] = None) -> RemoteError:
        """One-line RemoteError for a boto3/botocore failure of `what` (on `key`)."""
        where = "s3://%s/%s%s" % (self.bucket, self.prefix, key or "")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = _one_line(err.get("Message") or code)
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if code == "NoSuchBucket":
                return RemoteMissingError(
                    "bucket %s does not exist (remote %s): create it or fix the remote URL" % (self.bucket, self.url))
            if code in ("NoSuchKey", "404", "NotFound"):
                return RemoteNotFoundError("not found: %s" % where)
            if code in _REGION_CODES:
                right = err.get("Region") or headers.get("x-amz-bucket-region")
                if right:
                    return RemoteError("bucket %s is in region %s, not %s: use s3://%s/%s?region=%s or set region"
                                       % (self.bucket, right, self.region, self.bucket, self.prefix, right))
                return RemoteError("bucket %s is not in region %s (%s): set the bucket's region (?region=… or region)"
                                   % (self.bucket, self.region, message))
            if code in _AUTH_CODES:
                return RemoteAuthError("access denied %s %s (%s: %s): check the credentials and the bucket policy"
                                       % (what, where, code, message))
            if code in _UNSUPPORTED_CODES:
                return RemoteUnsupportedError("%s %s: the S3 store does not support it (%s)" % (what, where, message))
            return RemoteError("%s %s failed: %s (%s)" % (what, where, message, code))
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return RemoteAuthError("no usable AWS credentials for %s: set access_key/secret_key, a profile, or the "
                                   "AWS_* environment variables (%s)" % (self.url, _one_line(exc)))
        if isinstance(exc, SSLError):
            return RemoteError("TLS verification failed for the S3 endpoint of %s: set ca_bundle, or s3_validate_certs=false "
                               "(--s3-no-verify-certs) for a test store (%s)" % (self.url, _one_line(exc)))
        if isinstance(exc, (EndpointConnectionError, BotoConnectionError)):
            return RemoteError("cannot reach S3 endpoint %s for %s: check endpoint_url/region and the network (%s)"
                               % (self.client.meta.endpoint_url, self.url, _one_line(exc)))
        if isinstance(exc, DogestryError):
            return exc
        return RemoteError("%s %s failed: %s" % (what, where, _one_line(exc)))

    @staticmethod
    def _code(exc: Exception) -> str:
        if isinstance(exc, ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    @staticmethod
    def _status(exc: Exception) -> int:
        if isinstance(exc, ClientError):
            return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return 0

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

    def put_file(self, key, path):
        """Create-only upload of a local file, which is deleted afterwards.

        Files up to `part_size` go in one conditional PutObject.  Larger ones are a multipart
        upload of `part_size` parts, `jobs` in flight per remote (so memory stays at most
        jobs x part_size however many files upload at once), completed with If-None-Match.
        s3transfer 0.17's upload_file cannot pass If-None-Match to CompleteMultipartUpload,
        hence our own small multipart loop.  A HEAD first skips re-sending a large blob that
        a concurrent push already stored.
        """
        try:
            size = os.path.getsize(path)
            if size <= self.part_size:
                handles = []

                def reopen():
                    handle = open(path, "rb")
                    handles.append(handle)
                    return handle
                try:
                    return self._put_create_only(key, reopen)
                finally:
                    for handle in handles:
                        handle.close()
            if self.head(key) is not None:
                return False
            return self._multipart_upload(key, path, size)
        except OSError as exc:
            raise RemoteError("reading the spooled file %s for %s on %s failed: %s"
                              % (path, key, self.url, exc.strerror or exc))
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _parts_pool(self):
        with self._lock:
            if self._part_pool is None:
                self._part_pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="dogestry-s3-part")
            return self._part_pool

    def _multipart_upload(self, key, path, size) -> bool:
        part_size = self.part_size
        while (size + part_size - 1) // part_size > MAX_PARTS:
            part_size *= 2
        s3key = self._key(key)
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=s3key, ContentType="application/octet-stream")["UploadId"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "starting a multipart upload of", key)

        def upload_part(number):
            offset = (number - 1) * part_size
            with _FileRange(path, offset, min(part_size, size - offset)) as body:
                response = self.client.upload_part(Bucket=self.bucket, Key=s3key, UploadId=upload_id,
                                                   PartNumber=number, Body=body)
            return {"PartNumber": number, "ETag": response["ETag"]}

        try:
            numbers = range(1, (size + part_size - 1) // part_size + 1)
            parts = [future.result() for future in [self._parts_pool().submit(upload_part, n) for n in numbers]]
            return self._complete(key, s3key, upload_id, parts)
        except BaseException as exc:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
            except (BotoCoreError, ClientError):
                pass        # a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up the rest
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise self._error(exc, "uploading", key)
            raise

    def _complete(self, key, s3key, upload_id, parts) -> bool:
        args = dict(Bucket=self.bucket, Key=s3key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        if not self._conditional:
            if self.head(key) is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
                return False
            self.client.complete_multipart_upload(**args)
            return True
        try:
            self.client.complete_multipart_upload(IfNoneMatch="*", **args)
            return True
        except ClientError as exc:
            if self._status(exc) == 412 or self._code(exc) == "PreconditionFailed":
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
                return False
            if self._unsupported_condition(exc):
                return self._complete(key, s3key, upload_id, parts)
            raise

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


def _backoff(attempt: int) -> float:
    return min(0.1 * 2 ** attempt, 2.0)


class _FileRange(Reader):
    """Bytes offset..offset+length of a file as a seekable body, which botocore reads in pieces (checksum,
    signature, sending) and rewinds to retry: an upload part never sits in memory whole. Part-sized
    allocations in the upload threads would leave freed memory in glibc's per-thread arenas."""

    def __init__(self, path: str, offset: int, length: int):
        self._file = open(path, "rb")
        self._offset, self._length, self._pos = offset, length, 0
        self._file.seek(offset)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        data = self._file.read(left if size is None or size < 0 or size > left else size)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        self._file.seek(self._offset + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self):
        self._file.close()


class _ResumingReader(Reader):
    """One GET as a stream that survives a connection broken mid-body (botocore's retries end when
    the headers arrive): it resumes with a ranged GET from the byte it stopped at, of the same
    version of the object (If-Match on its ETag), up to MAX_ATTEMPTS times."""

    def __init__(self, remote: "S3Remote", key: str):
        self._remote, self._key = remote, key
        self._offset, self._attempt = 0, 0
        self._body, self._etag, self._size = remote.get_body(key)

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._attempt and self._offset >= self._size:
                return b""      # it broke after the last byte
            try:
                data = self._body.read(size) if size is not None and size >= 0 else self._body.read()
                self._offset += len(data)
                return data
            except (BotoCoreError, OSError) as exc:
                self._attempt += 1
                if self._attempt >= MAX_ATTEMPTS or not self._etag:
                    raise self._remote._error(exc, "reading", self._key)
                self._body.close()
                time.sleep(_backoff(self._attempt))
                self._body = self._remote.get_body(self._key, self._offset, self._etag)[0]

    def close(self):
        self._body.close()


class _Part:
    """One range of an object, downloaded into a buffer of the read-ahead budget while its reader consumes it."""

    __slots__ = ("start", "length", "buffer", "filled", "error", "state", "future")

    def __init__(self, start: int, length: int, buffer):
        self.start, self.length, self.buffer = start, length, buffer
        self.filled = 0             # bytes of the range in the buffer so far
        self.error = None           # the exception that ended its download
        self.state = "queued"       # -> "running" -> "finished"; "released" once its buffer went back
        self.future = None


class _ReadAhead:
    """The memory all ranged readers of one remote may hold, and the threads that fill it.

    Every part a reader asked for holds one buffer of part_size bytes from the moment its GET is
    queued until the reader has consumed its last byte. Parts are granted while the bytes held stay
    within `limit`, to readers in the order they were opened: the layer Docker or `docker load`
    reads now comes first, and the next one gets what is left, so its first parts download while
    the current one drains (read-ahead across layer boundaries). A reader holding no part always
    gets one, so none ever waits for another to progress: bytes held are at most `limit` plus one
    part per open reader. Buffers are anonymous mmaps, reused while any reader is open and unmapped
    when the last one closes; part-sized allocations in many threads used to leave freed memory in
    glibc's per-thread arenas (the accelerator over S3 peaked at 224 MB with 29 MB in use).
    """

    def __init__(self, part_size: int, limit: int):
        self.part_size, self.limit = part_size, max(int(limit), part_size)
        self.lock = threading.Lock()
        self.held = 0               # bytes of the buffers granted now
        self.peak = 0               # most bytes held at once (tests and benchmarks read it)
        self.readers: List["_RangedReader"] = []
        self._spare: List[mmap.mmap] = []
        self._pool = None

    def submit(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.limit // self.part_size + 2, thread_name_prefix="dogestry-range")
        return self._pool.submit(fn, *args)

    def grant(self, reader: "_RangedReader") -> bool:
        """Under the lock: may `reader` have one more part now?"""
        return not reader.parts or self.held + self.part_size <= self.limit

    def take(self) -> mmap.mmap:
        """Under the lock: a buffer for one part."""
        self.held += self.part_size
        self.peak = max(self.peak, self.held)
        return self._spare.pop() if self._spare else mmap.mmap(-1, self.part_size, flags=mmap.MAP_PRIVATE)

    def give_back(self, part: _Part) -> None:
        """Under the lock: the part's buffer is free again."""
        part.state = "released"
        self.held -= self.part_size
        self._spare.append(part.buffer)
        part.buffer = None
        if not self.readers:
            self._trim()

    def _trim(self) -> None:
        if self.held == 0:
            for buffer in self._spare:
                buffer.close()
            self._spare = []

    def pump(self) -> None:
        """Under the lock: hand out what the budget allows, oldest reader first."""
        for reader in self.readers:
            reader.fill()

    def opened(self, reader: "_RangedReader") -> None:
        with self.lock:
            self.readers.append(reader)
            self.pump()

    def closed(self, reader: "_RangedReader") -> None:
        """Under the lock."""
        if reader in self.readers:
            self.readers.remove(reader)
        self.pump()
        if not self.readers:
            self._trim()


class _RangedReader(Reader):
    """One object as a file-like stream of ranged GETs, read back in order.

    Parts are granted by the remote's _ReadAhead. Each is streamed
    into its buffer by a worker thread while the consumer reads the bytes that arrived, so the
    first bytes are readable one round trip after opening; a connection that breaks mid-part is
    resumed from the byte it reached (MAX_ATTEMPTS in all). A pull thus streams into `docker load`
    while the rest of the layer, and the first parts of the next, are still downloading.
    """

    def __init__(self, remote: "S3Remote", key: str, size: int):
        self._remote, self._key, self._size = remote, key, size
        self._budget = remote.read_ahead
        self._next = 0                  # first byte not yet asked for
        self.parts = deque()            # granted parts, in order; the first is being consumed
        self._pos = 0                   # bytes of parts[0] consumed
        self._closed = False
        self._awaited, self._awaited_until = None, 0      # the part (and the byte of it) read() waits for
        self._changed = threading.Condition(self._budget.lock)
        self._budget.opened(self)

    def fill(self) -> None:
        """Under the budget's lock: ask for the parts it grants."""
        budget = self._budget
        while not self._closed and self._next < self._size and budget.grant(self):
            length = min(budget.part_size, self._size - self._next)
            part = _Part(self._next, length, budget.take())
            self._next += length
            self.parts.append(part)
            part.future = budget.submit(self._download, part)

    def _download(self, part: _Part) -> None:
        with self._changed:
            if part.state != "queued" or self._closed:
                return
            part.state = "running"
        try:
            self._fetch(part)
        except BaseException as exc:   # noqa: BLE001 - handed to the consumer, who raises it
            part.error = exc if isinstance(exc, DogestryError) else self._remote._error(exc, "reading", self._key)
        finally:
            with self._changed:
                part.state = "finished" if part.state == "running" else part.state
                if self._closed and part.state == "finished":
                    self._budget.give_back(part)
                    self._budget.pump()
                self._changed.notify_all()

    def _fetch(self, part: _Part) -> None:
        remote, end = self._remote, part.start + part.length - 1
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = remote.client.get_object(Bucket=remote.bucket, Key=remote._key(self._key),
                                                    Range="bytes=%d-%d" % (part.start + part.filled, end))
                body = response["Body"]
                try:
                    while part.filled < part.length:
                        data = body.read(min(FILL_SIZE, part.length - part.filled))
                        if not data:
                            break
                        with self._changed:
                            if self._closed:
                                return
                            part.buffer[part.filled:part.filled + len(data)] = data
                            part.filled += len(data)
                            if self._awaited is part and part.filled >= self._awaited_until:
                                self._changed.notify_all()
                finally:
                    body.close()
                if part.filled < part.length:
                    raise BlobCorruptError("%s on %s is shorter than its manifest says (%d bytes from %d, expected %d)"
                                           % (self._key, remote.url, part.filled, part.start, part.length))
                return
            except (BotoCoreError, ClientError, OSError) as exc:
                if remote._code(exc) == "InvalidRange":
                    raise BlobCorruptError("%s on %s is shorter than its manifest says (no byte %d)"
                                           % (self._key, remote.url, part.start + part.filled))
                if isinstance(exc, ClientError) or attempt == MAX_ATTEMPTS:
                    raise remote._error(exc, "reading", self._key)
                time.sleep(_backoff(attempt))

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(MiB), b""))
        with self._changed:
            while True:
                if self._closed:
                    raise RemoteError("reading %s on %s: the reader was closed" % (self._key, self._remote.url))
                if not self.parts:
                    return b""
                part = self.parts[0]
                want = min(size, part.length - self._pos)
                if part.filled - self._pos >= want or part.state == "finished":
                    break
                self._awaited, self._awaited_until = part, self._pos + want     # wake me then, not at every piece
                self._changed.wait()
                self._awaited = None
            if part.filled - self._pos < want:
                raise part.error or RemoteError("reading %s on %s: a part ended early" % (self._key, self._remote.url))
            data = part.buffer[self._pos:self._pos + want]
            self._pos += want
            if self._pos == part.length:
                self.parts.popleft()
                self._pos = 0
                self._budget.give_back(part)
                self._budget.pump()
        return data

    def close(self):
        with self._changed:
            if self._closed:
                return
            self._closed = True
            for part in self.parts:
                if part.state != "running":      # queued (never to run) or finished: free now
                    if part.future is not None:
                        part.future.cancel()
                    self._budget.give_back(part)
                # a running download frees its buffer when it stops, at its next piece
            self.parts.clear()
            self._budget.closed(self)
            self._changed.notify_all()
