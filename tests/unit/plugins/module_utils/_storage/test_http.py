"""HttpRemote against a plain static file server (http.server) on loopback serving a local remote."""

import functools
import http.server
import os
import threading
import time

import pytest

from conftest import replay

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    FormatError, RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.http import HttpRemote, signed_url_expiry
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import TicketRemote
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.flaky_http import FlakyServer


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """The waits between retries, recorded instead of slept (tests stay fast; the schedule is asserted)."""
    recorded = []
    monkeypatch.setattr(HttpRemote, "sleep", staticmethod(recorded.append), raising=False)
    return recorded


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def served(tmp_path):
    """(LocalRemote writing into a directory, base URL of a static server for that directory)."""
    local = LocalRemote(str(tmp_path / "remote"))
    local.staging_dir()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = _serve(functools.partial(quiet, directory=local.root))
    yield local, "http://127.0.0.1:%d/" % server.server_port
    server.shutdown()


S3_ERRORS = {
    "/expired": b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
    "/tampered": b"<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
                 b"does not match</Message></Error>",
    "/private": b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
}


@pytest.fixture
def s3_like():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0].rsplit("/", 1)[-1]
            body = S3_ERRORS.get("/" + path, b"boom")
            self.send_response(403 if body != b"boom" else 500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = _serve(Handler)
    yield "http://127.0.0.1:%d/" % server.server_port
    server.shutdown()


def test_read_methods(served):
    local, url = served
    local.put("a/b c", b"hello")
    remote = remote_from_url(url)
    assert isinstance(remote, HttpRemote) and remote.read_only
    assert remote.get("a/b c") == b"hello"
    with remote.open("a/b c") as body:
        assert body.read() == b"hello"
    with remote.open("a/b c", size=5) as body:
        assert body.read(2) + body.read() == b"hello"
    assert {k: i.size for k, i in remote.stat(["a/b c", "nope", "a/x"]).items()} == {"a/b c": 5}


def test_missing_key_is_not_found(served):
    with pytest.raises(RemoteNotFoundError, match=r"^not found: http://127.0.0.1:\d+/nope$"):
        remote_from_url(served[1]).get("nope")


@pytest.mark.parametrize("call, fragment", [
    (lambda r: r.put("k", b""), "is read-only"),
    (lambda r: r.put_file("k", "/nonexistent"), "is read-only"),
    (lambda r: r.delete("k"), "is read-only"),
    (lambda r: list(r.list("repositories/")), "cannot be listed: tag listing and image-ID prefixes need"),
])
def test_read_only_and_unlistable(served, call, fragment):
    with pytest.raises(RemoteUnsupportedError, match=fragment):
        call(remote_from_url(served[1]))


def test_pull_resolution_by_tag_works(served):
    local, url = served
    oid, manifest = store_image(Repository(local), "team/app:1", [b"layer one", b"layer two"])
    repo = Repository(remote_from_url(url.rstrip("/")))         # a trailing slash is optional
    assert repo.check() and repo.resolve("team/app:1")[1] == oid
    assert repo.read_config(repo.read_manifest(oid))
    with pytest.raises(RemoteUnsupportedError, match="cannot be listed"):
        repo.resolve("sha256:" + manifest.config_oid[:12])


@pytest.mark.parametrize("path, cls, message", [
    ("expired?X-Amz-Date=20240101T000000Z&X-Amz-Expires=60", RemoteAuthError,
     r"^signed URL expired at 2024-01-01T00:01:00Z; mint a new one \(http://127.0.0.1:\d+/expired\)$"),
    ("tampered?X-Amz-Signature=00", RemoteAuthError,
     r"^signed URL rejected: signature does not match \(tampered or truncated\?\)"),
    ("private", RemoteAuthError, r"^access denied reading http://127.0.0.1:\d+/private \(HTTP 403 AccessDenied\)"),
    ("other", RemoteError, r"^reading http://127.0.0.1:\d+/other failed: HTTP 500"),
])
def test_error_messages_are_one_line_without_signature(s3_like, path, cls, message):
    remote = HttpRemote(s3_like)
    with pytest.raises(cls, match=message) as info:
        remote._request(s3_like + path, "reading")
    assert "X-Amz" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_server():
    with pytest.raises(RemoteError, match=r"^cannot reach http://127.0.0.1:9/dogestry.json"):
        HttpRemote("http://127.0.0.1:9/").get("dogestry.json")


def test_signed_url_expiry():
    assert signed_url_expiry("https://h/k?X-Amz-Date=19700101T000100Z&X-Amz-Expires=5") == 65
    assert signed_url_expiry("https://h/k") is None


@pytest.fixture
def hostile():
    """A server that redirects, or drips its body a byte at a time."""
    contacted = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            contacted.append(self.path)
            targets = {"/to-ftp": "ftp://127.0.0.1:%d/x" % self.server.server_port,
                       "/to-other-host": "http://localhost:%d/ok" % self.server.server_port,
                       "/to-same-host": "/ok"}
            if self.path in targets:
                self.send_response(302)
                self.send_header("Location", targets[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _byte in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    server = _serve(Handler)
    yield "http://127.0.0.1:%d/" % server.server_port, contacted
    server.shutdown()


@pytest.mark.parametrize("key", ["to-ftp", "to-other-host"])
def test_redirects_leave_neither_scheme_nor_host(hostile, key):
    base, contacted = hostile
    with pytest.raises(RemoteError, match=r"redirected to .*: refused \(redirects may only stay on the same host"):
        HttpRemote(base).get(key)
    assert contacted == ["/" + key]        # the target was never contacted


def test_a_redirect_on_the_same_host_is_followed(hostile):
    assert HttpRemote(hostile[0]).get("to-same-host") == b"ok"


def test_a_dripping_server_is_cut_off(hostile, monkeypatch):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage import http as _remote_http
    monkeypatch.setattr(_remote_http, "RATE_GRACE", 1.0)
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"^reading http://127.0.0.1:\d+/drip: \d+ bytes in \d s, under 16 KiB/s: "
                                          r"the server is stalling, aborted$"):
        HttpRemote(hostile[0]).get("drip")
    assert time.monotonic() - started < 50    # cut off, not the 100 s the body would take (a margin a busy machine keeps)


@pytest.fixture
def cdn(tmp_path):
    """cdn(script=None, **options) -> a FlakyServer over tmp_path/cdn holding `blob` (300 kB of random bytes)."""
    root = tmp_path / "cdn"
    root.mkdir()
    (root / "blob").write_bytes(os.urandom(300000))
    started = []
    yield lambda script=None, **options: started.append(FlakyServer(str(root), script, **options)) or started[-1]
    for server in started:
        server.stop()


def test_503s_and_resets_before_the_response_are_retried_with_backoff(cdn, waits):
    server = cdn({"/blob": ["503", "reset", "503"], "/other": ["reset", "503"]})
    remote = HttpRemote(server.url)
    data = open(os.path.join(server.root, "blob"), "rb").read()
    assert remote.get("blob") == data
    assert [r.fault for r in server.requests] == ["503", "reset", "503", None]
    assert len(waits) == 3 and all(0 < wait <= 10 for wait in waits), waits
    with open(os.path.join(server.root, "other"), "wb") as f:
        f.write(b"12345")
    assert remote.stat(["other"])["other"].size == 5           # HEAD is retried too
    assert [r.method for r in server.requests[4:]] == ["HEAD", "HEAD", "HEAD"]


@pytest.mark.parametrize("how", ["open", "get"])
def test_a_body_cut_short_is_resumed_from_the_byte_reached(cdn, how):
    server = cdn({"/blob": ["truncate", "truncate", None]})
    data = open(os.path.join(server.root, "blob"), "rb").read()
    remote = HttpRemote(server.url)
    if how == "open":
        with remote.open("blob", len(data)) as body:
            got = b"".join(iter(lambda: body.read(65536), b""))
    else:
        got = remote.get("blob")
    assert got == data
    first, second, third = server.requests
    assert (first.range, second.range, third.range) == (None, "bytes=150000-", "bytes=225000-"), server.requests
    assert second.if_range and second.if_range == third.if_range        # the same version, or nothing


def test_an_object_that_changed_before_the_resume_is_refused(cdn):
    server = cdn({"/blob": ["change"]})
    with pytest.raises(RemoteError, match=r"^reading http://127.0.0.1:\d+/blob failed: it changed while it was read "
                                          r"\(the server sent it whole again, not from byte 150000\)$"):
        HttpRemote(server.url).get("blob")
    assert [r.range for r in server.requests] == [None, "bytes=150000-"]


def test_retries_end_with_one_line_naming_the_last_failure(cdn, waits):
    server = cdn({"/blob": ["503"] * 10})
    with pytest.raises(RemoteError, match=r"^reading http://127.0.0.1:\d+/blob failed: HTTP 503 .* \(6 attempts\)$"):
        HttpRemote(server.url).get("blob")
    assert len(server.requests) == 6 and len(waits) == 5


def test_client_errors_are_not_retried(cdn, waits):
    server = cdn()
    with pytest.raises(RemoteNotFoundError):
        HttpRemote(server.url).get("nope")
    assert len(server.requests) == 1 and waits == []


def test_a_seeded_storm_of_faults_still_reads_every_byte(cdn, fault_seed):
    server = cdn(seed=fault_seed, rates={"503": 0.2, "reset": 0.2, "truncate": 0.2})
    data = open(os.path.join(server.root, "blob"), "rb").read()
    remote = HttpRemote(server.url)
    rounds = 0
    while set(server.injected) != {"503", "reset", "truncate"}:     # until the storm has tried every kind
        assert rounds < 200, "%s: %s" % (replay(fault_seed), server.injected)
        assert remote.get("blob") == data, replay(fault_seed)
        rounds += 1


def test_a_ticket_fetched_over_https_may_not_send_objects_over_http():
    doc = {"dogestry_ticket": 1, "image": "a:1", "manifest": "sha256:" + "0" * 64, "expires_at": 2 ** 40,
           "objects": {"dogestry.json": {"url": "http://cdn.example/x?X-Amz-Signature=1", "size": 1}}}
    with pytest.raises(FormatError, match=r"is not a valid dogestry signed pull URL: object URL http://cdn.example/x "
                                          r"is plain http in a ticket fetched over https: refused$"):
        TicketRemote("https://h/t.json?X-Amz-Signature=s3cr3t", doc)
    assert TicketRemote("http://h/t.json?X-Amz-Signature=s3cr3t", doc).objects      # http throughout is the user's choice
