"""Htpasswd files and Basic credentials for the auth tests."""

import base64

import bcrypt

PASSWORD = b"s3cret pass"


def basic(user, password):
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def htpasswd_file(tmp_path, *users):
    """An htpasswd file (as `htpasswd -B` writes, at bcrypt's cheapest cost) giving each user PASSWORD."""
    path = tmp_path / "htpasswd"
    path.write_bytes(b"".join(b"%s:%s\n" % (user, bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))) for user in users))
    return str(path)
