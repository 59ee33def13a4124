"""The roles, playbooks and molecule scenarios pass ansible-lint's production profile, and every playbook passes
ansible-playbook --syntax-check as an operator types it, before any -e (play names must not need a variable)."""

import glob
import os
import subprocess
import sys

import pytest

from ansible_runner import collections_path
from conftest import REPO

BIN = os.path.dirname(sys.executable)
PLAYBOOKS = sorted(glob.glob(os.path.join(REPO, "playbooks", "*.yml")))


def _env(home):
    """This collection and the ones setup.sh installed, and nothing a user installed under ~/.ansible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([collections_path(), os.path.join(BIN, "..", "collections")]),
               ANSIBLE_NOCOLOR="1", NO_COLOR="1", PATH=BIN + os.pathsep + env.get("PATH", ""))
    return env


def _run(cmd, home):
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=_env(home), timeout=900, check=False)
    return proc.returncode, proc.stdout


def test_ansible_lint_production_profile_passes(tmp_path):
    rc, out = _run([os.path.join(BIN, "ansible-lint"), "--offline", "--nocolor", "--profile", "production",
                    "--format", "pep8", "roles", "playbooks", "molecule"], tmp_path)
    assert rc == 0 and "Profile 'production' was required, and it passed." in out, out[-6000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=os.path.basename)
def test_each_playbook_passes_syntax_check_without_extra_vars(tmp_path, playbook):
    rc, out = _run([os.path.join(BIN, "ansible-playbook"), "--syntax-check", playbook], tmp_path)
    assert rc == 0, out[-3000:]
