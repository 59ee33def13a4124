import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError, RemoteUnsupportedError
from ansible_collections.dogestry.dogestry.plugins.module_utils._module import _repository_from_params
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote


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
