"""remote_from_url: which backend a URL names, and one line saying what is wrong with a malformed one."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import RemoteUnsupportedError
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.http import HttpRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import TicketRemote


@pytest.mark.parametrize("url, root", [
    ("/srv/dogestry", "/srv/dogestry"),
    ("  /srv/dogestry  ", "/srv/dogestry"),
    ("file:///srv/dogestry", "/srv/dogestry"),
    ("file://localhost/srv/dogestry", "/srv/dogestry"),
    ("file:///srv/with%20space", "/srv/with space"),
])
def test_a_path_or_file_url_is_a_directory_remote(url, root):
    remote = remote_from_url(url)
    assert isinstance(remote, LocalRemote) and remote.root == root


def test_an_https_url_is_an_http_remote_and_a_signed_one_a_ticket(monkeypatch):
    assert isinstance(remote_from_url("https://dl.example/dogestry/"), HttpRemote)
    opened = []     # a ticket is fetched when opened: record what the factory hands it instead
    monkeypatch.setattr(TicketRemote, "from_url", classmethod(lambda cls, url, **kw: opened.append((url, kw)) or "ticket"))
    assert remote_from_url("https://s3.example/b/tickets/1.json?X-Amz-Signature=ab", validate_certs=False, jobs=3) == "ticket"
    assert remote_from_url("https://s3.example/b/tickets/1.json") == "ticket"
    assert opened == [("https://s3.example/b/tickets/1.json?X-Amz-Signature=ab", {"validate_certs": False, "ca_bundle": None, "jobs": 3}),
                      ("https://s3.example/b/tickets/1.json", {"validate_certs": True, "ca_bundle": None, "jobs": None})]


@pytest.mark.parametrize("url, message", [
    ("", "remote is empty: give a directory (/srv/dogestry) or an s3:// URL"),
    ("   ", "remote is empty: give a directory (/srv/dogestry) or an s3:// URL"),
    (None, "remote is empty: give a directory (/srv/dogestry) or an s3:// URL"),
    ("/srv/a\0b", "remote contains a NUL byte: use /path, file:///path, s3://bucket/prefix or https://host/prefix"),
    ("srv/dogestry", "remote 'srv/dogestry' is a relative path: use an absolute directory (/srv/dogestry) or a URL"),
    ("file://host/srv", "remote 'file://host/srv': a file URL must be file:///absolute/path"),
    ("ftp://host/x", "remote 'ftp://host/x': unsupported scheme 'ftp' (use /path, file:///path, s3://bucket/prefix "
                     "or https://host/prefix)"),
    ("https:///prefix", "remote 'https:///prefix' has no host: use /path, file:///path, s3://bucket/prefix "
                        "or https://host/prefix"),
])
def test_a_malformed_remote_is_one_line_saying_what_is_wrong(url, message):
    with pytest.raises(RemoteUnsupportedError) as exc:
        remote_from_url(url)
    assert str(exc.value) == message


def test_a_bad_port_is_named_and_a_signed_urls_query_is_not_shown():
    with pytest.raises(RemoteUnsupportedError) as exc:
        remote_from_url("https://host:99999/b?X-Amz-Signature=secret")
    assert str(exc.value).startswith("remote 'https://host:99999/b' is not a valid URL (")
    assert "secret" not in str(exc.value) and "\n" not in str(exc.value)
