"""The test infrastructure itself: both daemons answer, build_image builds runnable, layered images
that share their base layer, and each daemon's `docker save` has the format we expect of it."""

import io
import json
import subprocess
import tarfile
import uuid

import pytest

docker = pytest.importorskip("docker")


def _api(host):
    return docker.APIClient(base_url=host, version="auto", timeout=120)


def _save_members(host, name):
    """The member names and the bytes of manifest.json / index.json of `docker save name`."""
    stream = _api(host).get_image(name)
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        docs = {}
        for wanted in ("manifest.json", "index.json", "oci-layout"):
            if wanted in names:
                docs[wanted] = json.load(tar.extractfile(wanted))
    return names, docs, data


def test_daemon_versions(docker_host, docker26_host, docker28_host):
    old = _api(docker_host).version()
    new = _api(docker26_host).version()
    assert int(old["Version"].split(".")[0]) < 25, old["Version"]
    assert int(new["Version"].split(".")[0]) >= 25, new["Version"]
    info = _api(docker28_host).info()
    assert info["ServerVersion"].startswith("28."), info["ServerVersion"]
    assert ["driver-type", "io.containerd.snapshotter.v1"] in info["DriverStatus"], info["DriverStatus"]


def test_build_run_and_shared_base(any_docker_host, build_image):
    name = "dogestry-infra-%s" % uuid.uuid4().hex[:8]
    first = build_image(any_docker_host, name + "-a:1", [{"app/one.txt": b"one\n"}, {"app/two.txt": b"two\n"}],
                        cmd=["/bin/busybox", "cat", "/app/one.txt", "/app/two.txt"])
    second = build_image(any_docker_host, name + "-b:1", [{"app/other.txt": "other\n"}])
    api = _api(any_docker_host)
    layers_a = api.inspect_image(first)["RootFS"]["Layers"]
    layers_b = api.inspect_image(second)["RootFS"]["Layers"]
    assert len(layers_a) == 3 and len(layers_b) == 2
    assert layers_a[0] == layers_b[0], "the busybox base layer must be shared"
    assert layers_a[1] != layers_b[1]

    host_arg = any_docker_host
    out = subprocess.run(["docker", "-H", host_arg, "run", "--rm", "--network", "none", name + "-a:1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"one\ntwo\n"
    default_cmd = subprocess.run(["docker", "-H", host_arg, "run", "--rm", "--network", "none", name + "-b:1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert default_cmd.stdout.strip() == (name + "-b:1").encode(), default_cmd.stderr.decode()


def test_base_layer_is_the_same_on_both_daemons(docker_host, docker26_host, build_image):
    name = "dogestry-infra-%s:1" % uuid.uuid4().hex[:8]
    old = build_image(docker_host, name, [{"x": b"x"}])
    new = build_image(docker26_host, name, [{"x": b"x"}])
    base_old = _api(docker_host).inspect_image(old)["RootFS"]["Layers"][0]
    base_new = _api(docker26_host).inspect_image(new)["RootFS"]["Layers"][0]
    assert base_old == base_new


def test_docker20_save_is_legacy_format(docker_host, build_image):
    name = "dogestry-infra-%s:1" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, name, [{"a.txt": b"a"}])
    names, docs, _archive = _save_members(docker_host, name)
    assert "manifest.json" in names
    assert "oci-layout" not in names and "index.json" not in names
    manifest = docs["manifest.json"]
    assert manifest[0]["RepoTags"] == [name]
    assert len(manifest[0]["Layers"]) == 2
    assert all(layer.endswith("/layer.tar") and layer in names for layer in manifest[0]["Layers"])
    assert manifest[0]["Config"] == image_id.split(":", 1)[1] + ".json"


def test_docker26_save_is_oci_layout_and_loads_back(docker26_host, build_image):
    name = "dogestry-infra-%s:1" % uuid.uuid4().hex[:8]
    image_id = build_image(docker26_host, name, [{"a.txt": b"a"}, {"b.txt": b"b"}])
    api = _api(docker26_host)
    diff_ids = api.inspect_image(image_id)["RootFS"]["Layers"]
    names, docs, data = _save_members(docker26_host, name)
    assert docs["oci-layout"]["imageLayoutVersion"] == "1.0.0"
    assert "index.json" in names and "manifest.json" in names
    assert any(n.startswith("blobs/sha256/") for n in names)
    # layers are uncompressed and named by their diff_id
    for layer in docs["manifest.json"][0]["Layers"]:
        assert layer.startswith("blobs/sha256/")
    assert ["sha256:" + layer.rsplit("/", 1)[1] for layer in docs["manifest.json"][0]["Layers"]] == diff_ids

    api.remove_image(name, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        api.inspect_image(name)
    api.load_image(data)
    assert api.inspect_image(name)["Id"] == image_id
    out = subprocess.run(["docker", "-H", docker26_host, "run", "--rm", "--network", "none",
                          "--entrypoint", "/bin/busybox", name, "cat", "/a.txt", "/b.txt"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"ab"


def test_first_daemon_still_builds_with_its_bridge(docker_host, docker26_host, build_image):
    """The second daemon must not take the first one's docker0 away (it did with --bridge=none)."""
    name = "dogestry-infra-%s:1" % uuid.uuid4().hex[:8]
    build_image(docker_host, name, [{"a": b"a"}])
    networks = {n["Name"]: n for n in _api(docker_host).networks()}
    assert "bridge" in networks
    out = subprocess.run(["docker", "-H", docker_host, "run", "--rm", name],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.strip() == name.encode()


def test_isolated_base_is_not_shared(docker_host, build_image):
    name = "dogestry-infra-%s" % uuid.uuid4().hex[:8]
    shared = build_image(docker_host, name + "-a:1", [{"a": b"a"}])
    isolated = build_image(docker_host, name + "-b:1", [{"a": b"a"}], isolated=True)
    api = _api(docker_host)
    assert api.inspect_image(shared)["RootFS"]["Layers"][0] != api.inspect_image(isolated)["RootFS"]["Layers"][0]
    out = subprocess.run(["docker", "-H", docker_host, "run", "--rm", "--network", "none", name + "-b:1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert out.stdout.strip() == (name + "-b:1").encode(), out.stderr.decode()
