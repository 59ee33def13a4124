"""The roles' molecule scenarios, run as a user runs them (`molecule test -s NAME`), against the real dockerd."""

import os
import re
import subprocess
import sys

import pytest

from conftest import COLLECTIONS, REPO

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def molecule_image(docker_host):
    out = subprocess.run(["bash", os.path.join(REPO, "molecule", "build-image.sh")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, env=dict(os.environ, DOCKER_HOST=docker_host),
                         check=False, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("scenario, actions", [
    ("registry_block", ["destroy", "create", "prepare", "converge", "idempotence", "verify", "side_effect"]),
    ("accelerator", ["destroy", "create", "prepare", "check", "converge", "idempotence", "verify", "side_effect"]),
])
def test_molecule_scenario(docker_host, molecule_image, scenario, actions):
    # A suffix of our own: another checkout's run on the same daemon must not share the instance.
    env = dict(os.environ, DOCKER_HOST=docker_host, DOGESTRY_MOLECULE_IMAGE=molecule_image, NO_COLOR="1",
               DOGESTRY_MOLECULE_SUFFIX=str(os.getpid()),
               PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([COLLECTIONS, os.path.join(os.path.dirname(VENV_BIN),
                                                                                   "collections")]))
    out = subprocess.run([os.path.join(VENV_BIN, "molecule"), "test", "-s", scenario], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False,
                         timeout=1200)
    log = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)
    assert out.returncode == 0, log[-6000:]
    done = re.findall(r"\[%s > (\w+)\] Executed: Successful" % scenario, log)      # molecule's NO_COLOR form
    assert all(action in done for action in actions), (done, log[-3000:])
