"""The collection's execution-environment metadata (meta/execution-environment.yml -> meta/ee-requirements.txt and
bindep.txt) as ansible-builder reads it: `introspect` finds exactly the modules' requirements, and `create` writes
the build context of an execution environment holding the built collection (no container is built)."""

import os
import subprocess
import sys

import yaml

from conftest import REPO

BIN = os.path.dirname(sys.executable)


def _lines(path):
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, "%s: exit %d\n%s" % (" ".join(cmd), proc.returncode, proc.stdout[-4000:])
    return proc.stdout


def test_ansible_builder_reads_the_modules_requirements_from_the_collection(tmp_path):
    meta = yaml.safe_load(open(os.path.join(REPO, "meta", "execution-environment.yml")))
    assert meta["dependencies"] == {"python": "meta/ee-requirements.txt", "system": "bindep.txt"}
    tree = tmp_path / "collections" / "ansible_collections" / "dogestry"
    tree.mkdir(parents=True)
    os.symlink(REPO, str(tree / "dogestry"))
    _run([os.path.join(BIN, "ansible-builder"), "introspect", str(tmp_path / "collections"),
          "--write-pip", str(tmp_path / "pip.txt"), "--write-bindep", str(tmp_path / "bindep.txt")], tmp_path)
    python = [line.split("#")[0].strip() for line in open(str(tmp_path / "pip.txt")) if "dogestry.dogestry" in line]
    assert sorted(python) == sorted(_lines(os.path.join(REPO, "meta", "ee-requirements.txt"))), python
    system = [line.split("#")[0].strip() for line in open(str(tmp_path / "bindep.txt")) if "dogestry.dogestry" in line]
    assert sorted(system) == sorted(_lines(os.path.join(REPO, "bindep.txt"))), system


def test_ansible_builder_creates_the_build_context_of_an_execution_environment(tmp_path):
    galaxy = yaml.safe_load(open(os.path.join(REPO, "galaxy.yml")))
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", REPO, "--output-path", str(tmp_path)], tmp_path)
    tarball = "dogestry-dogestry-%s.tar.gz" % galaxy["version"]
    assert os.path.exists(str(tmp_path / tarball))
    definition = {
        "version": 3,
        "images": {"base_image": {"name": "quay.io/ansible/ansible-runner:latest"}},
        "dependencies": {
            "ansible_core": {"package_pip": "ansible-core>=2.17,<2.20"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": "/build/collections/%s" % tarball, "type": "file"}]},
            "python": os.path.join(REPO, "meta", "ee-requirements.txt"),
            "system": os.path.join(REPO, "bindep.txt"),
        },
        "additional_build_files": [{"src": str(tmp_path / tarball), "dest": "collections"}],
        "additional_build_steps": {"prepend_galaxy": ["COPY _build/collections/ /build/collections/"]},
    }
    with open(str(tmp_path / "execution-environment.yml"), "w") as f:
        yaml.safe_dump(definition, f)
    _run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
          "--output-filename", "Containerfile"], tmp_path)
    build = tmp_path / "context" / "_build"
    assert _lines(str(build / "requirements.txt")) == _lines(os.path.join(REPO, "meta", "ee-requirements.txt"))
    assert _lines(str(build / "bindep.txt")) == _lines(os.path.join(REPO, "bindep.txt"))
    assert yaml.safe_load(open(str(build / "requirements.yml")))["collections"][0]["name"].endswith(tarball)
    assert (build / "collections" / tarball).exists()
    containerfile = open(str(tmp_path / "context" / "Containerfile")).read()
    assert "ansible-galaxy collection install" in containerfile and "introspect" in containerfile, containerfile
