"""The minimum versions of the libraries: one table (_version.py) that every other statement of them
agrees with, and that the front ends check where the library is used."""

import os
import re

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _version
from ansible_collections.dogestry.dogestry.plugins.module_utils._cli import commands as _cli
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import _repository_from_params
from ansible_collections.dogestry.dogestry.plugins.module_utils._version import MINIMUM_VERSIONS, too_old

ROOT = os.path.abspath(os.path.join(os.path.dirname(_version.__file__), "..", ".."))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _minimums(text, pattern=r"^\s*[\"']?(%s)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)"):
    """{library: minimum} for the table's libraries named in `text` as `name>=X` (requirements style)."""
    found = {}
    for line in text.splitlines() + re.findall(r"\"([^\"]+)\"", text):
        match = re.match(pattern % "|".join(MINIMUM_VERSIONS), line.strip(), re.IGNORECASE)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def _same(a, b):
    return _version.version_tuple(a) == _version.version_tuple(b)


@pytest.mark.parametrize("where", ["requirements.txt", "meta/ee-requirements.txt", "pyproject.toml"])
def test_every_requirements_file_states_the_table_minimums(where):
    stated = _minimums(_read(*where.split("/")))
    assert sorted(stated) == sorted(MINIMUM_VERSIONS), (where, stated)
    wrong = {name: (stated[name], MINIMUM_VERSIONS[name]) for name in stated if not _same(stated[name], MINIMUM_VERSIONS[name])}
    assert not wrong, "%s states other minimums than _version.py: %s" % (where, wrong)


def test_the_module_docs_state_the_table_minimums():
    stated = _minimums(_read("plugins", "doc_fragments", "remote.py") + _read("plugins", "doc_fragments", "docker.py"),
                       r"^-\s*(%s)\b[^>]*>=\s*([0-9][0-9.]*)")
    assert sorted(stated) == sorted(MINIMUM_VERSIONS), stated
    wrong = {name: (stated[name], MINIMUM_VERSIONS[name]) for name in stated if not _same(stated[name], MINIMUM_VERSIONS[name])}
    assert not wrong, "the modules' requirements state other minimums than _version.py: %s" % wrong


@pytest.mark.parametrize("versions, expected", [
    ({"docker": "7.2.0", "lz4": "4.4.5"}, []),
    ({"docker": "7.0.0", "lz4": "4.4.5"}, ["docker 7.0.0 (needs >= 7.1.0)"]),
    ({"docker": "7.10.0", "lz4": "4.0.0"}, []),
    ({"docker": None, "lz4": "3.1.10"}, ["lz4 3.1.10 (needs >= 4.0.0)"]),
    ({"boto3": "1.35.1"}, ["boto3 1.35.1 (needs >= 1.35.2)"]),
    ({"boto3": "1.35.2rc1"}, []),
])
def test_too_old(versions, expected):
    assert too_old(versions, sorted(versions)) == expected


@pytest.fixture
def old_boto3(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setattr(boto3, "__version__", "1.28.0")


def test_an_s3_remote_needs_the_minimum_boto3_in_the_modules(old_boto3):
    with pytest.raises(DogestryError) as info:
        _repository_from_params(dict(remote="s3://bucket/prefix/", signed_url=None, jobs=4, access_key="a", secret_key="b",
                                     session_token=None, profile=None, region="us-east-1", endpoint_url=None,
                                     validate_certs=True, ca_bundle=None))
    assert "boto3 1.28.0 (needs >= %s)" % MINIMUM_VERSIONS["boto3"] in str(info.value)


def test_an_s3_remote_needs_the_minimum_boto3_in_the_cli(old_boto3, capsys):
    assert _cli.main(["tags", "s3://bucket/prefix/", "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dogestry: error: ") and "boto3 1.28.0 (needs >= %s)" % MINIMUM_VERSIONS["boto3"] in err, err


def test_a_directory_remote_does_not_need_boto3(old_boto3, tmp_path):
    repo = _repository_from_params(dict(remote=str(tmp_path), signed_url=None, jobs=4, access_key=None, secret_key=None,
                                        session_token=None, profile=None, region=None, endpoint_url=None,
                                        validate_certs=True, ca_bundle=None))
    assert repo.url == str(tmp_path)
