"""Every module's argument spec: the shared remote and Docker options with their aliases, secrets never logged,
and each module's own required, exclusive and choice rules."""

import pytest
from ansible.module_utils import basic

from ansible_collections.dogestry.dogestry.plugins.modules import (
    dogestry_prune, dogestry_pull, dogestry_push, dogestry_sign, dogestry_tag, dogestry_tag_info, dogestry_tags,
    dogestry_verify,
)

MODULES = [dogestry_prune, dogestry_pull, dogestry_push, dogestry_sign, dogestry_tag, dogestry_tag_info, dogestry_tags,
           dogestry_verify]


class Captured(Exception):
    pass


def spec_of(module, monkeypatch):
    """The argument_spec and rules module.main() hands AnsibleModule."""
    def capture(self, argument_spec, **kwargs):
        raise Captured(argument_spec, kwargs)
    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    with pytest.raises(Captured) as exc:
        module.main()
    return exc.value.args


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_shared_options_secrets_and_aliases(module, monkeypatch):
    spec, kwargs = spec_of(module, monkeypatch)
    assert kwargs["supports_check_mode"] is True
    assert spec["secret_key"]["no_log"] is True and spec["session_token"]["no_log"] is True
    assert spec["access_key"]["no_log"] is False        # an ID, not a secret: shown, and no sanity warning
    assert "validate_certs" not in spec["s3_validate_certs"].get("aliases", [])     # that name is the daemon's
    assert spec["s3_validate_certs"]["aliases"] == ["aws_validate_certs"]
    assert spec["validate_certs"]["aliases"] == ["tls_verify"] and spec["validate_certs"]["default"] is False
    assert "docker_url" in spec["docker_host"]["aliases"]
    secrets = sorted(name for name, option in spec.items() if option.get("no_log"))
    assert set(secrets) - {"secret_key", "session_token", "signed_url", "private_key", "private_key_passphrase"} == set()


def test_each_modules_own_rules(monkeypatch):
    assert spec_of(dogestry_pull, monkeypatch)[1]["required_one_of"] == [("remote", "signed_url")]
    spec, kwargs = spec_of(dogestry_pull, monkeypatch)
    assert spec["signed_url"]["no_log"] is True and spec["image"]["aliases"] == ["name"] and spec["remote"].get("required") is None
    spec, kwargs = spec_of(dogestry_sign, monkeypatch)
    assert kwargs["mutually_exclusive"] == [("private_key", "private_key_path")]
    assert kwargs["required_one_of"] == [("private_key", "private_key_path")]
    assert spec["private_key"]["no_log"] is True and spec["private_key_passphrase"]["no_log"] is True
    spec, kwargs = spec_of(dogestry_push, monkeypatch)
    assert spec["images"]["required"] is True and spec["images"]["aliases"] == ["image"]
    assert spec["compression"] == dict(type="str", choices=["lz4", "none"], default="lz4")
    spec, kwargs = spec_of(dogestry_tag, monkeypatch)
    assert kwargs["required_if"] == [("state", "present", ["image"])] and spec["name"]["required"] is True
    spec, kwargs = spec_of(dogestry_tags, monkeypatch)
    assert spec["state"].get("default") is None      # no state: list, as before the split
    spec, kwargs = spec_of(dogestry_prune, monkeypatch)
    assert spec["grace_period"]["default"] == "7d"
