"""Any OCI content through the accelerator, by clients none of us wrote: a multi-platform index copied in
and out by skopeo, pulled by Docker (which picks its platform), loaded by `dogestry pull` (which does
too), and an artifact attached to it by oras as a referrer; all kept byte for byte."""

import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.request

import oras.client
import oras.oci
import pytest

from dogestry_cli import docker, dogestry, skopeo

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 946684800
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Layout:
    """An OCI image layout on disk, written the way the image spec describes it."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob(self, data, media_type):
        with open(os.path.join(self.path, "blobs", "sha256", _digest(data)[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}

    def image(self, arch, tars):
        layers = [self.blob(gzip.compress(t, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") for t in tars]
        config = json.dumps({"architecture": arch, "os": "linux",
                             "config": {"Entrypoint": ["/bin/busybox", "cat", "/platform"]},
                             "rootfs": {"type": "layers", "diff_ids": [_digest(t) for t in tars]}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": self.blob(config, "application/vnd.oci.image.config.v1+json"),
                               "layers": layers}).encode()
        return dict(self.blob(manifest, OCI_MANIFEST), platform={"architecture": arch, "os": "linux"})

    def tag(self, tag, descriptor):
        descriptor = dict(descriptor, annotations={"org.opencontainers.image.ref.name": tag})
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [descriptor]}, f)


def _multi_platform_layout(path):
    layout = Layout(path)
    with open("/bin/busybox", "rb") as f:
        base = _tar({"/bin/busybox": (f.read(), 0o755)})
    children = [layout.image(arch, [base, _tar({"/platform": (arch.encode() + b"\n", 0o644)})])
                for arch in ("amd64", "arm64")]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    layout.tag("multi", layout.blob(index, OCI_INDEX))
    return index, children


@pytest.mark.parametrize("store", ["directory", "s3"])
def test_multi_platform_index_and_an_artifact_travel_byte_for_byte(tmp_path, docker_host, name, servers, store, request):
    remote, extra = str(tmp_path / "remote"), ()
    if store == "s3":
        remote = "s3://%s/oci" % request.getfixturevalue("s3_bucket")
        extra = ("--endpoint-url", request.getfixturevalue("s3_env"))
    server = servers(remote, tmp_path, args=extra)
    index, children = _multi_platform_layout(str(tmp_path / "layout"))
    image = "%s/%s" % (server.host, name)

    # skopeo pushes the index and both images as they are: the registry answers with the same bytes
    skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "oci:%s:multi" % (tmp_path / "layout"),
           "docker://%s:1" % image)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "docker://%s:1" % image).stdout.encode()
    assert raw == index
    for child in children:
        raw = skopeo("inspect", "--raw", "--tls-verify=false", "docker://%s@%s" % (image, child["digest"])).stdout
        assert _digest(raw.encode()) == child["digest"]

    # Docker pulls the index by tag and by digest, takes its own platform, and runs it
    docker(docker_host, "pull", "%s:1" % image)
    assert docker(docker_host, "run", "--rm", "%s:1" % image).stdout == "amd64\n"
    docker(docker_host, "pull", "%s@%s" % (image, _digest(index)))
    docker(docker_host, "rmi", "-f", "%s:1" % image, "%s@%s" % (image, _digest(index)))

    # the engine loads the host's platform of the same tag from the remote, without the accelerator
    result = json.loads(dogestry("pull", remote, "%s:1" % name, "--docker-host", docker_host, "--json", *extra).stdout)
    assert docker(docker_host, "run", "--rm", "%s:1" % name).stdout == "amd64\n"
    tags = json.loads(dogestry("tags", remote, "--json", *extra).stdout)["tags"]
    assert tags["%s:1" % name]["media_type"] == OCI_INDEX
    assert tags["%s:1" % name]["image_id"] == result["image_id"]
    docker(docker_host, "rmi", "-f", "%s:1" % name)

    # oras attaches an SBOM to the index (subject); the referrers API lists it; oras pulls it back
    sbom = tmp_path / "sbom.json"
    sbom.write_text(json.dumps({"packages": ["busybox"]}))
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    subject = oras.oci.Subject(mediaType=OCI_INDEX, digest=_digest(index), size=len(index))
    (tmp_path / "config.json").write_text("{}")
    os.chdir(str(tmp_path))
    # no artifactType field: the referrers API takes the config's media type for it (the spec's rule)
    response = client.push(target="%s:sbom" % image, files=["sbom.json"], manifest_config="config.json:" + SBOM_TYPE,
                           subject=subject, manifest_annotations={"org.example.kind": "sbom"})
    assert response.status_code == 201
    with urllib.request.urlopen("http://%s/v2/%s/referrers/%s" % (server.host, name, _digest(index)), timeout=30) as got:
        referrers = json.loads(got.read())["manifests"]
    assert [(r["artifactType"], r["annotations"]["org.example.kind"]) for r in referrers] == [(SBOM_TYPE, "sbom")]
    pulled = client.pull(target="%s:sbom" % image, outdir=str(tmp_path / "pulled"))
    assert [open(p).read() for p in pulled] == [sbom.read_text()]

    # and skopeo copies the whole index back out, digests unchanged; the remote verifies clean
    skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://%s:1" % image,
           "oci:%s:multi" % (tmp_path / "out"))
    with open(str(tmp_path / "out" / "index.json")) as f:
        assert json.load(f)["manifests"][0]["digest"] == _digest(index)
    report = json.loads(dogestry("verify", remote, "--json", *extra).stdout)
    assert report["problems"] == [] and report["checked"]["tags"] == 2
