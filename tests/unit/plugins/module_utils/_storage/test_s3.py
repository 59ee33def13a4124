"""S3Remote against a real moto_server over HTTP (fixtures s3_endpoint/s3_env in tests/conftest.py)."""

import hashlib
import os
import time
import uuid

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._storage import s3 as _remote_s3
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    BlobCorruptError, RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.s3 import S3Remote, parse_s3_url

MiB = 1 << 20


@pytest.fixture
def bucket(s3_bucket):
    return s3_bucket


@pytest.fixture
def remote(s3_env, bucket):
    return remote_from_url("s3://%s/pre/fix/" % bucket, endpoint_url=s3_env, part_size=5 * MiB, jobs=3)


class CountingClient:
    """Counts the S3 operations a remote makes, by botocore event."""

    def __init__(self, client):
        self.calls = []
        client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model, **_):
        self.calls.append(model.name)


@pytest.mark.parametrize("url, expected", [
    ("s3://b", ("b", "", None)),
    ("s3://b/", ("b", "", None)),
    ("s3://b/a/b", ("b", "a/b/", None)),
    ("s3://b/a/b/?region=us-west-2", ("b", "a/b/", "us-west-2")),
])
def test_parse_s3_url(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url, fragment", [
    ("s3://b/p?acl=x", "unknown URL parameter acl"),
    ("s3://AKIA:hunter2@b/p", "not in the URL"),
    ("s3:///p", "not an S3 URL"),
])
def test_parse_s3_url_rejects(url, fragment):
    with pytest.raises(RemoteUnsupportedError, match=fragment) as info:
        parse_s3_url(url)
    assert "hunter2" not in str(info.value)


def test_url_region_wins_over_option(s3_env):
    remote = S3Remote.from_url("s3://b/p?region=eu-west-1", region="us-east-2", endpoint_url=s3_env)
    assert (remote.region, remote.url) == ("eu-west-1", "s3://b/p/")


def test_profile_with_keys_is_rejected(s3_env):
    with pytest.raises(RemoteError, match="either profile or access_key"):
        S3Remote.from_url("s3://b/p", profile="x", access_key="AKIA", secret_key="s", endpoint_url=s3_env)


def test_url_and_messages_hold_no_secret(s3_env):
    remote = S3Remote.from_url("s3://nobucket-%s/p" % uuid.uuid4().hex[:8], access_key="AKIAXX",
                               secret_key="topsecret", endpoint_url=s3_env)
    with pytest.raises(RemoteNotFoundError) as info:
        remote.get("dogestry.json")
    assert "topsecret" not in str(info.value) + remote.url
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)


def test_put_get_list_delete_roundtrip(remote):
    assert remote.put("a/x", b"one") is True
    assert remote.get("a/x") == b"one"
    with remote.open("a/x") as body:
        assert body.read() == b"one"
    assert [(i.key, i.size) for i in remote.list("a/")] == [("a/x", 3)]
    remote.delete("a/x")
    remote.delete("a/x")            # deleting an absent key is fine
    with pytest.raises(RemoteNotFoundError, match="not found: s3://.*/pre/fix/a/x"):
        remote.get("a/x")


def test_second_create_only_put_does_not_rewrite(remote):
    assert remote.put("k", b"first") is True
    assert remote.put("k", b"second") is False
    assert remote.get("k") == b"first"
    assert remote.put("k", b"third", overwrite=True) is True
    assert remote.get("k") == b"third"


def test_fallback_when_store_rejects_if_none_match(remote):
    def reject(params, **_):
        if "IfNoneMatch" in params:
            raise remote.client.exceptions.ClientError(
                {"Error": {"Code": "NotImplemented", "Message": "If-None-Match"},
                 "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
    remote.client.meta.events.register("provide-client-params.s3.PutObject", reject)
    assert remote.put("k", b"1") is True
    assert remote.put("k", b"2") is False
    assert remote._conditional is False and remote.get("k") == b"1"


def test_delete_many_batches_and_falls_back_where_delete_objects_is_missing(remote):
    keys = ["d/%04d" % n for n in range(1203)] + ["d/absent"]
    for key in keys[:1203]:
        remote.client.put_object(Bucket=remote.bucket, Key=remote._key(key), Body=b"x")
    counter = CountingClient(remote.client)
    remote.delete_many(keys[:1100] + keys[-1:])
    assert counter.calls == ["DeleteObjects", "DeleteObjects"] and len(list(remote.list("d/"))) == 103

    def refuse(**_):
        raise remote.client.exceptions.ClientError(
            {"Error": {"Code": "NotImplemented", "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 501}},
            "DeleteObjects")
    remote.client.meta.events.register("provide-client-params.s3.DeleteObjects", refuse)
    remote.delete_many(keys[1100:])
    assert not list(remote.list("d/")) and counter.calls.count("DeleteObject") == 104


def test_delete_many_names_a_key_the_store_would_not_delete(remote):
    def answer(**_):
        return {"Errors": [{"Key": "pre/fix/d/1", "Code": "AccessDenied", "Message": "Access Denied"}]}
    remote.client.delete_objects = answer
    with pytest.raises(RemoteError, match=r"^deleting s3://%s/pre/fix/d/1 failed: Access Denied \(AccessDenied\)$"
                       % remote.bucket):
        remote.delete_many(["d/1", "d/2"])


def test_put_file_small_is_create_only_and_consumes_file(remote, tmp_path):
    for content, expected in ((b"abc", True), (b"xyz", False)):
        path = tmp_path / "f"
        path.write_bytes(content)
        assert remote.put_file("blob", str(path)) is expected
        assert not path.exists()
    assert remote.get("blob") == b"abc"


def test_put_file_multipart_and_ranged_download(remote, tmp_path):
    data = os.urandom(11 * MiB + 123)
    src = tmp_path / "big"
    src.write_bytes(data)
    counter = CountingClient(remote.client)
    assert remote.put_file("big", str(src)) is True
    assert counter.calls.count("UploadPart") == 3 and "CompleteMultipartUpload" in counter.calls
    head = remote.client.head_object(Bucket=remote.bucket, Key="pre/fix/big")
    assert head["ETag"].strip('"').endswith("-3")
    counter.calls.clear()
    with remote.open("big", len(data)) as body:
        assert b"".join(iter(lambda: body.read(1 << 20), b"")) == data
    assert counter.calls.count("GetObject") == 3        # 5 + 5 + 1 MiB ranges, `jobs` at a time


@pytest.mark.parametrize("claimed", [6 * MiB + 1, 12 * MiB])
def test_ranged_read_of_an_object_smaller_than_claimed_is_corrupt(remote, claimed):
    remote.put("blob", os.urandom(6 * MiB))
    with pytest.raises(BlobCorruptError, match="shorter than its manifest says"):
        with remote.open("blob", claimed) as body:
            while body.read(1 << 20):
                pass


def _drain(body, chunk=1 << 20):
    return b"".join(iter(lambda: body.read(chunk), b""))


def test_ranged_readers_share_one_read_ahead_budget(s3_env, bucket):
    """Readers of one remote hold at most read_ahead bytes, plus one part for each other open reader;
    the oldest reader is served first. Counted by the remote's own accounting, not by timing."""
    part = 5 * MiB
    remote = remote_from_url("s3://%s/ra/" % bucket, endpoint_url=s3_env, part_size=part, jobs=4, read_ahead=2 * part)
    blobs = {"b%d" % i: os.urandom(4 * part + i + 1) for i in range(3)}
    for key, data in blobs.items():
        remote.put(key, data)
    budget = remote.read_ahead
    readers = {key: remote.open(key, len(data)) for key, data in sorted(blobs.items())}
    # the first reader got the whole budget, the others one part each, before anything was read
    assert [len(readers[key].parts) for key in sorted(readers)] == [2, 1, 1]
    assert budget.held == 4 * part
    got = {key: [] for key in blobs}
    most = 0
    while any(reader.parts for reader in readers.values()):
        for key, reader in sorted(readers.items(), reverse=True):     # read the newest first
            got[key].append(reader.read(MiB))
            most = max(most, budget.held)
            assert budget.held <= budget.limit + 2 * part
    for key, reader in readers.items():
        reader.close()
        assert b"".join(got[key]) == blobs[key]
    assert most <= budget.peak <= budget.limit + 2 * part and budget.held == 0     # bounded, not an exact peak


def test_next_reader_gets_the_budget_while_the_current_one_drains(remote, bucket):
    """Read-ahead across objects (layers): once the current reader has asked for its last part,
    what it gives back goes to the next one, before that one is read at all."""
    part = remote.part_size
    first, second = os.urandom(4 * part), os.urandom(4 * part - 7)
    remote.put("first", first)
    remote.put("second", second)
    budget = remote.read_ahead
    assert budget.limit == (remote.jobs + 2) * part == 5 * part
    with remote.open("first", len(first)) as current, remote.open("second", len(second)) as following:
        assert (len(current.parts), len(following.parts)) == (4, 1)
        assert _drain(current) == first
        assert len(following.parts) == 4 and budget.held == 4 * part      # all of it, not yet read
        for granted in list(following.parts):
            granted.future.result(timeout=60)                              # downloaded while unread
        assert all(granted.filled == granted.length for granted in following.parts)
        assert _drain(following) == second
    assert budget.held == 0


def test_closing_a_reader_mid_object_gives_its_parts_back(remote):
    data = os.urandom(3 * remote.part_size)
    remote.put("blob", data)
    with remote.open("blob", len(data)) as body:
        assert body.read(1000) == data[:1000]
    with remote.open("blob", len(data)) as body:      # nothing read at all
        pass
    for _attempt in range(100):                       # a download still running gives its buffer back when it stops
        if remote.read_ahead.held == 0:
            break
        time.sleep(0.1)
    assert remote.read_ahead.held == 0 and remote.read_ahead.readers == []
    with pytest.raises(RemoteError, match="closed"):
        body.read(10)


def test_uploads_and_ranged_reads_never_hold_a_part_in_python_memory(remote, tmp_path):
    """Parts stream from the spool file (upload) and into reused mmaps (ranged reads): allocations
    of part size in many threads are what left the accelerator's memory in malloc's arenas."""
    import tracemalloc
    data = os.urandom(3 * remote.part_size + 1)
    src = tmp_path / "big"
    src.write_bytes(data)
    tracemalloc.start()
    try:
        assert remote.put_file("big", str(src)) is True
        uploading = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        with remote.open("big", len(data)) as body:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
        reading = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(data).digest()
    # before: every part in flight was a bytes object of part_size (jobs x 5 MiB = 15 MiB and more)
    assert uploading < 2 * remote.part_size and reading < 2 * remote.part_size, (uploading, reading)


def test_multipart_loses_to_existing_object(remote, tmp_path):
    remote.put("big", b"already")
    src = tmp_path / "big"
    src.write_bytes(os.urandom(6 * MiB))
    assert remote.put_file("big", str(src)) is False
    assert remote.get("big") == b"already" and not src.exists()


def test_multipart_conditional_complete_loses_race(remote, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(os.urandom(6 * MiB))
    remote.head = lambda key: None          # the HEAD saw nothing; a racer wrote meanwhile
    remote.put("big", b"racer")
    assert remote.put_file("big", str(src)) is False
    assert remote.get("big") == b"racer"
    assert not remote.client.list_multipart_uploads(Bucket=remote.bucket).get("Uploads")


@pytest.mark.parametrize("count, at_most", [(3, 2), (20, 1)])
def test_stat_groups_twins_and_lists_when_many(remote, count, at_most):
    keys = ["blobs/%02d" % i for i in range(count)]
    for key in keys[::2]:
        remote.put(key + ".lz4", b"xx")
    counter = CountingClient(remote.client)
    found = remote.stat([k for key in keys for k in (key, key + ".lz4")])
    assert sorted(found) == [key + ".lz4" for key in keys[::2]]
    assert found[keys[0] + ".lz4"].size == 2
    assert len(counter.calls) <= max(at_most, count)
    if count >= _remote_s3.LIST_MIN_GROUPS:
        assert counter.calls == ["ListObjectsV2"]
    else:
        assert "HeadObject" not in counter.calls        # a blob and its twin: one listing each


def test_stat_stops_listing_a_huge_prefix(remote, monkeypatch):
    monkeypatch.setattr(_remote_s3, "LIST_MIN_GROUPS", 2)
    for i in range(6):
        remote.put("k/%d" % i, b"x")
    counter = CountingClient(remote.client)
    paginate = remote.client.get_paginator

    def small_pages(name):
        pager = paginate(name)
        real = pager.paginate
        pager.paginate = lambda **kw: real(**dict(kw, PaginationConfig={"PageSize": 2}))
        return pager
    monkeypatch.setattr(remote.client, "get_paginator", small_pages)
    found = remote.stat(["k/0", "k/5", "k/9"])
    assert sorted(found) == ["k/0", "k/5"]
    assert counter.calls == ["ListObjectsV2", "HeadObject", "HeadObject"]


def test_missing_bucket_is_one_clear_line(s3_env):
    remote = remote_from_url("s3://missing-%s/p" % uuid.uuid4().hex[:8], endpoint_url=s3_env)
    for call in (lambda: remote.get("x"), lambda: list(remote.list("")), lambda: remote.put("x", b"")):
        with pytest.raises(RemoteNotFoundError, match=r"^bucket missing-\w+ does not exist \(remote s3://"):
            call()


def test_unreachable_endpoint(s3_env, monkeypatch):
    monkeypatch.setattr(_remote_s3, "MAX_ATTEMPTS", 1)
    remote = remote_from_url("s3://b/p", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(RemoteError, match=r"^cannot reach S3 endpoint http://127.0.0.1:9 for s3://b/p/"):
        remote.get("dogestry.json")


@pytest.mark.parametrize("code, status, cls, fragment", [
    ("AccessDenied", 403, RemoteAuthError, "access denied reading s3://b/p/k"),
    ("SignatureDoesNotMatch", 403, RemoteAuthError, "check the credentials"),
    ("PermanentRedirect", 301, RemoteError, "bucket b is in region eu-west-1, not us-east-1"),
    ("NoSuchKey", 404, RemoteNotFoundError, "not found: s3://b/p/k"),
    ("SlowDown", 503, RemoteError, "reading s3://b/p/k failed"),
])
def test_error_mapping(s3_env, code, status, cls, fragment):
    remote = S3Remote.from_url("s3://b/p?region=us-east-1", endpoint_url=s3_env)
    exc = _remote_s3.ClientError({"Error": {"Code": code, "Message": "m", "Region": "eu-west-1"},
                                  "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    error = remote._error(exc, "reading", "k")
    assert type(error) is cls and fragment in str(error)  # pylint: disable=unidiomatic-typecheck


def test_presigned_get_works_without_credentials(remote):
    import urllib.request
    remote.put("obj", b"payload")
    url = remote.presign_get("obj", 60)
    assert urllib.request.urlopen(url).read() == b"payload"
    with pytest.raises(RemoteUnsupportedError, match="7 days"):
        remote.presign_get("obj", 8 * 24 * 3600)
