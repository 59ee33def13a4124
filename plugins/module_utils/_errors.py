# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Every failure the engine raises is a DogestryError whose str() is a one-line message for users.

Imports nothing of the collection: every layer imports it.
"""

from __future__ import annotations


class DogestryError(Exception):
    """Base class: str(exc) is a complete, single-line explanation."""


class RemoteError(DogestryError):
    """The remote could not be read or written."""


class RemoteNotFoundError(RemoteError):
    """A key, bucket or directory does not exist."""


class RemoteMissingError(RemoteNotFoundError):
    """The remote itself (a bucket) does not exist, as opposed to one key in it."""


class RemoteAuthError(RemoteError):
    """Credentials are missing, wrong, or lack permission."""


class RemoteUnsupportedError(RemoteError):
    """The URL scheme or an operation is not supported by this remote."""


class FormatError(DogestryError):
    """Remote data is not in a format this version understands (wrong version, malformed JSON)."""


class BlobCorruptError(DogestryError):
    """Bytes read from the remote do not match their content address."""


class ImageReferenceError(DogestryError):
    """An image reference, tag or ID prefix is malformed, unknown or ambiguous."""


class DockerError(DogestryError):
    """The Docker daemon is unreachable or refused an operation."""
