"""`dogestry serve`'s HTTP glue without a socket: Basic auth (Htpasswd), and the WSGI app's answers and log lines."""

import base64
import io
import json
import logging
import os

import bcrypt
import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _server
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry_api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry_push import RegistryWriter
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._server import Htpasswd, Throttled, WsgiApp, head_complete

PASSWORD = b"s3cret pass"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def basic(user, password):
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def htpasswd_file(tmp_path, *users):
    path = tmp_path / "htpasswd"
    path.write_bytes(b"".join(b"%s:%s\n" % (user, bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))) for user in users))
    return str(path)


class CountedBcrypt:
    """bcrypt.checkpw, counted: the work a check costs is one bcrypt comparison, whoever asks."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = bcrypt.checkpw

        def checkpw(password, hashed):
            self.calls += 1
            return real(password, hashed)
        monkeypatch.setattr(_server.bcrypt, "checkpw", checkpw)


@pytest.mark.parametrize("line", [
    b"ci:$2y$10$short",                                   # bcrypt's "Invalid salt" at the first login
    b"ci:$2y$99$" + b"a" * 53,                           # no such cost
    b"ci:$2y$10$" + b"!" * 53,                           # not bcrypt's base64
    b"ci:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",           # htpasswd -s: not bcrypt
])
def test_a_malformed_hash_is_refused_at_start_with_its_line(tmp_path, line):
    path = tmp_path / "htpasswd"
    path.write_bytes(b"# users\n" + line + b"\n")
    with pytest.raises(DogestryError, match="line 2"):
        Htpasswd(str(path))


def test_a_password_over_72_bytes_is_refused_not_an_error(tmp_path):
    users = Htpasswd(htpasswd_file(tmp_path, b"ci"))
    assert users.check(basic(b"ci", PASSWORD + b"x" * 80), "10.0.0.1") is False
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.1") is True


def test_unknown_users_cost_a_bcrypt_comparison_as_known_ones_do(tmp_path, monkeypatch):
    users = Htpasswd(htpasswd_file(tmp_path, b"ci"))
    counted = CountedBcrypt(monkeypatch)
    for user, password in ((b"ci", b"wrong"), (b"nobody", b"wrong"), (b"nobody", b"x" * 100), (b"ci", b"x" * 100)):
        before = counted.calls
        assert users.check(basic(user, password), "10.0.0.%d" % before) is False
        assert counted.calls == before + 1, (user, password)


def test_wrong_passwords_are_throttled_per_client_without_bcrypt(tmp_path, monkeypatch):
    clock = Clock()
    users = Htpasswd(htpasswd_file(tmp_path, b"ci"), clock=clock)
    counted = CountedBcrypt(monkeypatch)
    for _attempt in range(_server.FAILURES_ALLOWED):
        assert users.check(basic(b"ci", b"guess"), "10.0.0.9") is False
    spent = counted.calls
    with pytest.raises(Throttled) as info:
        users.check(basic(b"ci", b"guess again"), "10.0.0.9")
    assert 0 < info.value.retry_after <= _server.FAILURE_WINDOW and counted.calls == spent
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.10") is True         # another client is not held back
    clock.now += _server.FAILURE_WINDOW + 1
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.9") is True


def test_a_removed_user_loses_access_without_a_restart(tmp_path):
    clock = Clock()
    path = htpasswd_file(tmp_path, b"ci", b"ops")
    users = Htpasswd(path, clock=clock)
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.1") and users.check(basic(b"ops", PASSWORD), "10.0.0.1")
    with open(path, "rb") as f:
        kept = [line for line in f.read().splitlines(True) if not line.startswith(b"ci:")]
    with open(path + ".new", "wb") as f:
        f.writelines(kept)
    os.replace(path + ".new", path)
    clock.now += _server.RELOAD_SECONDS + 1
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.1") is False
    assert users.check(basic(b"ops", PASSWORD), "10.0.0.1") is True
    with open(path, "wb") as f:                        # a broken file refuses everyone until it is fixed
        f.write(b"ops:not-a-hash\n")
    clock.now += _server.RELOAD_SECONDS + 1
    assert users.check(basic(b"ops", PASSWORD), "10.0.0.1") is False


# ---- the WSGI app ------------------------------------------------------------------------------

@pytest.fixture
def app(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    repo.check(create=True)
    writer = RegistryWriter(repo, str(tmp_path))
    yield WsgiApp(RegistryApi(repo, writer=writer))
    writer.close()


def call(app, method, path, body=None, client="127.0.0.1", **environ):
    environ.update({"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": client})
    if body is not None:
        environ.setdefault("wsgi.input", body)
    started = []
    result = app(environ, lambda status, headers: started.append((int(status.split()[0]), dict(headers))))
    try:
        payload = b"".join(result)
    finally:
        result.close()
    return started[0][0], started[0][1], payload


def test_health_without_credentials_says_only_that_it_is_alive(app, tmp_path):
    users = htpasswd_file(tmp_path, b"ci")
    guarded = WsgiApp(app.api, Htpasswd(users))
    status, _headers, body = call(guarded, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert str(tmp_path) not in body.decode()
    status, _headers, body = call(guarded, "GET", "/healthz", HTTP_AUTHORIZATION=basic(b"ci", PASSWORD))
    assert status == 200 and json.loads(body)["remote"] == app.api.repo.url
    os.rename(str(tmp_path / "remote"), str(tmp_path / "gone"))
    status, _headers, body = call(guarded, "GET", "/healthz")
    assert status == 503 and str(tmp_path) not in body.decode() and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


def test_request_text_reaches_the_log_escaped(app, caplog):
    caplog.set_level(logging.INFO, logger="dogestry.serve")
    status, _headers, _body = call(app, "GET", "/v2/a\nfake 200 line\x00\x1b[31m/manifests/1", QUERY_STRING="n=\r\n1")
    assert status in (400, 404)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and "\x00" not in lines[0] and "\x1b" not in lines[0]
    assert "\r" not in lines[0] and "\\n" in lines[0], lines


class BrokenChunks(io.RawIOBase):
    """cheroot's wsgi.input when a chunked body stops mid-chunk: it raises ValueError."""

    def __init__(self, first):
        self.first = first

    def read(self, size=-1):
        if self.first:
            data, self.first = self.first, b""
            return data
        raise ValueError("Bad chunked transfer coding (expected '\\r\\n', got b'')")


@pytest.mark.parametrize("body", [
    BrokenChunks(b"half a chunk"),
    io.BytesIO(b"12345"),           # 5 bytes of a Content-Length: 10 body, then the client went away
])
def test_a_body_cut_short_is_a_400_not_a_traceback(app, caplog, body):
    status, headers, _b = call(app, "POST", "/v2/team/app/blobs/uploads/")
    location = headers["Location"]
    environ = {"CONTENT_LENGTH": "10"} if isinstance(body, io.BytesIO) else {"HTTP_TRANSFER_ENCODING": "chunked"}
    status, headers, payload = call(app, "PATCH", location, body=body, **environ)
    assert (status, json.loads(payload)["errors"][0]["code"]) == (400, "BLOB_UPLOAD_INVALID"), payload
    assert headers["Content-Type"] == "application/json"
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("data,complete", [
    (b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", False),
    (b"GET /v2/ HTTP/1.1\r\n", False),
    (b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nbody bytes", True),
    (b"GET /v2/ HTTP/1.1\nHost: x\n", True),      # not HTTP (bare LF): cheroot answers 400 at once
    (b"G", False),
])
def test_head_complete(data, complete):
    assert head_complete(data) is complete
