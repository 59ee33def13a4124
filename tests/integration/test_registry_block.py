"""The registry_block role on files of this host's own (its daemon.json, hosts file, certs.d), by
ansible-playbook: what it must refuse to write. Docker's side of the role is in test_fleet.py."""

import json
import os
import subprocess

import pytest
import yaml

from ansible_runner import run_playbook
from conftest import FETCH_DOCKER


@pytest.fixture(scope="module")
def dockerd28():
    """Docker 28's dockerd, whose --validate checks a configuration (20.10's has no such flag)."""
    fetch = subprocess.run(["bash", FETCH_DOCKER, "28"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, check=False)
    if fetch.returncode != 0:
        pytest.fail("Docker 28 could not be fetched (scripts/fetch-docker.sh 28):\n" + fetch.stderr[-2000:], pytrace=False)
    return fetch.stdout.strip().splitlines()[-1]


def _apply(tmp_path, daemon_json, **role_vars):
    """registry_block on tmp_path's files, with daemon.json holding `daemon_json` first; (ok?, output, daemon.json)."""
    with open(tmp_path / "daemon.json", "w") as f:
        f.write(daemon_json)
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    playbook = tmp_path / "registry-block.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False,
                                         "roles": ["dogestry.dogestry.registry_block"]}]))
    params = dict({"registry_block_daemon_json": str(tmp_path / "daemon.json"),
                   "registry_block_hosts_file": str(tmp_path / "hosts"),
                   "registry_block_certs_dir": str(tmp_path / "certs.d"), "registry_block_reload_docker": False},
                  **role_vars)
    proc, output = run_playbook(tmp_path, str(playbook), params)
    with open(tmp_path / "daemon.json") as f:
        return proc.returncode == 0, output, f.read()


def test_a_daemon_json_dockerd_refuses_is_never_written(tmp_path, dockerd28):
    # A setting of the host's own that this dockerd refuses: the merged file would be refused too.
    before = '{"log-level": "loud"}'
    ok, output, after = _apply(tmp_path, before, registry_block_dockerd=dockerd28)
    assert not ok and "invalid logging level: loud" in output, output[-3000:]
    assert after == before, "daemon.json must be left as it was"
    # Valid, it is written (and validated by the same dockerd).
    ok, output, after = _apply(tmp_path, '{"log-level": "warn"}', registry_block_dockerd=dockerd28)
    assert ok, output[-3000:]
    assert json.loads(after) == {"log-level": "warn", "live-restore": True, "registry-mirrors": ["http://127.0.0.1:22375"]}


@pytest.mark.parametrize("mirror", ["127.0.0.1:22375", "http://127.0.0.1:22375/v2/", "ftp://127.0.0.1:22375"])
def test_a_mirror_docker_would_refuse_is_refused_before_anything_is_written(tmp_path, mirror):
    # Docker 20.10 (this host's dockerd) cannot validate a configuration: the role checks the URL itself.
    before = '{"log-level": "warn"}'
    ok, output, after = _apply(tmp_path, before, registry_block_mirror=mirror)
    assert not ok and "registry_block_mirror %s is not a mirror Docker takes" % mirror in output, output[-3000:]
    assert after == before
    assert "dogestry registry_block" not in (tmp_path / "hosts").read_text()
    assert not os.path.exists(tmp_path / "certs.d")
