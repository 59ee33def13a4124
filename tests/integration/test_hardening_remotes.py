"""Issue 11's integrity items through the engine and a real dockerd on each kind of remote: a directory,
S3 (moto_server) and, for pulls, a plain static HTTP server over a directory. test_hardening.py covers
the same items on a directory through the modules; this file proves they hold on S3 and HTTP too."""

import functools
import http.server
import os
import threading
import uuid

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.daemon import Daemon
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.pull import execute_pull, plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.push import execute_push, plan_push
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import image_index_key, manifest_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.tags import ref_document, tag_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.http import HttpRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.flaky_http import FlakyServer

MiB = 1 << 20


@pytest.fixture
def name():
    return "dogestry-hr-%s" % uuid.uuid4().hex[:8]


@pytest.fixture
def daemon(docker_host):
    return Daemon(docker_host)


@pytest.fixture(params=["directory", "s3"])
def repo(request, tmp_path):
    """A writable remote of each kind."""
    if request.param == "directory":
        return Repository(remote_from_url(str(tmp_path / "remote")))
    s3_env, bucket = request.getfixturevalue("s3_env"), request.getfixturevalue("s3_bucket")
    return Repository(remote_from_url("s3://%s/h/" % bucket, endpoint_url=s3_env, part_size=5 * MiB))


@pytest.fixture
def served(tmp_path):
    """(a writable directory repository, the same remote read through a static HTTP server)."""
    local = Repository(remote_from_url(str(tmp_path / "remote")))
    local.remote.staging_dir()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=local.remote.root))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield local, Repository(remote_from_url("http://127.0.0.1:%d/" % server.server_port))
    server.shutdown()


def push(daemon, repo, image):
    return execute_push(daemon, repo, plan_push(daemon, repo, image), "lz4", 2)


def pull(daemon, repo, image):
    return execute_pull(daemon, repo, plan_pull(daemon, repo, image))


def two_images(daemon, build_image, repo, name):
    """Push A and B; then A's index entry names B's manifest. Returns (A's ID, B's manifest oid)."""
    a = build_image(daemon.host, name + "-a:1", [{"/who": "a\n"}])
    build_image(daemon.host, name + "-b:1", [{"/who": "b\n"}])
    push(daemon, repo, name + "-a:1")
    b_manifest = push(daemon, repo, name + "-b:1")["manifest"][7:]
    repo.remote.put(image_index_key(a[7:]), ref_document(b_manifest), overwrite=True)
    return a, b_manifest


def test_a_tampered_index_entry_is_never_used_for_a_push_or_a_pull(daemon, build_image, repo, name):
    a, b_manifest = two_images(daemon, build_image, repo, name)
    with pytest.raises(BlobCorruptError, match="does not name a readable manifest of that image"):
        plan_pull(daemon, repo, a[7:19])
    repo.delete_tag(ImageRef(name + "-a", "1"))
    daemon.api.tag(name + "-a:1", name + "-a", "2")
    pushed = push(daemon, repo, name + "-a:2")
    assert pushed["image_id"] == a and pushed["manifest"][7:] != b_manifest
    tagged = repo.read_tag(ImageRef(name + "-a", "2"))
    assert "sha256:" + repo.read_manifest(tagged).config_oid == a
    assert repo.index_entry(a[7:]) == tagged                # the push put the right entry back
    daemon.remove(name + "-a:1")
    daemon.remove(name + "-a:2")
    assert pull(daemon, repo, a[7:19])["image_id"] == a


def test_a_manifest_swapped_for_another_images_is_refused_over_http(daemon, build_image, served, name):
    """HTTP remotes cannot list, so ID prefixes (the index) do not apply; what a tag names is checked instead."""
    local, web = served
    a, b_manifest = two_images(daemon, build_image, local, name)
    a_manifest = local.read_tag(ImageRef(name + "-a", "1"))
    local.remote.put(manifest_key(a_manifest), local.remote.get(manifest_key(b_manifest)), overwrite=True)
    daemon.remove(name + "-a:1")
    with pytest.raises(BlobCorruptError, match="manifest %s on .* is corrupt" % a_manifest) as caught:
        pull(daemon, web, name + "-a:1")
    assert "\n" not in str(caught.value)
    assert daemon.inspect(a) is None and daemon.inspect(name + "-a:1") is None


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_a_damaged_stored_layer_is_uploaded_again_not_reused(daemon, build_image, repo, name, damage):
    """A few bytes of junk (small: read whole) or half of a 2 MiB layer (large: caught by its size)."""
    payload = os.urandom(300000 if damage == "junk" else 2 * MiB)       # random: lz4 keeps its size
    image = build_image(daemon.host, name + ":1", [{"/data": payload}])
    first = push(daemon, repo, name + ":1")
    top = repo.read_manifest(first["manifest"][7:]).layers[-1]
    data = repo.remote.get(top.key)
    repo.remote.put(top.key, b"junk!" if damage == "junk" else data[:len(data) // 2], overwrite=True)
    repo.delete_tag(ImageRef(name, "1"))
    repo.remote.delete(manifest_key(first["manifest"][7:]))
    repo.remote.delete(image_index_key(image[7:]))
    daemon.api.tag(name + ":1", name, "2")
    again = push(daemon, repo, name + ":2")
    assert again["layers_repaired"] == ["sha256:" + top.oid] and "sha256:" + top.oid in again["layers_transferred"]
    assert not verify(repo).problems
    assert list(repo.remote.list("quarantine/"))
    daemon.remove(name + ":1")
    daemon.remove(name + ":2")
    assert pull(daemon, repo, name + ":2")["image_id"] == image


def test_a_pull_over_http_survives_503s_resets_and_cut_bodies(daemon, build_image, tmp_path, name, monkeypatch):
    """A CDN in a bad hour: the layer's body is cut twice, the tag answers 503 and resets, and every other
    request meets a seeded share of all three. The pull loads the image, every byte verified, and no wait
    between retries is slept (they are recorded)."""
    seed = int.from_bytes(os.urandom(4), "big")
    waits = []
    monkeypatch.setattr(HttpRemote, "sleep", staticmethod(waits.append), raising=False)
    local = Repository(remote_from_url(str(tmp_path / "remote")))
    image = build_image(daemon.host, name + ":1", [{"/data": os.urandom(3 * MiB)}])
    manifest = local.read_manifest(push(daemon, local, name + ":1")["manifest"][7:])
    script = {"GET /" + manifest.layers[-1].key: ["truncate", "503", "truncate", "reset"],
              "GET /" + tag_key(name, "1"): ["503", "reset"]}
    server = FlakyServer(local.remote.root, script, seed=seed, rates={"503": 0.1, "reset": 0.1, "truncate": 0.1})
    try:
        daemon.remove(name + ":1")
        assert pull(daemon, Repository(remote_from_url(server.url)), name + ":1")["image_id"] == image, "seed %d" % seed
    finally:
        server.stop()
    layer_gets = [r for r in server.requests if r.method == "GET" and r.path == "/" + manifest.layers[-1].key]
    assert [r.fault for r in layer_gets] == ["truncate", "503", "truncate", "reset", None], "seed %d" % seed
    assert [r.range is not None for r in layer_gets] == [False, True, True, True, True], "seed %d" % seed
    assert len(waits) >= 5 and daemon.inspect(image)["Id"] == image, "seed %d" % seed
