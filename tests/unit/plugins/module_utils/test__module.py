import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError, RemoteUnsupportedError
from ansible_collections.dogestry.dogestry.plugins.module_utils._module import _repository_from_params, too_old
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote


@pytest.mark.parametrize("versions, expected", [
    ({"docker": "7.1.0", "lz4": "4.4.5"}, []),
    ({"docker": "4.4.0", "lz4": "4.4.5"}, ["docker 4.4.0 (needs >= 5.0.0)"]),
    ({"docker": None, "lz4": "3.0.2"}, ["lz4 3.0.2 (needs >= 3.1.0)"]),
])
def test_too_old(versions, expected):
    assert too_old(versions, ("docker", "lz4")) == expected


def params(**overrides):
    base = dict(remote="/srv/dogestry", signed_url=None, jobs=4, access_key=None, secret_key=None,
                session_token=None, profile=None, region=None, endpoint_url=None, validate_certs=True, ca_bundle=None)
    base.update(overrides)
    return base


def test_repository_from_params():
    repo = _repository_from_params(params())
    assert isinstance(repo.remote, LocalRemote) and repo.url == "/srv/dogestry"


@pytest.mark.parametrize("overrides, error", [
    ({"jobs": 0}, DogestryError),
    ({"remote": "ftp://x/y"}, RemoteUnsupportedError),
])
def test_repository_from_bad_params(overrides, error):
    with pytest.raises(error):
        _repository_from_params(params(**overrides))
