# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""S3's answers as the remote's errors: one line saying what is wrong and what to do (credentials,
region, a missing bucket or object, a store that lacks a feature).

May import _errors only.
"""

from __future__ import annotations

from typing import Optional
try:
    from botocore.exceptions import (
        ClientError, ConnectionError as BotoConnectionError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError, SSLError,
    )
except ImportError:  # the S3 remote reports boto3's absence (s3.py); these keep the except clauses valid
    class BotoCoreError(Exception):
        pass

    ClientError = BotoConnectionError = EndpointConnectionError = NoCredentialsError = PartialCredentialsError = SSLError = BotoCoreError

from .._errors import DogestryError, RemoteAuthError, RemoteError, RemoteMissingError, RemoteNotFoundError, RemoteUnsupportedError


_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403"}


_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                 "301", "TemporaryRedirect"}


_UNSUPPORTED_CODES = {"NotImplemented", "501"}


def _one_line(text) -> str:
    return " ".join(str(text).split())


class S3Errors:
    """How an S3Remote (s3.py) turns botocore's exceptions into the remote's errors."""

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
