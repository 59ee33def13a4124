"""Running a module's main() in-process: exit_json and fail_json raise with the result they were given.

A helper module, not a conftest.py: the suite's tests import the top-level conftest by its bare name."""

import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class Exited(Exception):
    """exit_json (failed=False) or fail_json (failed=True) was called with `result`."""

    def __init__(self, failed, result):
        super().__init__(result)
        self.failed, self.result = failed, result


def module_runner(monkeypatch):
    """A function run(main, args, check_mode=False, diff=False) -> Exited (its .failed, its .result)."""
    def exit_json(self, **result):
        raise Exited(False, result)

    def fail_json(self, msg, **result):
        raise Exited(True, dict(result, msg=msg))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)

    def run(main, args, check_mode=False, diff=False):
        with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)):
            with pytest.raises(Exited) as exc:
                main()
        json.dumps(exc.value.result, default=str)    # what a module returns goes out as JSON
        return exc.value
    return run
