"""The Daemon wrapper's own logic, without a daemon: address checks, TLS options, what `docker info` and image
inspections say (the image store, the platform, the layers present), and Docker's errors as one line."""

import ssl

import pytest
from docker.errors import APIError, ImageNotFound

from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.daemon import Daemon, LOADED_BY_DOGESTRY, _one_line, image_layers, tls_config
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DockerError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import chain_ids

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


class FakeApi:
    """The few APIClient calls Daemon's parsing reads: info, images, inspect_image."""

    def __init__(self, info=None, images=None, fail=None):
        self.info_doc, self.images_by_id, self.fail = info or {}, images or {}, fail

    def info(self):
        if self.fail:
            raise self.fail
        return self.info_doc

    def images(self, all=False):
        return [{"Id": image_id} for image_id in self.images_by_id]

    def inspect_image(self, ref):
        if ref not in self.images_by_id:
            raise ImageNotFound("No such image: %s" % ref)
        return self.images_by_id[ref]


def daemon(api):
    found = Daemon("unix:///nonexistent/docker.sock", api_version="1.41")     # no request is made at construction
    found.api = api
    return found


def image(*layers, annotated=False):
    info = {"RootFS": {"Type": "layers", "Layers": ["sha256:" + layer for layer in layers]}}
    if annotated:
        info["Descriptor"] = {"annotations": {LOADED_BY_DOGESTRY: "1"}}
    return info


@pytest.mark.parametrize("host", ["", "docker.sock", "ftp://host", "tcp://", "unix://", "unix:///a\0b"])
def test_a_malformed_docker_host_is_one_line(host):
    with pytest.raises(DockerError) as exc:
        Daemon(host or "://", api_version="1.41")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("docker_host ")


def test_the_image_store_and_platform_come_from_docker_info():
    classic = daemon(FakeApi({"DriverStatus": [["Backing Filesystem", "extfs"]], "Architecture": "x86_64", "OSType": "linux"}))
    assert (classic.containerd_store, classic.platform) == (False, ("linux", "amd64", None))
    containerd = daemon(FakeApi({"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]], "Architecture": "aarch64"}))
    assert (containerd.containerd_store, containerd.platform) == (True, ("linux", "arm64", None))
    assert daemon(FakeApi({"DriverStatus": None})).containerd_store is False


def test_docker_info_failing_is_one_line_naming_the_daemon():
    broken = daemon(FakeApi(fail=APIError("500 Server Error", explanation="the daemon\nis   unwell")))
    with pytest.raises(DockerError) as exc:
        broken.containerd_store
    assert str(exc.value) == "Docker daemon unix:///nonexistent/docker.sock: reading docker info failed: the daemon is unwell"


def test_layers_present_classic_chains_and_containerd_blobs_loaded_by_dogestry():
    api = FakeApi(images={"sha256:1": image(A, B), "sha256:2": image(C, annotated=True)})
    found = daemon(api)
    assert found.present_chain_ids() == set(chain_ids([A, B])) | {C}
    assert found.present_layer_blobs() == {C}      # a pulled-by-docker image's blobs are compressed: not counted
    assert image_layers({}) == [] and image_layers(image(A, B)) == [A, B]


def test_inspect_of_a_missing_image_is_none():
    assert daemon(FakeApi(images={"sha256:1": image(A)})).inspect("sha256:2") is None


def test_tls_options(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("x")
    with pytest.raises(DockerError) as exc:
        tls_config(verify=True, ca_cert=str(tmp_path / "nope.pem"))
    assert str(exc.value) == "ca_path (--tlscacert) %s: no such file" % (tmp_path / "nope.pem")
    with pytest.raises(DockerError) as exc:
        tls_config(client_cert=str(cert))
    assert str(exc.value) == "client_cert and client_key go together: give both, or neither (got only client_cert)"
    config = tls_config(verify=True, cert_dir=str(tmp_path))       # DOCKER_CERT_PATH fills in what is not given
    assert (config.verify, config.ca_cert, config.cert) == (True, str(ca), (str(cert), str(key)))
    config = tls_config(verify=False, cert_dir=str(tmp_path))     # --tls without --tlsverify: no CA
    assert (config.verify, config.ca_cert) == (False, None)


def test_a_tls_failure_deep_in_a_chain_is_named_with_its_hint():
    cause = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1000)")
    outer = ConnectionError("Max retries exceeded")
    outer.__cause__ = cause             # as requests wraps urllib3's wrapping of the SSLError
    message = _one_line(outer)
    assert message.startswith("TLS handshake failed: certificate verify failed: self-signed certificate (is the CA")
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2000)")
    assert _one_line(alert) == ("TLS handshake failed: tlsv13 alert certificate required (the daemon wants a client certificate "
                                "signed by a CA it trusts: client_cert and client_key, or --tlscert and --tlskey)")
    assert _one_line(ValueError("two\n  lines")) == "two lines"
