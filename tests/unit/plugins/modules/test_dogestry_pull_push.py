"""dogestry_pull and dogestry_push: their options and how they turn the engine's plans and results into
exit_json / fail_json. The engine is not under test here: plan_*/execute_* are stand-ins that record their calls."""

from types import SimpleNamespace

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DockerError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.modules import dogestry_pull, dogestry_push
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.module_runner import module_runner

IMAGE_ID = "sha256:" + "1" * 64


@pytest.fixture
def run_module(monkeypatch):
    return module_runner(monkeypatch)


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    monkeypatch.setattr(DogestryModule, "daemon", lambda self: "the daemon")


def pull_plan(reason, image_present=False, tag_present=False):
    result = {"image": "app:1", "image_id": IMAGE_ID, "changed": reason is not None, "reason": reason,
              "layers_transferred": ["sha256:" + "a" * 64], "layers_skipped": [], "bytes_transferred": 2048}
    return SimpleNamespace(ref=parse_image_ref("app:1"), manifest=SimpleNamespace(image_id=IMAGE_ID), image_present=image_present,
                           tag_present=tag_present, result=lambda: dict(result))


@pytest.fixture
def engine(monkeypatch):
    calls = []
    state = {}

    def plan_pull(daemon, repo, image, policy):
        calls.append(("plan", daemon, image, policy))
        return state["plan"]

    def execute_pull(daemon, repo, plan):
        calls.append(("execute", daemon))
        reason = plan.result()["reason"]
        return dict(plan.result(), reason=reason and reason.replace("to download", "downloaded"))
    monkeypatch.setattr(dogestry_pull, "plan_pull", plan_pull)
    monkeypatch.setattr(dogestry_pull, "execute_pull", execute_pull)
    return SimpleNamespace(calls=calls, state=state)


def test_pull_needs_remote_or_signed_url(run_module):
    exited = run_module(dogestry_pull.main, dict(image="app:1"))
    assert exited.failed and exited.result["msg"] == "one of the following is required: remote, signed_url"


def test_pull_check_mode_plans_and_does_not_execute(run_module, engine, tmp_path):
    engine.state["plan"] = pull_plan("app:1: 1 of 1 layers (2.0 KiB) to download")
    exited = run_module(dogestry_pull.main, dict(remote=str(tmp_path), name="app:1"), check_mode=True, diff=True)
    assert engine.calls == [("plan", "the daemon", "app:1", None)]
    assert (exited.result["changed"], exited.result["msg"]) == (
        True, "would pull from %s: app:1: 1 of 1 layers (2.0 KiB) to download" % tmp_path)
    assert exited.result["diff"] == {"before": {"image_present": False, "tagged": False},
                                     "after": {"image_present": True, "tagged": True}}


def test_pull_reports_what_it_downloaded(run_module, engine, tmp_path):
    engine.state["plan"] = pull_plan("app:1: 1 of 1 layers (2.0 KiB) to download")
    exited = run_module(dogestry_pull.main, dict(remote=str(tmp_path), image="app:1"))
    assert [call[0] for call in engine.calls] == ["plan", "execute"] and "diff" not in exited.result
    assert exited.result["msg"] == "pulled app:1 from %s: 1 layer(s), 2.0 KiB downloaded, 0 already present" % tmp_path
    assert (exited.result["changed"], exited.result["reason"]) == (True, "app:1: 1 of 1 layers (2.0 KiB) downloaded")


def test_pull_of_a_present_image_is_no_change(run_module, engine, tmp_path):
    engine.state["plan"] = pull_plan(None, image_present=True, tag_present=True)
    exited = run_module(dogestry_pull.main, dict(remote=str(tmp_path), image="app:1"))
    assert (exited.result["changed"], exited.result["msg"]) == (False, "app:1 is already in the Docker daemon as %s" % IMAGE_ID[:19])


def test_pull_turns_an_engine_error_into_fail_json(run_module, engine, tmp_path, monkeypatch):
    def refuse(*args):
        raise DockerError("Docker daemon unix:///x: loading failed: no space left on device")
    monkeypatch.setattr(dogestry_pull, "plan_pull", refuse)
    exited = run_module(dogestry_pull.main, dict(remote=str(tmp_path), image="app:1"))
    assert exited.failed and exited.result["msg"] == "Docker daemon unix:///x: loading failed: no space left on device"


def test_pull_of_a_malformed_name_fails_before_the_remote_is_opened(run_module, engine):
    exited = run_module(dogestry_pull.main, dict(remote="relative/path", image="App:1"))
    assert exited.failed and "App:1" in exited.result["msg"] and engine.calls == []


def push_plan(name, reason, missing):
    result = {"image": name, "image_id": IMAGE_ID, "changed": reason is not None, "reason": reason,
              "layers_transferred": missing, "layers_skipped": ["sha256:" + "b" * 64], "bytes_transferred": 1024 * len(missing)}
    return SimpleNamespace(ref=parse_image_ref(name), reason=reason, image_id=IMAGE_ID, current_image_id=None,
                           result=lambda: dict(result))


@pytest.fixture
def pusher(monkeypatch):
    executed = []
    plans = {}
    monkeypatch.setattr(dogestry_push, "plan_pushes", lambda daemon, repo, images: [plans[i] for i in images])
    monkeypatch.setattr(dogestry_push, "execute_push",
                        lambda daemon, repo, plan, compression, jobs: executed.append((str(plan.ref), compression, jobs))
                        or plan.result())
    return SimpleNamespace(plans=plans, executed=executed)


def test_push_merges_layers_of_several_images_and_uploads_each(run_module, pusher, tmp_path):
    shared = "sha256:" + "c" * 64
    pusher.plans.update({"app:1": push_plan("app:1", "app:1: push", [shared]),
                         "app:2": push_plan("app:2", "app:2: push", [shared, "sha256:" + "d" * 64])})
    exited = run_module(dogestry_push.main, dict(remote=str(tmp_path), image=["app:1", "app:2"], compression="none", jobs=2))
    assert pusher.executed == [("app:1", "none", 2), ("app:2", "none", 2)]
    assert exited.result["layers_transferred"] == [shared, "sha256:" + "d" * 64]
    assert exited.result["layers_skipped"] == ["sha256:" + "b" * 64] and exited.result["bytes_transferred"] == 3072
    assert exited.result["msg"] == "pushed to %s: 2 layer(s), 3.0 KiB uploaded, 1 layer(s) already there" % tmp_path


def test_push_in_check_mode_uploads_nothing_and_diffs_the_tags(run_module, pusher, tmp_path):
    pusher.plans["app:1"] = push_plan("app:1", "app:1: 1 layer to upload", ["sha256:" + "c" * 64])
    exited = run_module(dogestry_push.main, dict(remote=str(tmp_path), images=["app:1"]), check_mode=True, diff=True)
    assert pusher.executed == [] and exited.result["changed"] is True
    assert exited.result["msg"] == "would push to %s: app:1: 1 layer to upload" % tmp_path
    assert exited.result["diff"] == {"before": {"tags": {"app:1": None}}, "after": {"tags": {"app:1": IMAGE_ID}}}


def test_push_of_images_already_there_is_no_change(run_module, pusher, tmp_path):
    pusher.plans["app:1"] = push_plan("app:1", None, [])
    exited = run_module(dogestry_push.main, dict(remote=str(tmp_path), images=["app:1"]))
    assert (exited.result["changed"], exited.result["msg"]) == (False, "all 1 image(s) already on %s" % tmp_path)


@pytest.mark.parametrize("images, message", [
    ([], "images is empty: name at least one image to push"),
    (["app:1"], "value of compression must be one of: lz4, none, got: gzip"),
])
def test_push_refuses_bad_options_in_one_line(run_module, pusher, tmp_path, images, message):
    args = dict(remote=str(tmp_path), images=images)
    if images:
        args["compression"] = "gzip"
    exited = run_module(dogestry_push.main, args)
    assert exited.failed and exited.result["msg"] == message and pusher.executed == []
