"""The layers of plugins/module_utils (docs/ARCHITECTURE.md): every import goes down, never up or sideways
between front ends, and only the Ansible front end imports Ansible."""

import ast
import os
import sys

from ansible_collections.dogestry.dogestry.plugins.module_utils import _errors

MODULE_UTILS = os.path.dirname(os.path.abspath(_errors.__file__))

# Lowest first. A package may import its own layer's modules and any layer below.
LAYERS = [
    {"_errors", "_version", "_transfer", "_metrics"},
    {"_format"},
    {"_storage"},
    {"_codecs"},
    {"_docker"},
    {"_ops", "_peers"},
    {"_registry", "_cli", "_common", "_tag_modules"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# Beside the layer rule: the engine's operations and the fleet peers know nothing of each other, and of the
# front ends only the command line knows another one (it starts the registry server).
APART = {("_ops", "_peers"), ("_peers", "_ops"), ("_registry", "_cli"), ("_registry", "_common"), ("_common", "_cli"),
         ("_common", "_registry"), ("_cli", "_common"), ("_registry", "_tag_modules"), ("_cli", "_tag_modules")}
ANSIBLE_FRONT_END = {"_common", "_tag_modules"}


def _modules():
    for root, dirs, files in os.walk(MODULE_UTILS):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, MODULE_UTILS)[:-3].split(os.sep), path


def _imports(parts, path):
    """(package it imports, absolute module name) for each import of the file at path."""
    package = parts[:-1]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [node.names[0].name])
            yield target[0], None
        elif isinstance(node, ast.ImportFrom):
            yield None, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield None, alias.name


def test_every_package_has_a_layer():
    tops = {parts[0] for parts, _path in _modules()}
    assert tops - {"__init__"} == set(LEVEL), "add the new package to LAYERS and to docs/ARCHITECTURE.md"


def test_imports_go_down_and_only_the_ansible_front_end_imports_ansible():
    wrong = []
    for parts, path in _modules():
        here = parts[0]
        for package, absolute in _imports(parts, path):
            if package is not None and package != here:
                if LEVEL[package] > LEVEL[here] or (here, package) in APART:
                    wrong.append("%s imports %s" % ("/".join(parts), package))
            elif absolute and absolute.split(".")[0] == "ansible" and here not in ANSIBLE_FRONT_END:
                wrong.append("%s imports %s" % ("/".join(parts), absolute))
            elif absolute and here not in ANSIBLE_FRONT_END:
                # installable as the package `dogestry`: the standard library and third-party packages only
                assert absolute.split(".")[0] in sys.stdlib_module_names or not absolute.startswith("ansible_collections"), \
                    (path, absolute)
    assert not wrong, wrong


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The rule above can fail: an import of the registry from the engine's operations is one."""
    source = tmp_path / "push.py"
    source.write_text("from .._registry.api import RegistryApi\n")
    (package, _absolute), = _imports(["_ops", "push"], str(source))
    assert package == "_registry" and LEVEL[package] > LEVEL["_ops"]
