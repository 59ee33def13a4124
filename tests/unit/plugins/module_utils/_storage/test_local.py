import os

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    BlobCorruptError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.base import Remote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url


@pytest.fixture
def remote(tmp_path):
    return LocalRemote(str(tmp_path / "remote"))


@pytest.mark.parametrize("url, root", [
    ("/srv/dogestry", "/srv/dogestry"),
    ("/srv/dogestry/", "/srv/dogestry"),
    ("file:///srv/dogestry", "/srv/dogestry"),
    ("file://localhost/srv/my%20images", "/srv/my images"),
])
def test_local_urls(url, root):
    remote = remote_from_url(url)
    assert isinstance(remote, LocalRemote) and remote.root == root


@pytest.mark.parametrize("url, message", [
    ("", "empty"),
    ("srv/dogestry", "relative path"),
    ("ftp://host/x", "unsupported scheme"),
    ("file://otherhost/x", "file:///absolute/path"),
    ("https://[::1", "not a valid URL .Invalid IPv6 URL"),
    ("https://[::1]:99999/x", "not a valid URL .Port out of range"),
    ("http://", "has no host"),
    ("/srv/dog\0estry", "NUL byte"),
    ("file:///srv/dog%00estry", "NUL byte"),
])
def test_bad_urls(url, message):
    with pytest.raises(RemoteUnsupportedError, match=message):
        remote_from_url(url)


def test_put_is_create_only_unless_overwrite(remote):
    assert remote.put("a/b", b"one") is True
    assert remote.put("a/b", b"two") is False
    assert remote.get("a/b") == b"one"
    assert remote.put("a/b", b"three", overwrite=True) is True
    assert remote.get("a/b") == b"three"


def test_put_file_moves_the_file_and_loses_races_harmlessly(remote, tmp_path):
    for content in (b"first", b"second"):
        path = os.path.join(remote.staging_dir(), "x.tmp")
        with open(path, "wb") as handle:
            handle.write(content)
        remote.put_file("blobs/k", path)
        assert not os.path.exists(path)
    assert remote.get("blobs/k") == b"first"


def test_stat_and_list(remote):
    remote.put("blobs/sha256/aa/aa1", b"12345")
    remote.put("blobs/sha256/ab/ab1", b"1")
    remote.put("manifests/sha256/m", b"{}")
    found = remote.stat(["blobs/sha256/aa/aa1", "blobs/sha256/zz/none"])
    assert list(found) == ["blobs/sha256/aa/aa1"] and found["blobs/sha256/aa/aa1"].size == 5
    assert sorted(info.key for info in remote.list("blobs/sha256/a")) == ["blobs/sha256/aa/aa1", "blobs/sha256/ab/ab1"]
    assert sorted(info.key for info in remote.list("")) == [
        "blobs/sha256/aa/aa1", "blobs/sha256/ab/ab1", "manifests/sha256/m"]     # staging is never listed
    assert list(remote.list("nothing/here")) == []


def test_missing_keys_and_paths_are_clear_errors(remote, tmp_path):
    with pytest.raises(RemoteNotFoundError):
        remote.get("no/such/key")
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")
    with pytest.raises(RemoteError, match=str(blocked)):
        LocalRemote(str(blocked)).put("k", b"v")


def test_delete_is_idempotent(remote):
    remote.put("k", b"v")
    remote.delete("k")
    remote.delete("k")
    assert remote.stat(["k"]) == {}


def test_small_object_reads_are_bounded(remote, monkeypatch):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage import base as _remote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import FormatError
    monkeypatch.setattr(_remote, "MAX_SMALL_OBJECT", 10)
    remote.put("ok", b"x" * 10)
    remote.put("huge", b"x" * 11)
    assert remote.get("ok") == b"x" * 10
    with pytest.raises(FormatError, match="not a dogestry metadata object"):
        remote.get("huge")


@pytest.mark.parametrize("error, cls, fragment", [
    (PermissionError(13, "Permission denied"), "RemoteAuthError", "permission denied"),
    (OSError(30, "Read-only file system"), "RemoteAuthError", "permission denied"),
    (OSError(28, "No space left on device"), "RemoteError", "no space left"),
])
def test_os_errors_on_write_become_one_line_remote_errors(remote, monkeypatch, error, cls, fragment):
    from ansible_collections.dogestry.dogestry.plugins.module_utils import _errors

    def refuse(*args):
        raise error
    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(getattr(_errors, cls)) as caught:
        remote.put("blobs/k", b"v")
    assert type(caught.value).__name__ == cls
    assert fragment in str(caught.value) and remote.root in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def syscalls(monkeypatch):
    """Every link, rename and fsync, in order, with the paths they touched (an fsync's from its descriptor)."""
    log = []
    for name in ("link", "replace", "rename"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda src, dst, _real=real, _name=name: (log.append((_name, dst)), _real(src, dst))[1])
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (log.append(("fsync", os.readlink("/proc/self/fd/%d" % fd))), fsync(fd))[1])
    return log


def _dirs_synced_after(log, call, path):
    """The directories fsynced after the first `call` on `path`."""
    start = log.index((call, path))
    return {target for name, target in log[start:] if name == "fsync" and os.path.isdir(target)}


def test_an_acknowledged_write_survives_a_crash_its_directories_are_synced(remote, syscalls):
    """A link() or rename() is durable once its directory is fsynced, and a new directory once its parent is."""
    root = remote.root
    assert remote.put("blobs/sha256/ab/abcd", b"blob") is True
    blob = os.path.join(root, "blobs", "sha256", "ab", "abcd")
    assert _dirs_synced_after(syscalls, "link", blob) >= {os.path.dirname(blob)}, syscalls
    created = {root, os.path.join(root, "blobs"), os.path.join(root, "blobs", "sha256")}     # parents of new dirs
    assert {t for n, t in syscalls if n == "fsync"} >= created | {os.path.dirname(blob)}, syscalls

    remote.put("repositories/app/_tags/1", b"sha256:0\n", overwrite=True)
    tag = os.path.join(root, "repositories", "app", "_tags", "1")
    assert _dirs_synced_after(syscalls, "replace", tag) == {os.path.dirname(tag)}, syscalls

    remote.move("blobs/sha256/ab/abcd", "quarantine/t/blobs/sha256/ab/abcd")
    moved = os.path.join(root, "quarantine", "t", "blobs", "sha256", "ab", "abcd")
    assert _dirs_synced_after(syscalls, "rename", moved) == {os.path.dirname(moved), os.path.dirname(blob)}, syscalls


# get_range: what a push reads of a stored lz4 layer before reusing it (directory: a seek; any other remote: the
# streaming fallback)
@pytest.mark.parametrize("reader", ["seek", "fallback"])
def test_get_range_reads_exact_bytes_and_refuses_short_objects(tmp_path, reader):
    remote = LocalRemote(str(tmp_path / "remote"))
    data = os.urandom((1 << 20) + 100)
    remote.put("blobs/x", data)
    get_range = remote.get_range if reader == "seek" else lambda *a: Remote.get_range(remote, *a)
    assert get_range("blobs/x", 0, 7) == data[:8]
    assert get_range("blobs/x", len(data) - 8, len(data) - 1) == data[-8:]
    assert get_range("blobs/x", 1 << 20, (1 << 20) + 9) == data[1 << 20:(1 << 20) + 10]
    with pytest.raises(BlobCorruptError, match="shorter than its manifest says"):
        get_range("blobs/x", len(data) - 4, len(data) + 3)
    with pytest.raises(BlobCorruptError, match="shorter than its manifest says"):
        get_range("blobs/x", len(data) + 10, len(data) + 17)
