"""`dogestry serve`'s HTTP glue without a socket: the WSGI app's answers and log lines, the header gate's rule."""

import io
import json
import logging
import os

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.htpasswd import Htpasswd
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.writer import RegistryWriter
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.header_gate import head_complete
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.server import WsgiApp
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.htpasswd import PASSWORD, basic, htpasswd_file


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


def test_a_throttled_client_gets_429_with_retry_after(app, tmp_path):
    guarded = WsgiApp(app.api, Htpasswd(htpasswd_file(tmp_path, b"ci")))
    wrong = basic(b"ci", b"guess")
    statuses = [call(guarded, "GET", "/v2/", client="10.1.1.1", HTTP_AUTHORIZATION=wrong)[0] for _n in range(6)]
    status, headers, body = call(guarded, "GET", "/v2/", client="10.1.1.1", HTTP_AUTHORIZATION=basic(b"ci", PASSWORD))
    assert statuses == [401] * 5 + [429] and status == 429, statuses
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS" and 0 < int(headers["Retry-After"]) <= 60
    assert call(guarded, "GET", "/v2/", client="10.1.1.2", HTTP_AUTHORIZATION=basic(b"ci", PASSWORD))[0] == 200


def test_request_text_reaches_the_log_escaped(app, caplog):
    caplog.set_level(logging.INFO, logger="dogestry.serve")
    status, _headers, _body = call(app, "GET", "/v2/a\nfake 200 line\x00\x1b[31m/manifests/1", QUERY_STRING="n=\r\n1")
    assert status == 404 and json.loads(_body)["errors"][0]["code"] == "NOT_FOUND"     # no such endpoint, escaped or not
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
