"""HttpRemote against a plain static file server (http.server) on loopback serving a local remote."""

import functools
import http.server
import threading
import time

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._remotes import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote_http import HttpRemote, signed_url_expiry
from ansible_collections.dogestry.dogestry.plugins.module_utils._repository import Repository
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image


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
    from ansible_collections.dogestry.dogestry.plugins.module_utils import _remote_http
    monkeypatch.setattr(_remote_http, "RATE_GRACE", 1.0)
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"^reading http://127.0.0.1:\d+/drip: \d+ bytes in \d s, under 16 KiB/s: "
                                          r"the server is stalling, aborted$"):
        HttpRemote(hostile[0]).get("drip")
    assert time.monotonic() - started < 50    # cut off, not the 100 s the body would take (a margin a busy machine keeps)
