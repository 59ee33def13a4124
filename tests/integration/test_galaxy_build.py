"""The collection as operators get it: `ansible-galaxy collection build` in a checkout where
scripts/setup.sh ran (as the README says), installed into an empty collections path, and a module
run from the installed copy by ansible-playbook."""

import os
import subprocess
import sys
import tarfile

from ansible_runner import run_tasks
from conftest import REPO

VENV_BIN = os.path.dirname(sys.executable)
# What ansible-galaxy writes into every artifact besides the collection's own files.
GALAXY_FILES = {"MANIFEST.json", "FILES.json"}


def galaxy(*args, cwd=REPO, env=None):
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-galaxy")] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, universal_newlines=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})), timeout=600, check=False)
    assert proc.returncode == 0, "ansible-galaxy %s: exit %d\n%s" % (" ".join(args), proc.returncode, proc.stdout[-3000:])
    return proc.stdout


def collection_files():
    """What git would ship: tracked, or new and not ignored (what scripts/test.sh gives ansible-test, too)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            stdout=subprocess.PIPE, check=True).stdout
    return {path for path in listed.decode().split("\0") if path}


def test_the_built_collection_holds_no_ignored_file_and_its_modules_run_installed(tmp_path):
    assert os.path.isdir(os.path.join(REPO, ".venv")), "the user's path: a checkout where scripts/setup.sh ran"
    galaxy("collection", "build", "--output-path", str(tmp_path))
    [artifact] = [path for path in os.listdir(str(tmp_path)) if path.endswith(".tar.gz")]
    artifact = str(tmp_path / artifact)
    with tarfile.open(artifact) as tar:
        files = {member.name for member in tar.getmembers() if not member.isdir()}
    ignored = sorted(files - collection_files() - GALAXY_FILES)
    assert not ignored, "the artifact packs %d files git ignores, e.g. %s" % (len(ignored), ignored[:5])
    size = os.path.getsize(artifact)
    assert size < 2 << 20, "the artifact is %d bytes" % size
    for needed in ("meta/runtime.yml", "plugins/modules/dogestry_tags.py", "plugins/module_utils/_ops/push.py",
                   "roles/accelerator/tasks/main.yml", "playbooks/deploy.yml"):
        assert needed in files, needed

    installed = tmp_path / "collections"
    installed.mkdir()
    # --no-deps: community.docker comes from Galaxy, which tests cannot reach; dogestry_tags needs nothing else.
    # Only that path is looked at: a copy installed elsewhere on this machine must not make the install a no-op.
    galaxy("collection", "install", "--no-deps", "-p", str(installed), artifact, cwd=str(tmp_path),
           env={"ANSIBLE_COLLECTIONS_PATH": str(installed)})
    assert sorted(os.listdir(str(installed / "ansible_collections"))) == ["dogestry"]

    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
    remote = str(tmp_path / "remote")
    store_image(Repository(LocalRemote(remote)), "app:1", [b"one layer"])
    # Only the installed copy on the collections path: not this checkout's.
    only_installed = {"ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    results = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_tags": {"remote": remote}, "register": "listed"},
        {"ansible.builtin.shell": "%s -t module dogestry.dogestry.dogestry_tags | head -n 1" % os.path.join(VENV_BIN, "ansible-doc"),
         "register": "doc", "environment": only_installed},
    ], env=only_installed)
    assert not results["listed"].get("failed"), results["listed"]
    assert list(results["listed"]["tags"]) == ["app:1"], results["listed"]
    assert str(installed) in results["doc"]["stdout"], results["doc"]
