# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The few Docker daemon calls the engine needs, through the Docker SDK, API version negotiated.

May import _errors, _transfer, _format, _storage and _codecs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import struct
import traceback
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

try:
    import docker
    import requests.adapters
    from docker.constants import MINIMUM_DOCKER_API_VERSION
    from docker.errors import DockerException, ImageNotFound, NotFound
    from docker.tls import TLSConfig
    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

    class DockerException(Exception):  # placeholders so except clauses stay valid
        pass

    NotFound = ImageNotFound = DockerException
    TLSConfig = None

from .._errors import DockerError, DogestryError
from .._format.keys import parse_digest
from .._format.manifest import chain_ids
from .._transfer import parallel_map

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
INSPECT_JOBS = 8        # image inspects in flight at once (the SDK keeps up to 10 connections to a daemon)
# Set on the index.json descriptor of every image dogestry loads into the containerd image store:
# its layers are then in the content store as uncompressed blobs named by their diff_ids, which
# later loads may leave out (inspect shows a descriptor's annotations).
LOADED_BY_DOGESTRY = "org.dogestry.layers"


def _one_line(exc: Exception) -> str:
    tls = _tls_failure(exc)
    if tls:
        hint = (" (is the CA, ca_path or --tlscacert, the one that signed the daemon's certificate, and is the daemon "
                "named so in it, or in tls_hostname?)" if "verify failed" in tls else
                " (the daemon wants a client certificate signed by a CA it trusts: client_cert and client_key, or "
                "--tlscert and --tlskey)" if "alert" in tls else "")
        return "TLS handshake failed: %s%s" % (tls, hint)
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc)
    return " ".join(text.split())


def _tls_failure(exc: Optional[BaseException]) -> Optional[str]:
    """What an ssl.SSLError somewhere in `exc`'s chain says ("certificate verify failed: …", "tlsv13 alert
    certificate required"), or None. requests and urllib3 wrap it three deep in a retry summary."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLError):
            text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
            return " ".join(re.sub(r"^\[SSL: \w+\] |\s*\(_ssl\.c:\d+\)$", "", text).split())
        if type(exc).__name__ == "CertificateError":    # urllib3's own name check (tls_hostname), a ValueError
            return "certificate verify failed: %s" % " ".join(str(exc).split())
        inner = [getattr(exc, "reason", None)] + list(getattr(exc, "args", ()))
        exc = exc.__cause__ or next((e for e in inner if isinstance(e, BaseException)), None) or exc.__context__
    return None


DOCKER_HOST_SCHEMES = ("unix", "tcp", "http", "https", "ssh", "npipe")
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")     # in DOCKER_CERT_PATH, as the docker CLI names them
CERT_OPTIONS = ("ca_path (--tlscacert)", "client_cert (--tlscert)", "client_key (--tlskey)")


def tls_config(verify: bool = False, ca_cert: Optional[str] = None, client_cert: Optional[str] = None,
               client_key: Optional[str] = None, cert_dir: Optional[str] = None) -> "TLSConfig":
    """A docker.tls.TLSConfig for a daemon behind TLS, as `docker --tls` (verify=False) or `--tlsverify` sets it up.

    `cert_dir` (DOCKER_CERT_PATH) stands in for the files not given, where they exist (the docker CLI's rule).
    A file that is missing, or a certificate without its key, is a one-line DockerError."""
    if not HAS_DOCKER:
        raise DogestryError("the Python package 'docker' (Docker SDK for Python) is required: pip install docker")
    given = {"ca_path": ca_cert, "client_cert": client_cert, "client_key": client_key}
    for (option, path), default, label in zip(list(given.items()), CERT_FILES, CERT_OPTIONS):
        if path and not os.path.isfile(path):
            raise DockerError("%s %s: no such file" % (label, path))
        if not path and cert_dir and os.path.isfile(os.path.join(cert_dir, default)):
            given[option] = os.path.join(cert_dir, default)
    if bool(given["client_cert"]) != bool(given["client_key"]):
        raise DockerError("client_cert and client_key go together: give both, or neither (got only %s)"
                          % ("client_cert" if given["client_cert"] else "client_key"))
    return TLSConfig(client_cert=(given["client_cert"], given["client_key"]) if given["client_cert"] else None,
                     ca_cert=given["ca_path"] if verify else None, verify=bool(verify))


if HAS_DOCKER:
    class _PinnedTLSAdapter(requests.adapters.HTTPAdapter):
        """HTTPS to the daemon with exactly the TLSConfig's CA and client certificate: requests lets REQUESTS_CA_BUNDLE
        or CURL_CA_BUNDLE override a session's CA (its per-request settings win), so they are set on every send.
        With `hostname` (tls_hostname), the daemon's certificate must name it rather than the URL's host (the Docker
        SDK 7 dropped assert_hostname)."""

        def __init__(self, verify, cert, hostname: Optional[str] = None):
            self.verify, self.cert, self.hostname = verify, cert, hostname
            super().__init__()

        def init_poolmanager(self, *args, **kwargs):
            if self.hostname:
                kwargs.update(assert_hostname=self.hostname, server_hostname=self.hostname)
            super().init_poolmanager(*args, **kwargs)

        def send(self, request, **kwargs):
            kwargs.update(verify=self.verify, cert=self.cert)
            return super().send(request, **kwargs)


class Daemon:
    """One Docker daemon. `host` is for messages.

    `tls`: a docker.tls.TLSConfig (see tls_config()), or None for a socket or a plain tcp:// daemon; with it a
    tcp:// host is reached over HTTPS. `tls_hostname`: the name the daemon's certificate must carry, when it is
    not the host of `docker_host`. `api_version`: "auto" negotiates."""

    def __init__(self, docker_host: Optional[str] = None, timeout: int = 300, tls: Optional["TLSConfig"] = None,
                 tls_hostname: Optional[str] = None, api_version: Optional[str] = None):
        if not HAS_DOCKER:
            raise DogestryError("the Python package 'docker' (Docker SDK for Python) is required: pip install docker")
        self.host = docker_host or DEFAULT_DOCKER_HOST
        if "\0" in self.host:
            raise DockerError("docker_host %r contains a NUL byte" % self.host)
        scheme, sep, rest = self.host.partition("://")
        if not sep or scheme not in DOCKER_HOST_SCHEMES or not rest.strip("/"):
            raise DockerError("docker_host %r is not a Docker daemon address: use unix:///path/docker.sock, "
                              "tcp://host:2375 or ssh://user@host" % self.host[:200])
        version = api_version or "auto"
        negotiate = version == "auto"
        try:
            # With TLS the adapter must be mounted before the first request, so the version is negotiated after.
            self.api = docker.APIClient(base_url=self.host, timeout=timeout, tls=tls or False,
                                        version=MINIMUM_DOCKER_API_VERSION if tls and negotiate else version)
            if tls:
                self.api.mount("https://", _PinnedTLSAdapter(self.api.verify, self.api.cert, tls_hostname))
                if negotiate:
                    self.api._version = self.api._retrieve_server_version()    # what version="auto" does
        except (DockerException, ValueError) as exc:     # ValueError: a malformed URL or port
            raise DockerError("cannot reach the Docker daemon at %s: %s" % (self.host, _one_line(exc)))

    def _fail(self, what: str, exc: Exception) -> DockerError:
        return DockerError("Docker daemon %s: %s failed: %s" % (self.host, what, _one_line(exc)))

    def inspect(self, ref: str) -> Optional[dict]:
        try:
            return self.api.inspect_image(ref)
        except (ImageNotFound, NotFound):
            return None
        except DockerException as exc:
            raise self._fail("inspecting %s" % ref, exc)

    def _info(self) -> Dict:
        if not hasattr(self, "_info_doc"):
            try:
                self._info_doc = self.api.info()
            except DockerException as exc:
                raise self._fail("reading docker info", exc)
        return self._info_doc

    @property
    def containerd_store(self) -> bool:
        """True when images live in containerd's image store (Docker 29's default): image IDs are then
        manifest digests, and `docker load` needs every layer blob its content store lacks."""
        status = self._info().get("DriverStatus") or []
        return ["driver-type", "io.containerd.snapshotter.v1"] in [list(s) for s in status]

    @property
    def platform(self) -> Tuple[str, str, Optional[str]]:
        """(os, architecture, variant) in OCI's terms, to pick an image out of a multi-platform index."""
        info = self._info()
        machine = str(info.get("Architecture") or "x86_64")
        return (str(info.get("OSType") or "linux"),) + OCI_ARCHITECTURES.get(machine, (machine, None))

    def _all_images(self) -> Iterator[Dict]:
        """Every image's inspect document, several requests at once (a pull plans with all of them)."""
        try:
            image_ids = sorted({image["Id"] for image in self.api.images(all=True)})
        except DockerException as exc:
            raise self._fail("listing images", exc)

        def inspect(image_id):
            try:
                return self.api.inspect_image(image_id)
            except DockerException:
                return None     # removed since the listing (`docker image prune` running meanwhile): not there
        return (info for info in parallel_map(inspect, image_ids, INSPECT_JOBS) if info is not None)

    def present_layer_blobs(self) -> Set[str]:
        """Containerd store: diff_ids whose uncompressed blob the content store holds, as far as we can
        tell (the layers of images dogestry loaded; Docker's own pulls keep compressed blobs)."""
        found: Set[str] = set()
        for info in self._all_images():
            annotations = (info.get("Descriptor") or {}).get("annotations") or {}
            if LOADED_BY_DOGESTRY in annotations:
                found.update(image_layers(info))
        return found

    def present_chain_ids(self) -> Set[str]:
        """ChainIDs of every layer stack the daemon holds, from its images' rootfs.

        `docker load` skips exactly the layers whose ChainID the daemon has, so this decides
        what a pull must download.
        """
        found: Set[str] = set()
        for info in self._all_images():
            found.update(chain_ids(image_layers(info)))
        return found

    @property
    def reaches_our_loopback(self) -> bool:
        """Whether the daemon's 127.0.0.1 is ours, so that a registry endpoint we open there is one it can
        push to and pull from: a daemon reached over our loopback, or through a unix socket whose
        listener lives in our network namespace. Anything else (a remote host, ssh, a daemon in
        another namespace, a namespace we may not inspect) is not assumed to."""
        if not hasattr(self, "_reaches_loopback"):
            self._reaches_loopback = _shares_our_loopback(self.host)
        return self._reaches_loopback

    def push(self, repository: str, tag: str) -> None:
        """`docker push repository:tag` (a registry on 127.0.0.0/8: plain http, no credentials)."""
        try:
            events = self.api.push(repository, tag=tag, stream=True, decode=True)
            _raise_on_error(events, "docker push of %s:%s" % (repository, tag), self.host)
        except DockerException as exc:
            raise self._fail("docker push of %s:%s" % (repository, tag), exc)

    def pull(self, repository: str, reference: str) -> None:
        """`docker pull repository@digest` (or :tag)."""
        what = "docker pull of %s%s%s" % (repository, "@" if ":" in reference else ":", reference)
        try:
            events = self.api.pull(repository, tag=reference, stream=True, decode=True)
            _raise_on_error(events, what, self.host)
        except DockerException as exc:
            raise self._fail(what, exc)

    def names_under(self, repository: str) -> List[str]:
        """The names of images in `repository` (host:port/path): its tags, and the name@digest of a pull by
        digest on the containerd store (both are RepoTags; RepoDigests only describe, and removing one
        would remove every name of the image in that repository)."""
        try:
            images = self.api.images(name=repository)
        except DockerException as exc:
            raise self._fail("listing images of %s" % repository, exc)
        return sorted({name for image in images for name in image.get("RepoTags") or []
                       if name.startswith(repository + ":") or name.startswith(repository + "@")})

    def untag(self, ref: str) -> None:
        """Remove one name of an image (the image stays while another name or a container holds it)."""
        try:
            self.api.remove_image(ref, noprune=True)
        except (ImageNotFound, NotFound):
            pass
        except DockerException as exc:
            raise self._fail("removing the name %s" % ref, exc)

    def save(self, ref: str) -> Iterator[bytes]:
        try:
            return self.api.get_image(ref, chunk_size=1 << 20)
        except DockerException as exc:
            raise self._fail("docker save of %s" % ref, exc)

    def load(self, archive: Iterable[bytes]) -> List[str]:
        """Send a `docker load` stream; returns the daemon's progress lines. Errors raise."""
        lines = []
        try:
            for event in self.api.load_image(archive, quiet=True):
                if isinstance(event, dict) and event.get("error"):
                    raise DockerError("Docker daemon %s refused the image: %s" % (self.host, " ".join(str(event["error"]).split())))
                if isinstance(event, dict) and event.get("stream"):
                    lines.append(event["stream"].strip())
        except DockerException as exc:
            raise self._fail("docker load", exc)
        return lines

    def tag(self, image_id: str, name: str, tag: str) -> None:
        try:
            self.api.tag(image_id, name, tag, force=True)
        except DockerException as exc:
            raise self._fail("tagging %s as %s:%s" % (image_id, name, tag), exc)

    def remove(self, ref: str) -> None:
        try:
            self.api.remove_image(ref, force=True)
        except (ImageNotFound, NotFound):
            pass
        except DockerException as exc:
            raise self._fail("removing %s" % ref, exc)


def _raise_on_error(events, what: str, host: str) -> None:
    for event in events:
        if isinstance(event, dict) and (event.get("error") or event.get("errorDetail")):
            detail = event.get("error") or (event.get("errorDetail") or {}).get("message")
            raise DockerError("Docker daemon %s: %s failed: %s" % (host, what, " ".join(str(detail).split())))


def _shares_our_loopback(host: str) -> bool:
    scheme, _sep, rest = host.partition("://")
    if scheme in ("tcp", "http", "https"):
        hostname = urlsplit("%s://%s" % (scheme, rest)).hostname or ""
        try:
            return hostname == "localhost" or ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False
    if scheme != "unix" or not hasattr(socket, "SO_PEERCRED"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect("/" + rest.lstrip("/"))
            pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        theirs, ours = os.stat("/proc/%d/ns/net" % pid), os.stat("/proc/self/ns/net")
    except OSError:     # no such socket, or (not root) the daemon's namespace may not be inspected
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


# uname -m (what `docker info` reports) -> OCI (architecture, variant)
OCI_ARCHITECTURES = {"x86_64": ("amd64", None), "aarch64": ("arm64", None), "armv7l": ("arm", "v7"),
                     "armv6l": ("arm", "v6"), "i686": ("386", None), "i386": ("386", None), "ppc64le": ("ppc64le", None),
                     "s390x": ("s390x", None), "riscv64": ("riscv64", None)}


def image_layers(info: Dict) -> List[str]:
    return [parse_digest(d) for d in (info.get("RootFS") or {}).get("Layers") or []]
