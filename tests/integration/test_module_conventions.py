"""The collection's conventions, through real ansible-playbook runs: one module_defaults entry for the action group
sets the remote, the S3 options and the Docker daemon for every module; dogestry_tag and dogestry_tag_info split
what dogestry_tags did, which still does both, with a deprecation warning."""

import re

from ansible_runner import run_tasks
from test_modules_local import BASE, task

GROUP = "group/dogestry.dogestry.dogestry"


def test_one_module_defaults_entry_serves_every_module_of_the_group(tmp_path, docker_host, build_image, name, remote):
    """Docker's options (community.docker's names) and the S3 ones side by side, as a play sets them once; the
    modules that never talk to Docker take them too, instead of failing on 'Unsupported parameters'."""
    image_id = build_image(docker_host, name + ":1", [BASE, {"/group.txt": b"group defaults\n"}])
    defaults = {GROUP: dict(remote=remote, docker_host=docker_host, tls=False, validate_certs=False, api_version="auto",
                            timeout=120, s3_validate_certs=True, jobs=2)}
    r = run_tasks(tmp_path, [
        task("dogestry_push", "push", dict(images=[name + ":1"])),
        task("dogestry_tag", "tag", dict(name=name, tag="prod", image=name + ":1")),
        task("dogestry_tag_info", "info", dict(name=name)),
        task("dogestry_tags", "old_info", dict(name=name)),
        task("dogestry_verify", "verify", {}),
        task("dogestry_prune", "prune", dict(check_mode=True)),
        task("dogestry_pull", "pull", dict(image=name + ":prod")),
    ], module_defaults=defaults)
    failed = {key: value.get("msg") for key, value in r.items() if isinstance(value, dict) and value.get("failed")}
    assert not failed, failed
    assert r["push"]["images"][0]["image_id"] == image_id
    assert sorted(r["info"]["tags"]) == [name + ":1", name + ":prod"] and r["old_info"]["tags"] == r["info"]["tags"]
    assert r["prune"]["count"] == 0 and r["verify"]["problems"] == [], (r["prune"], r["verify"])
    assert r["pull"]["image_id"] == image_id and r["pull"]["layers_transferred"] == [], r["pull"]     # only a tag to set


def test_dogestry_tag_sets_and_removes_in_the_check_real_idempotent_rhythm(tmp_path, docker_host, build_image, name,
                                                                           remote):
    image_id = build_image(docker_host, name + ":1", [BASE, {"/tag.txt": b"tag me\n"}])
    present = dict(remote=remote, name=name, tag="latest", image=name + ":1", diff=True)
    absent = dict(remote=remote, name=name, tag="latest", state="absent", diff=True)
    r = run_tasks(tmp_path, [
        task("dogestry_push", "push", dict(remote=remote, images=[name + ":1"], docker_host=docker_host)),
        task("dogestry_tag", "check", dict(present, check_mode=True)),
        task("dogestry_tag", "real", dict(present)),
        task("dogestry_tag", "again_check", dict(present, check_mode=True)),
        task("dogestry_tag", "again", dict(present)),
        task("dogestry_tag_info", "listed", dict(remote=remote, name=name, tag="l*")),
        task("dogestry_tag", "remove", dict(absent)),
        task("dogestry_tag", "remove_again", dict(absent)),
        task("dogestry_tag_info", "after", dict(remote=remote, name=name, check_mode=True)),
        task("dogestry_tag", "pattern", dict(remote=remote, name=name, tag="2013*", state="absent")),
        task("dogestry_tag_info", "state", dict(remote=remote, state="present")),
    ])
    assert [r[k]["changed"] for k in ("check", "real", "again_check", "again")] == [True, True, False, False], r["_output"][-3000:]
    assert r["check"]["diff"] == r["real"]["diff"] and r["real"]["diff"]["before"] == {"tags": {}}
    assert r["real"]["tags"][name + ":latest"]["image_id"] == image_id
    assert r["real"]["actions"] == ["Tagged %s:latest -> %s" % (name, image_id[:19])]
    assert list(r["listed"]["tags"]) == [name + ":latest"] and not r["listed"]["changed"] and r["listed"]["broken"] == {}
    assert r["remove"]["changed"] and not r["remove_again"]["changed"] and r["remove"]["tags"] == {}
    assert list(r["after"]["tags"]) == [name + ":1"]
    assert r["pattern"]["failed"] and r["pattern"]["msg"] == "state=absent needs an exact name and tag, got %s:2013*" % name
    assert r["state"]["failed"] and "Unsupported parameters" in r["state"]["msg"] and "state" in r["state"]["msg"]


def test_the_deprecated_dogestry_tags_still_lists_and_sets_and_says_what_to_use(tmp_path, docker_host, build_image,
                                                                                name, remote):
    build_image(docker_host, name + ":1", [BASE, {"/old.txt": b"the old name\n"}])
    r = run_tasks(tmp_path, [
        task("dogestry_push", "push", dict(remote=remote, images=[name + ":1"], docker_host=docker_host)),
        task("dogestry_tags", "old_set", dict(remote=remote, state="present", name=name, tag="prod", image=name + ":1",
                                              diff=True)),
        task("dogestry_tag", "new_set", dict(remote=remote, name=name, tag="prod", image=name + ":1", diff=True)),
        task("dogestry_tags", "old_list", dict(remote=remote, name=name)),
        task("dogestry_tag_info", "new_list", dict(remote=remote, name=name)),
        task("dogestry_tags", "old_remove", dict(remote=remote, state="absent", name=name, tag="prod")),
    ])
    assert r["old_set"]["changed"] and not r["new_set"]["changed"], r["_output"][-3000:]
    assert r["old_set"]["tags"] == r["new_set"]["tags"]
    assert r["old_list"]["tags"] == r["new_list"]["tags"] and r["old_list"]["actions"] == []
    assert r["old_remove"]["changed"] and r["old_remove"]["actions"][0].startswith("Removed %s:prod" % name)
    warnings = re.findall(r"\[DEPRECATION WARNING\]: (.*)", r["_output"])
    assert warnings and all("dogestry.dogestry.dogestry_tags has been deprecated" in w for w in warnings), warnings
    assert "Use dogestry.dogestry.dogestry_tag_info to list tags and dogestry.dogestry.dogestry_tag to change them" \
        in " ".join(r["_output"].split())
