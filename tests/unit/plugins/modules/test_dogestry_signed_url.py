"""dogestry_signed_url's URL against Ansible's own no_log masking (remove_values), which replaces a no_log value
wherever it occurs in a result."""

from urllib.parse import parse_qs, urlsplit

import pytest
from ansible.module_utils.common.parameters import remove_values

from ansible_collections.dogestry.dogestry.plugins.modules.dogestry_signed_url import survive_masking

SIGNED = ("https://s3.example/b/tickets/1-ab.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIA%2F20261203"
          "&X-Amz-Date=20261203T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
          "&X-Amz-Security-Token={token}&X-Amz-Signature=0f1e2d")


@pytest.mark.parametrize("token, in_url", [
    ("FwoGZXIvYXdzEBYaDH7example/token+with=", "FwoGZXIvYXdzEBYaDH7example%2Ftoken%2Bwith%3D"),   # as botocore sends it
    ("FwoGZXIvYXdzEBYaDH7exampleTokenAlnum0", "FwoGZXIvYXdzEBYaDH7exampleTokenAlnum0"),
])
def test_only_the_token_parameter_is_encoded_and_masking_leaves_the_url_intact(token, in_url):
    url = SIGNED.replace("{token}", in_url)
    encoded, leaked = survive_masking(url, {"session_token": token, "secret_key": "wJalrXUtnFEMI/K7MDENG"})
    assert leaked is None and remove_values(encoded, {token, "wJalrXUtnFEMI/K7MDENG"}) == encoded
    assert parse_qs(urlsplit(encoded).query)["X-Amz-Security-Token"] == [token]
    assert encoded.replace(encoded.split("X-Amz-Security-Token=")[1].split("&")[0], in_url) == url   # nothing else moved


@pytest.mark.parametrize("secrets, leaked", [
    ({"session_token": "https"}, "session_token"),          # the scheme
    ({"session_token": "X-Amz"}, "session_token"),          # the other parameters' names
    ({"session_token": "0f1e2d"}, "session_token"),         # the signature
    ({"session_token": "3"}, "session_token"),              # its own percent-encoding (%33)
    ({"session_token": "tok", "secret_key": "s3.example"}, "secret_key"),
])
def test_a_secret_occurring_elsewhere_is_reported_not_broken(secrets, leaked):
    url = SIGNED.replace("{token}", secrets["session_token"])
    assert survive_masking(url, secrets) == (None, leaked)


def test_a_url_without_a_token_is_unchanged():
    url = SIGNED.replace("&X-Amz-Security-Token={token}", "")
    assert survive_masking(url, {"session_token": None, "secret_key": "wJalrXUtnFEMI"}) == (url, None)
