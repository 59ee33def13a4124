"""roles/accelerator/files/sync_engine.py: the role's one-run install of the engine tree on a host."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "..", "roles", "accelerator", "files", "sync_engine.py")


def sync(target, files, check=False):
    proc = subprocess.run([sys.executable, SCRIPT, str(target)] + (["check"] if check else []),
                          input=json.dumps(files), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def tree(target):
    found = {}
    for root, _dirs, names in os.walk(str(target)):
        for name in names:
            path = os.path.join(root, name)
            with open(path) as handle:
                found[os.path.relpath(path, str(target))] = handle.read()
    return found


def test_it_installs_the_tree_then_changes_nothing_and_check_mode_writes_nothing(tmp_path):
    target = tmp_path / "lib" / "dogestry"
    files = {"_errors.py": "E", "_ops/__init__.py": "", "_ops/push.py": "P"}
    assert sync(target, files, check=True)[:2] == (0, json.dumps(sorted(files)) + "\n")
    assert not target.exists()
    assert sync(target, files)[:2] == (0, json.dumps(sorted(files)) + "\n")
    assert tree(target) == files
    assert sync(target, files)[:2] == (0, "[]\n")


def test_an_earlier_releases_files_go_and_a_changed_file_is_rewritten(tmp_path):
    target = tmp_path / "dogestry"
    target.mkdir()
    (target / "_engine.py").write_text("the flat layout")
    (target / "_errors.py").write_text("old")
    files = {"_errors.py": "new", "_ops/push.py": "P"}
    status, out, _err = sync(target, files)
    assert status == 0 and json.loads(out) == ["_errors.py", "_ops/push.py", "_engine.py"]
    assert tree(target) == files


def test_a_path_outside_the_engine_directory_is_refused_and_nothing_is_touched(tmp_path):
    target = tmp_path / "dogestry"
    target.mkdir()
    (target / "_engine.py").write_text("kept")
    for name in (str(tmp_path / "elsewhere.py"), "../elsewhere.py"):
        status, out, err = sync(target, {name: "x"})
        assert status != 0 and out == "" and "relative to the engine directory" in err, (name, err)
    assert tree(target) == {"_engine.py": "kept"}
    assert not (tmp_path / "elsewhere.py").exists()
