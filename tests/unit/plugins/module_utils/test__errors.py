"""The error hierarchy: callers catch by these classes (a missing bucket is not a missing key; every engine
failure is a DogestryError the modules and the CLI turn into their one line)."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _errors
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    BlobCorruptError, DockerError, DogestryError, FormatError, ImageReferenceError, RemoteAuthError, RemoteError,
    RemoteMissingError, RemoteNotFoundError, RemoteUnsupportedError,
)


def test_every_error_the_engine_raises_is_a_dogestry_error():
    classes = [value for value in vars(_errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert sorted(cls.__name__ for cls in classes if not issubclass(cls, DogestryError)) == []
    assert len(classes) == 10


@pytest.mark.parametrize("cls, parents", [
    (RemoteMissingError, (RemoteNotFoundError, RemoteError)),
    (RemoteNotFoundError, (RemoteError,)),
    (RemoteAuthError, (RemoteError,)),
    (RemoteUnsupportedError, (RemoteError,)),
])
def test_remote_errors_nest_so_a_handler_of_the_wider_one_catches_them(cls, parents):
    for parent in parents:
        with pytest.raises(parent):
            raise cls("x")


@pytest.mark.parametrize("cls", [FormatError, BlobCorruptError, ImageReferenceError, DockerError])
def test_content_reference_and_docker_errors_are_not_remote_errors(cls):
    assert not issubclass(cls, RemoteError)


def test_a_missing_key_is_not_a_missing_remote():
    assert not issubclass(RemoteNotFoundError, RemoteMissingError)
    assert str(RemoteNotFoundError("blobs/x: no such object")) == "blobs/x: no such object"
