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


def test_fallback_remotes_make_a_list_read_in_order_and_written_to_the_first():
    from ansible_collections.dogestry.dogestry.plugins.module_utils._remote_list import RemoteList
    repo = _repository_from_params(params(fallback_remotes=["/srv/replica", "https://mirror.example/dogestry/"]))
    assert isinstance(repo.remote, RemoteList) and [r.url for r in repo.remote.remotes] == [
        "/srv/dogestry", "/srv/replica", "https://mirror.example/dogestry/"]
    assert repo.url == "/srv/dogestry"


def test_a_peers_file_puts_the_fleet_in_front_of_the_remote(tmp_path):
    import json
    from ansible_collections.dogestry.dogestry.plugins.module_utils._peers import PeerRemote
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"self": "https://10.0.0.1:22376", "peers": ["https://10.0.0.1:22376",
                                 "https://10.0.0.2:22376"], "secret": "x" * 20}))
    repo = _repository_from_params(params(peers_file=str(peers)))
    assert isinstance(repo.remote, PeerRemote) and isinstance(repo.remote.remote, LocalRemote)
    # a pull is no peer: it asks every accelerator, its own host's too
    assert repo.remote.client.config.me is None and len(repo.remote.client.config.peers) == 2
