import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._cli import commands as _cli, parser as _parser
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DockerError, DogestryError, RemoteUnsupportedError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DOCKER_ARGSPEC, REMOTE_ARGSPEC, _daemon_from_params, _repository_from_params
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote


def params(**overrides):
    base = dict(remote="/srv/dogestry", signed_url=None, jobs=4, access_key=None, secret_key=None,
                session_token=None, profile=None, region=None, endpoint_url=None, s3_validate_certs=True, ca_bundle=None)
    base.update(overrides)
    return base


def docker_params(**overrides):
    base = {name: spec.get("default") for name, spec in DOCKER_ARGSPEC.items()}
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
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.remote_list import RemoteList
    repo = _repository_from_params(params(fallback_remotes=["/srv/replica", "https://mirror.example/dogestry/"]))
    assert isinstance(repo.remote, RemoteList) and [r.url for r in repo.remote.remotes] == [
        "/srv/dogestry", "/srv/replica", "https://mirror.example/dogestry/"]
    assert repo.url == "/srv/dogestry"


def test_a_peers_file_puts_the_fleet_in_front_of_the_remote(tmp_path):
    import json
    from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.client import PeerRemote
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"self": "https://10.0.0.1:22376", "peers": ["https://10.0.0.1:22376",
                                 "https://10.0.0.2:22376"], "secret": "x" * 20}))
    repo = _repository_from_params(params(peers_file=str(peers)))
    assert isinstance(repo.remote, PeerRemote) and isinstance(repo.remote.remote, LocalRemote)
    # a pull is no peer: it asks every accelerator, its own host's too
    assert repo.remote.client.config.me is None and len(repo.remote.client.config.peers) == 2


@pytest.fixture
def cert_dir(tmp_path):
    """A DOCKER_CERT_PATH: ca.pem, cert.pem and key.pem (their content is read only when connecting)."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read before connecting\n")
    return tmp_path


def test_the_docker_options_are_community_dockers():
    """Names, aliases, environment variables and defaults as community.docker's DOCKER_COMMON_ARGS (timeout apart)."""
    expected = {
        "docker_host": (["docker_url"], ["DOCKER_HOST"], "unix:///var/run/docker.sock"),
        "tls_hostname": ([], ["DOCKER_TLS_HOSTNAME"], None),
        "api_version": (["docker_api_version"], ["DOCKER_API_VERSION"], "auto"),
        "timeout": ([], ["DOCKER_TIMEOUT"], 300),
        "ca_path": (["ca_cert", "tls_ca_cert", "cacert_path"], [], None),
        "client_cert": (["tls_client_cert", "cert_path"], [], None),
        "client_key": (["tls_client_key", "key_path"], [], None),
        "tls": ([], ["DOCKER_TLS"], False),
        "validate_certs": (["tls_verify"], ["DOCKER_TLS_VERIFY"], False),
    }
    found = {name: (spec.get("aliases", []), list(spec.get("fallback", (None, []))[1]), spec.get("default"))
             for name, spec in DOCKER_ARGSPEC.items()}
    assert found == expected


def test_no_option_name_means_two_things():
    """The S3 options and the Docker options share one module_defaults entry: no name or alias in both."""
    def names(spec):
        return {n for name, opts in spec.items() for n in [name] + opts.get("aliases", [])}
    assert not names(REMOTE_ARGSPEC) & names(DOCKER_ARGSPEC)


@pytest.mark.parametrize("overrides, environ, verify, cert", [
    # validate_certs: TLS, verified with ca_path; DOCKER_CERT_PATH fills in what is not given
    (dict(validate_certs=True), "cert_dir", "ca.pem", ("cert.pem", "key.pem")),
    (dict(validate_certs=True, ca_path="other-ca.pem"), "cert_dir", "other-ca.pem", ("cert.pem", "key.pem")),
    # tls alone: encrypted, not verified (community.docker's rule), client certificate still sent
    (dict(tls=True), "cert_dir", False, ("cert.pem", "key.pem")),
    (dict(validate_certs=True, tls=True), None, True, None),
])
def test_a_tls_daemon_from_params(cert_dir, overrides, environ, verify, cert):
    (cert_dir / "other-ca.pem").write_text("x")
    if "ca_path" in overrides:
        overrides["ca_path"] = str(cert_dir / overrides["ca_path"])
    daemon = _daemon_from_params(docker_params(docker_host="tcp://127.0.0.1:2376", api_version="1.41", **overrides),
                                 {"DOCKER_CERT_PATH": str(cert_dir)} if environ else {})
    assert daemon.api.base_url == "https://127.0.0.1:2376"
    assert daemon.api.verify == (str(cert_dir / verify) if isinstance(verify, str) else verify)
    assert daemon.api.cert == (tuple(str(cert_dir / c) for c in cert) if cert else None)


def test_without_tls_the_cert_path_is_not_used(cert_dir):
    daemon = _daemon_from_params(docker_params(docker_host="tcp://127.0.0.1:2375", api_version="1.41"),
                                 {"DOCKER_CERT_PATH": str(cert_dir)})
    assert daemon.api.base_url == "http://127.0.0.1:2375" and daemon.api.cert is None


@pytest.mark.parametrize("overrides, message", [
    (dict(client_cert="cert.pem"), "client_cert and client_key go together: give both, or neither \\(got only client_cert\\)"),
    (dict(client_key="key.pem"), "client_cert and client_key go together: give both, or neither \\(got only client_key\\)"),
    (dict(ca_path="missing.pem"), "ca_path .*missing.pem: no such file"),
])
def test_a_bad_tls_setting_is_one_line(cert_dir, overrides, message):
    overrides = {name: str(cert_dir / value) for name, value in overrides.items()}
    with pytest.raises(DockerError, match=message):
        _daemon_from_params(docker_params(docker_host="tcp://127.0.0.1:2376", validate_certs=True, api_version="1.41",
                                          **overrides), {})


def test_the_cli_reaches_a_tls_daemon_as_the_docker_cli(cert_dir, monkeypatch):
    monkeypatch.setenv("DOCKER_CERT_PATH", str(cert_dir))
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_API_VERSION", "1.41")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    args = _parser.build_parser().parse_args(["pull", "/r", "app:1", "--tlsverify", "--tlscacert", str(cert_dir / "ca.pem")])
    daemon, = _cli._daemons(args)
    assert (daemon.host, daemon.api.base_url) == ("tcp://127.0.0.1:2376", "https://127.0.0.1:2376")
    assert daemon.api.verify == str(cert_dir / "ca.pem")
    assert daemon.api.cert == (str(cert_dir / "cert.pem"), str(cert_dir / "key.pem"))
