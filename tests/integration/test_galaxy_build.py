"""The collection as operators get it: `ansible-galaxy collection build` in a checkout where
scripts/setup.sh ran (as the README says), installed into an empty collections path, and every module
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
    # Every module, run from the installed copy: AnsiballZ must ship each one's whole closure of engine
    # files (the packages under plugins/module_utils). Those that need Docker or an S3 remote are given
    # none and must say so in their own words: an engine file missing from the payload would fail first.
    no_docker = "unix://" + str(tmp_path / "no-docker.sock")
    results = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_tags": {"remote": remote}, "register": "listed"},
        {"ansible.builtin.shell": "%s -t module dogestry.dogestry.dogestry_tags | head -n 1" % os.path.join(VENV_BIN, "ansible-doc"),
         "register": "doc", "environment": only_installed},
        {"dogestry.dogestry.dogestry_tag_info": {"remote": remote}, "register": "tag_info"},
        {"dogestry.dogestry.dogestry_tag": {"remote": remote, "name": "app", "tag": "2", "image": "app:1"}, "register": "tag",
         "check_mode": True},
        {"dogestry.dogestry.dogestry_verify": {"remote": remote}, "register": "verify"},
        {"dogestry.dogestry.dogestry_prune": {"remote": remote}, "register": "prune", "check_mode": True},
        {"dogestry.dogestry.dogestry_sign": {"remote": remote, "image": "app:1", "private_key_path": str(tmp_path / "no-key.pem")},
         "register": "sign"},
        {"dogestry.dogestry.dogestry_signed_url": {"remote": remote, "image": "app:1"}, "register": "signed_url"},
        {"dogestry.dogestry.dogestry_pull": {"remote": remote, "image": "app:1", "docker_host": no_docker}, "register": "pull"},
        {"dogestry.dogestry.dogestry_push": {"remote": remote, "images": ["app:1"], "docker_host": no_docker}, "register": "push"},
    ], env=only_installed)
    assert not results["listed"].get("failed"), results["listed"]
    assert list(results["listed"]["tags"]) == ["app:1"], results["listed"]
    assert str(installed) in results["doc"]["stdout"], results["doc"]
    for name in ("tag_info", "tag", "verify", "prune"):
        assert not results[name].get("failed"), (name, results[name])
    assert results["tag"]["changed"], results["tag"]
    for name, says in (("sign", "no-key.pem"), ("signed_url", "s3://"), ("pull", "no-docker.sock"), ("push", "no-docker.sock")):
        assert results[name].get("failed") and "module_stderr" not in results[name], (name, results[name])
        assert says in results[name]["msg"] and "\n" not in results[name]["msg"], (name, results[name]["msg"])
