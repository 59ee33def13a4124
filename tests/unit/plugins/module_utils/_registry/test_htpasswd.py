"""`dogestry serve --htpasswd`: Basic auth checks, without a socket."""

import os

import bcrypt
import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._registry import htpasswd as _htpasswd
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.htpasswd import Htpasswd, Throttled
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.htpasswd import PASSWORD, basic, htpasswd_file


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CountedBcrypt:
    """bcrypt.checkpw, counted: the work a check costs is one bcrypt comparison, whoever asks."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = bcrypt.checkpw

        def checkpw(password, hashed):
            self.calls += 1
            return real(password, hashed)
        monkeypatch.setattr(_htpasswd.bcrypt, "checkpw", checkpw)


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
    for _attempt in range(_htpasswd.FAILURES_ALLOWED):
        assert users.check(basic(b"ci", b"guess"), "10.0.0.9") is False
    spent = counted.calls
    with pytest.raises(Throttled) as info:
        users.check(basic(b"ci", b"guess again"), "10.0.0.9")
    assert 0 < info.value.retry_after <= _htpasswd.FAILURE_WINDOW and counted.calls == spent
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.10") is True         # another client is not held back
    clock.now += _htpasswd.FAILURE_WINDOW + 1
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
    clock.now += _htpasswd.RELOAD_SECONDS + 1
    assert users.check(basic(b"ci", PASSWORD), "10.0.0.1") is False
    assert users.check(basic(b"ops", PASSWORD), "10.0.0.1") is True
    with open(path, "wb") as f:                        # a broken file refuses everyone until it is fixed
        f.write(b"ops:not-a-hash\n")
    clock.now += _htpasswd.RELOAD_SECONDS + 1
    assert users.check(basic(b"ops", PASSWORD), "10.0.0.1") is False
