"""The CLI's argument handling, and the layering rules of the second front end."""

import json

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._cli import commands as _cli, parser as _parser
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.http import is_loopback, parse_listen
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._cli.output import Output, Progress


@pytest.mark.parametrize("argv,attr,value", [
    (["pull", "/r", "app:1", "--docker-host", "unix:///a", "--docker-host", "tcp://b:2375"], "docker_host",
     ["unix:///a", "tcp://b:2375"]),
    (["prune", "/r", "--grace-period", "90m"], "grace_period", 5400),
    (["tags", "s3://b/p", "app*:1*", "--endpoint-url", "http://x"], "endpoint_url", "http://x"),
    (["serve", "/r"], "listen", "127.0.0.1:22375"),
    (["push", "/r", "a:1", "b:2", "--json"], "images", ["a:1", "b:2"]),
    (["pull", "/r", "a:1", "--trusted-key", "new.pub", "--trusted-key", "old.pub"], "trusted_key", ["new.pub", "old.pub"]),
    (["serve", "/r", "--require-signature", "release.pub"], "require_signature", ["release.pub"]),
    (["sign", "/r", "a:1", "--key", "release.pem"], "key", "release.pem"),
])
def test_parser(argv, attr, value):
    assert getattr(_parser.build_parser().parse_args(argv), attr) == value


@pytest.mark.parametrize("argv,attrs", [
    (["push", "/r", "a:1", "--tlsverify", "--tlscacert", "ca", "--tlscert", "c", "--tlskey", "k"],
     dict(tlsverify=True, tls=False, tlscacert="ca", tlscert="c", tlskey="k")),
    (["pull", "/r", "a:1", "--tls"], dict(tls=True, tlsverify=False)),
    (["pull", "/r", "a:1", "--no-verify-certs"], dict(validate_certs=False)),      # the S3 flag's old name
    (["pull", "/r", "a:1", "--s3-no-verify-certs"], dict(validate_certs=False, tlsverify=False)),
])
def test_docker_tls_flags(argv, attrs, monkeypatch):
    for name in ("DOCKER_TLS", "DOCKER_TLS_VERIFY"):
        monkeypatch.delenv(name, raising=False)
    args = _parser.build_parser().parse_args(argv)
    assert {name: getattr(args, name) for name in attrs} == attrs


def test_docker_tls_environment(monkeypatch):
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_TIMEOUT", "42")
    monkeypatch.setenv("DOCKER_TLS_HOSTNAME", "dockerd.example")
    args = _parser.build_parser().parse_args(["pull", "/r", "a:1"])
    assert (args.tlsverify, args.timeout, args.tls_hostname) == (True, 42, "dockerd.example")


def test_one_grace_period_default_for_the_module_and_the_cli():
    """dogestry_prune and `dogestry prune` keep the same unreferenced data when neither is told a grace period."""
    import importlib
    prune_module = importlib.import_module("ansible_collections.dogestry.dogestry.plugins.modules.dogestry_prune")
    import yaml
    documented = yaml.safe_load(prune_module.DOCUMENTATION)["options"]["grace_period"]["default"]
    cli_default = _parser.build_parser().parse_args(["prune", "/r"]).grace_period
    assert _parser._duration(documented) == cli_default == 7 * 86400, (documented, cli_default)


@pytest.mark.parametrize("argv", [["push", "/r"], ["pull", "/r", "a", "--jobs", "0"], ["prune", "/r", "--grace-period", "1y"],
                                  ["frobnicate"]])
def test_parser_rejects(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parser.build_parser().parse_args(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:22375", ("127.0.0.1", 22375)), (":5000", ("127.0.0.1", 5000)), ("[::1]:80", ("::1", 80)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["22375", "host:0", "host:99999", "a:b"])
def test_parse_listen_rejects(text):
    with pytest.raises(DogestryError):
        parse_listen(text)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False),
                                           ("example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_verify_reports_then_repairs_and_exits_by_what_remains(tmp_path, capsys):
    import json
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
    remote = str(tmp_path / "remote")
    repo = Repository(LocalRemote(remote))
    manifest = store_image(repo, "app:1", [b"base", b"top layer"])[1]
    repo.remote.put(manifest.layers[1].key, b"TOP LAYER", overwrite=True)      # same size, other bytes
    assert _cli.main(["verify", remote, "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["kind"], p["key"]) for p in problems] == [("corrupt", manifest.layers[1].key)]
    assert _cli.main(["verify", remote, "--repair", "--json"]) == 0          # moved aside: repaired
    assert list(json.loads(capsys.readouterr().out)["moved"]) == [manifest.layers[1].key]
    assert _cli.main(["verify", remote]) == 1                                # now missing: push it again
    assert "missing %s" % manifest.layers[1].key in capsys.readouterr().out


MiB = 1 << 20


class _Recorder(Output):
    def __init__(self):
        Output.__init__(self, False)
        self.progress, self.lines = True, []

    def step(self, text):
        self.lines.append(text)


def test_progress_bar_shows_bytes_rate_and_eta():
    now = [0.0]
    out = _Recorder()
    progress_bar = Progress(out, "pulling app:1", 3, 30 * MiB, clock=lambda: now[0])
    now[0] = 1.0
    progress_bar.advance(10 * MiB)
    now[0] = 2.0
    progress_bar.advance(10 * MiB)
    assert out.lines[0] == "pulling app:1 [........................] 0/3 layers 0 B of 30.0 MiB 0 B/s ETA --:--"
    assert out.lines[-1] == "pulling app:1 [################........] 2/3 layers 20.0 MiB of 30.0 MiB 10.0 MiB/s ETA 0:01"


def test_progress_bar_without_sizes_estimates_by_layers():
    now = [0.0]
    out = _Recorder()
    progress_bar = Progress(out, "pushing app:1", 4, 0, clock=lambda: now[0])
    now[0] = 2.0
    progress_bar.advance(5 * MiB)
    assert out.lines[-1] == "pushing app:1 [######..................] 1/4 layers 5.0 MiB 2.5 MiB/s ETA 0:06"


def test_progress_bar_moves_during_a_layer_with_its_bytes():
    """Bytes of a layer being read move the bar (total and the layer's own), at most every REDRAW seconds."""
    now = [0.0]
    out = _Recorder()
    progress_bar = Progress(out, "pulling app:1", 2, 40 * MiB, clock=lambda: now[0])
    now[0] = 1.0
    progress_bar.moved("a" * 64, 8 * MiB, 30 * MiB)
    progress_bar.moved("a" * 64, 1, 30 * MiB)            # within REDRAW of the last line: not drawn again
    assert out.lines[-1] == ("pulling app:1 [####....................] 0/2 layers 8.0 MiB of 40.0 MiB 8.0 MiB/s ETA 0:04"
                             " | layer aaaaaaaaaaaa 8.0 MiB of 30.0 MiB")
    assert len(out.lines) == 2
    now[0] = 2.0
    progress_bar.moved("a" * 64, 22 * MiB - 1, 30 * MiB)
    progress_bar.advance(0)                              # the load took the whole layer
    assert out.lines[-1] == "pulling app:1 [##################......] 1/2 layers 30.0 MiB of 40.0 MiB 15.0 MiB/s ETA 0:00"


def test_pull_on_a_terminal_reports_bytes_as_they_are_read(tmp_path):
    """The CLI's counting remote: every read of a layer being pulled reaches the bar, other keys pass untouched."""
    from ansible_collections.dogestry.dogestry.plugins.module_utils._cli.output import _CountedRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    remote = LocalRemote(str(tmp_path))
    remote.put("blobs/sha256/ab/ab12.lz4", b"x" * 1000)
    remote.put("manifests/m", b"{}")
    out = _Recorder()
    progress_bar = Progress(out, "pulling", 1, 1000, clock=lambda: 1.0)
    progress_bar.REDRAW = 0
    counted = _CountedRemote(remote, {"blobs/sha256/ab/ab12.lz4": ("ab12", 1000)}, progress_bar)
    with counted.open("blobs/sha256/ab/ab12.lz4") as reader:
        assert reader.read(300) == b"x" * 300
        assert progress_bar.done_bytes == 300 and out.lines[-1].endswith("| layer ab12 300 B of 1000 B")
        assert len(reader.read()) == 700
    assert progress_bar.done_bytes == 1000
    with counted.open("manifests/m") as reader:
        assert reader.read() == b"{}"
    assert progress_bar.done_bytes == 1000


def test_push_on_a_terminal_moves_with_the_docker_save_stream():
    """A push's bar moves while `docker save` streams a layer, before the layer is spooled and uploaded."""
    from ansible_collections.dogestry.dogestry.plugins.module_utils._cli.output import _CountedDaemon

    class Daemon:
        host = "unix:///var/run/docker.sock"

        def save(self, ref):
            return iter([b"x" * MiB, b"y" * (2 * MiB)])

    now = [0.0]
    out = _Recorder()
    progress_bar = Progress(out, "pushing app:1", 2, 0, clock=lambda: now[0])
    counted = _CountedDaemon(Daemon(), progress_bar)
    assert counted.host == "unix:///var/run/docker.sock"
    stream = counted.save("app:1")
    now[0] = 1.0
    assert next(stream) == b"x" * MiB
    assert out.lines[-1] == "pushing app:1 [........................] 0/2 layers 0 B 0 B/s ETA --:-- | docker save 1.0 MiB read"
    now[0] = 2.0
    assert len(b"".join(stream)) == 2 * MiB
    assert out.lines[-1].endswith("| docker save 3.0 MiB read")


def test_no_progress_bar_in_a_pipe_or_with_json(capsys):
    Progress(Output(True), "pulling", 1, 10).advance(10)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,status,words", [
    (["tags", "/nonexistent/dogestry-remote", "--json"], 1, "/nonexistent/dogestry-remote"),
    (["tags", "ftp://host/x", "--json"], 1, "ftp"),
    (["verify", "/r", "--sample", "-1", "--json"], 2, "--sample"),
    (["pull", "/r", "--json"], 2, "IMAGE"),
])
def test_json_errors_are_a_document_on_stdout_too(argv, status, words, capsys):
    assert _cli.main(argv) == status
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["exit_status"] == status and words in doc["error"] and "\n" not in doc["error"], doc
    assert "error: " in captured.err.strip().splitlines()[-1]       # people still read stderr


def test_errors_without_json_leave_stdout_empty(capsys):
    assert _cli.main(["tags", "/nonexistent/dogestry-remote"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("dogestry: error: ")


@pytest.mark.parametrize("sample", ["-1", "-2"])
def test_a_negative_sample_is_a_usage_error(sample, capsys):
    assert _cli.main(["verify", "/r", "--sample", sample]) == 2
    assert "--sample" in capsys.readouterr().err
