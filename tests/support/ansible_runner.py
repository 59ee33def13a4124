"""Run real ansible-playbook against localhost and hand back what the tasks registered."""

import json
import os
import subprocess
import sys

import yaml


def collections_path():
    from conftest import COLLECTIONS as path  # the symlink tree the root conftest maintains
    return path


def run_tasks(tmp_path, tasks, extra_vars=None, check=False, diff=False, module_defaults=None, env=None):
    """Run `tasks` (a list of task dicts, each with `register`) in one play; return {name: result}.

    Failing tasks are collected too (ignore_errors is set on every task), so tests assert on `msg`.
    """
    names = [task["register"] for task in tasks if "register" in task]
    for task in tasks:
        task.setdefault("ignore_errors", True)
    dump = os.path.join(str(tmp_path), "registered.json")
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": tasks + [{
            "ansible.builtin.copy": {
                "content": "{{ {%s} | to_json }}" % ", ".join("'%s': %s" % (n, n) for n in names),
                "dest": dump,
            },
            "check_mode": False,
            "diff": False,
        }],
    }
    if module_defaults:
        play["module_defaults"] = module_defaults
    playbook = os.path.join(str(tmp_path), "playbook.yml")
    with open(playbook, "w") as handle:
        yaml.safe_dump([play], handle, sort_keys=False)
    proc, output = run_playbook(tmp_path, playbook, extra_vars, check=check, diff=diff, env=env)
    if proc.returncode != 0 or not os.path.exists(dump):
        raise AssertionError("ansible-playbook failed (%d):\n%s" % (proc.returncode, output[-6000:]))
    with open(dump) as handle:
        results = json.load(handle)
    results["_output"] = output
    return results


def run_playbook(tmp_path, playbook, extra_vars=None, check=False, diff=False, env=None, inventory=None):
    """ansible-playbook with this checkout's collection, on localhost or on `inventory` (a path);
    returns (process, output)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), playbook]
    if inventory:
        cmd += ["-i", inventory]
    else:
        cmd += ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]     # JSON keeps lists and strings as they are
    # this checkout's collection, then the ones setup.sh installs (community.docker for the playbooks)
    paths = [collections_path(), os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "collections")]
    run_env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.pathsep.join(paths), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_HOST_KEY_CHECKING="0")
    run_env.update(env or {})
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env, cwd=str(tmp_path),
                          timeout=600, check=False)
    return proc, proc.stdout.decode("utf-8", "replace")
