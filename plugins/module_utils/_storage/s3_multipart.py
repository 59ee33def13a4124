# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Large objects to S3: multipart uploads of a spooled file, parts in parallel, completed or aborted
whole (a failed upload leaves no object and no parts behind).

May import _errors, _transfer and _storage.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # the S3 remote reports boto3's absence (s3.py); these keep the except clauses valid
    class BotoCoreError(Exception):
        pass

    ClientError = BotoCoreError

from .._errors import RemoteError
from .s3_ranged import MiB, _FileRange


DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB          # S3's minimum for every part but the last
MAX_PARTS = 10000


class MultipartUploads:
    """The multipart uploads of an S3Remote (s3.py): its client, bucket, part size and jobs."""

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
