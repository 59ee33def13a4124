"""The benchmarks reach the engine by module path (benchmarks/bench.py's Engine, sign_bench.py's Modules), which
no other test imports: after the engine's files moved into packages, every benchmark failed at start-up and no test
noticed. These build both the way the benchmarks do and check each part they hand out."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def load_bench(name="bench"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_gives_the_benchmarks_every_part_they_use(tmp_path):
    engine = load_bench().Engine(str(tmp_path))
    assert engine.s3_error is None, engine.s3_error
    for name in ("plan_push", "execute_push", "plan_pull", "execute_pull", "remote_from_url", "chain_ids"):
        assert callable(getattr(engine, name)), name
    assert engine.Repository.__name__ == "Repository" and engine.Daemon.__name__ == "Daemon"
    (tmp_path / "remote").mkdir()
    remote = engine.remote_from_url(str(tmp_path / "remote"))
    assert engine.Repository(remote).list_tags() == {}


def test_sign_bench_finds_the_signing_functions(tmp_path):
    engine = load_bench().Engine(str(tmp_path))
    modules = load_bench("sign_bench").Modules(engine.base)
    for name in ("Policy", "execute_sign", "load_signing_key", "load_trusted_keys", "plan_sign", "parse_image_ref",
                 "store_image"):
        assert callable(getattr(modules, name)), name
