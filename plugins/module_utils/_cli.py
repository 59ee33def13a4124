# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The `dogestry` command: push, pull, tags, prune and serve on the same engine as the modules.

Installed as the `dogestry` console script by the top-level pyproject.toml (package `dogestry`
is this directory). Output: one human line per result, `--json` for scripts; exit status 1 with
a one-line error on failure (2 for usage errors), on stderr, and with `--json` also as a document
{"error": ..., "exit_status": ...} on stdout.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from ._errors import DogestryError, RemoteMissingError, RemoteNotFoundError
from ._prune import DEFAULT_GRACE_PERIOD, parse_duration
from ._repository import Repository

from ._remote import LocalRemote
from ._remotes import remote_from_urls
from ._transfer import MAX_JOBS
from ._version import require, require_for_url

S3_FLAGS = ("access_key", "secret_key", "session_token", "profile", "region", "endpoint_url")


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except DogestryError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _size(text: str) -> int:
    match = re.match(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", str(text), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError("%r is not a size like 500M or 20G" % text)
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a positive number" % text)
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("%r is not 0 or a positive number" % text)
    return value


def _jobs(text: str) -> int:
    value = _positive(text)
    if value > MAX_JOBS:
        raise argparse.ArgumentTypeError("%d is more than %d parallel transfers" % (value, MAX_JOBS))
    return value


class UsageError(SystemExit):
    """argparse's exit 2, with its message kept for main() (--json reports it on stdout too)."""

    def __init__(self, message: str):
        SystemExit.__init__(self, 2)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print results as JSON (for scripts)")
    common.add_argument("--jobs", type=_jobs, default=4, help="parallel transfers (default 4, at most %d)" % MAX_JOBS)
    s3 = common.add_argument_group("S3 remotes (default: boto3's chain: AWS_* variables, ~/.aws, instance role)")
    s3.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    s3.add_argument("--region", default=None)
    s3.add_argument("--profile", default=None)
    s3.add_argument("--s3-no-verify-certs", "--no-verify-certs", dest="validate_certs", action="store_false",
                    help="do not verify the TLS certificate of the S3 or HTTPS endpoint (a test store)")
    s3.add_argument("--ca-bundle", default=os.environ.get("AWS_CA_BUNDLE"))
    common.add_argument("--fallback-remote", action="append", default=[], metavar="URL",
                        help="another copy of REMOTE (a replica, a mirror), read when the ones before it fail; repeatable")

    peers = _Parser(add_help=False)
    peers.add_argument("--peers-file", metavar="FILE",
                       help="read content-addressed objects through the fleet's peers named in FILE (JSON)")

    # The docker CLI's flags and environment variables (DOCKER_CERT_PATH: see _daemons()).
    docker = _Parser(add_help=False)
    daemon = docker.add_argument_group("Docker daemon (the docker CLI's flags and DOCKER_* variables)")
    daemon.add_argument("--docker-host", action="append", default=None,
                        help="Docker daemon (default $DOCKER_HOST or the local socket); pull: repeatable")
    daemon.add_argument("--timeout", type=_positive, default=os.environ.get("DOCKER_TIMEOUT") or 300,
                        help="seconds for a Docker API call (default $DOCKER_TIMEOUT or 300)")
    daemon.add_argument("--tls", action="store_true", default=bool(os.environ.get("DOCKER_TLS")),
                        help="use TLS; implied by --tlsverify ($DOCKER_TLS)")
    daemon.add_argument("--tlsverify", action="store_true", default=bool(os.environ.get("DOCKER_TLS_VERIFY")),
                        help="use TLS and verify the daemon ($DOCKER_TLS_VERIFY)")
    daemon.add_argument("--tlscacert", help="trust certs signed only by this CA (default: ca.pem in $DOCKER_CERT_PATH "
                                            "or ~/.docker, if there)")
    daemon.add_argument("--tlscert", help="TLS client certificate (default: cert.pem there)")
    daemon.add_argument("--tlskey", help="TLS client key (default: key.pem there)")
    daemon.add_argument("--tls-hostname", default=os.environ.get("DOCKER_TLS_HOSTNAME"),
                        help="the name the daemon's certificate must carry, if not the host's ($DOCKER_TLS_HOSTNAME)")

    parser = _Parser(prog="dogestry", description="Docker images through a plain object store.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    push = commands.add_parser("push", parents=[common, docker], help="push images from Docker to REMOTE")
    push.add_argument("remote")
    push.add_argument("images", nargs="+", metavar="IMAGE")
    push.add_argument("--compression", choices=["lz4", "none"], default="lz4")
    pull = commands.add_parser("pull", parents=[common, docker, peers], help="pull an image from REMOTE into Docker")
    pull.add_argument("remote")
    pull.add_argument("image", metavar="IMAGE")
    pull.add_argument("--trusted-key", action="append", metavar="KEYFILE",
                      help="refuse the image unless one of these PEM public keys (or certificates) signed it; repeatable")
    sign = commands.add_parser("sign", parents=[common], help="sign an image on REMOTE (cosign's format, as a referrer)")
    sign.add_argument("remote")
    sign.add_argument("image", metavar="IMAGE", help="NAME:TAG (or an image-ID prefix): what it names is signed")
    sign.add_argument("--key", required=True, metavar="KEYFILE",
                      help="PEM private key (ECDSA or RSA); if encrypted, its password is read from $DOGESTRY_SIGNING_KEY_PASSWORD")
    tags = commands.add_parser("tags", parents=[common], help="list the tags on REMOTE")
    tags.add_argument("remote")
    tags.add_argument("pattern", nargs="?", default="*", help="NAME[:TAG] shell pattern (default *)")
    prune = commands.add_parser("prune", parents=[common], help="delete unreferenced objects from REMOTE")
    prune.add_argument("remote")
    prune.add_argument("--grace-period", type=_duration, default=DEFAULT_GRACE_PERIOD,
                       help="keep unreferenced data younger than this (default %s, as dogestry_prune)" % DEFAULT_GRACE_PERIOD)
    prune.add_argument("--dry-run", action="store_true")
    verify = commands.add_parser("verify", parents=[common],
                                 help="read REMOTE's objects and report what is missing or corrupt (exit 1 if any)")
    verify.add_argument("remote")
    verify.add_argument("--sample", type=_non_negative, metavar="N",
                        help="read only N random blobs in full (default: all)")
    verify.add_argument("--repair", action="store_true", help="move damaged objects to quarantine/ on the remote")
    warm = commands.add_parser("warm", parents=[common, peers],
                               help="have the peers that own an image's objects fetch them from REMOTE now")
    warm.add_argument("remote")
    warm.add_argument("images", nargs="+", metavar="IMAGE")
    serve = commands.add_parser("serve", parents=[common, peers], help="serve REMOTE as a registry (pull and push)")
    serve.add_argument("remote")
    serve.add_argument("--listen", default="127.0.0.1:22375", help="HOST:PORT (default 127.0.0.1:22375)")
    serve.add_argument("--threads", type=_positive, default=16)
    serve.add_argument("--docker-timeout", dest="timeout_docker", type=_positive, default=300,
                       help="seconds for Docker API calls of --pull-into (default 300)")
    serve.add_argument("--cache-dir", help="keep fetched blobs here (default: no cache)")
    serve.add_argument("--cache-size", type=_size, default=10 << 30, help="cache bound, e.g. 500M, 20G (default 10G)")
    serve.add_argument("--read-only", action="store_true", help="refuse pushes (405)")
    serve.add_argument("--pull-into", metavar="DOCKER_HOST",
                       help="enable POST /dogestry/pull?image=NAME:TAG, which loads the image into this Docker daemon")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (chain) file")
    serve.add_argument("--tls-key", help="... and this private key file")
    serve.add_argument("--htpasswd", help="require Basic auth by a user of this bcrypt htpasswd file (htpasswd -B)")
    serve.add_argument("--spool-dir", help="where pushed blobs are received (default: a directory remote's staging "
                                           "directory, the system temp dir for S3)")
    serve.add_argument("--max-blob-size", type=_size, default=64 << 30, help="largest blob a push may send (default 64G)")
    serve.add_argument("--peer-listen", metavar="HOST:PORT",
                       help="serve the fleet's peers here (HTTPS, the peers file's secret); needs --peers-file")
    serve.add_argument("--peer-tls-cert", help="certificate (chain) of the peer listener")
    serve.add_argument("--peer-tls-key", help="... and its private key")
    serve.add_argument("--peer-threads", type=_positive, default=16, help="peer requests served at once (default 16)")
    serve.add_argument("--require-signature", action="append", metavar="KEYFILE",
                       help="serve an image manifest only if one of these PEM public keys (or certificates) signed it "
                            "(else 403 DENIED); repeatable")
    return parser


def repository_from_args(args) -> Repository:
    options = {name: getattr(args, name, None) for name in S3_FLAGS}
    options.update(jobs=args.jobs, validate_certs=args.validate_certs, ca_bundle=args.ca_bundle)
    urls = [args.remote] + list(getattr(args, "fallback_remote", None) or [])
    for url in urls:
        require_for_url(url)
    return Repository(remote_from_urls(urls, **options))


class Output:
    def __init__(self, as_json: bool, stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.progress = not as_json and sys.stderr.isatty()

    def result(self, doc: Dict, line: str) -> None:
        self.stream.write((json.dumps(doc, sort_keys=True) if self.as_json else line) + "\n")
        self.stream.flush()

    def step(self, text: str) -> None:
        if self.progress:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()

    def done(self) -> None:
        if self.progress:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def error(self, message: str, status: int) -> int:
        """One line on stderr; with --json, scripts get the same as a document on stdout."""
        self.done()
        message = message.replace("\n", " ")
        sys.stderr.write("dogestry: error: %s\n" % message)
        if self.as_json:
            self.result({"error": message, "exit_status": status}, "")
        return status


class Progress:
    """A progress bar on stderr (a terminal only): layers done of the total, bytes, rate, ETA, and the layer
    whose bytes are moving.

    advance() (a layer done, its bytes counted then) and moved() (bytes of a layer as they move) may be
    called from transfer threads; the line is redrawn at most every REDRAW seconds while bytes move."""

    WIDTH = 24
    REDRAW = 0.1

    def __init__(self, out: Output, label: str, layers: int, total_bytes: int, clock=time.monotonic):
        self.out, self.label, self.layers, self.total = out, label, layers, total_bytes
        self.clock = clock
        self.started = clock()
        self.done_layers = self.done_bytes = 0
        self.current: Optional[Tuple[str, int, int]] = None      # (layer, its bytes moved, its size) last moved
        self.exported = 0                                          # bytes of `docker save` read (a push)
        self._layer_bytes: Dict[str, int] = {}
        self._drawn = 0.0
        self._lock = threading.Lock()
        self.render()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_layers += 1
            self.done_bytes += nbytes
            self.render()

    def moved(self, layer: str, nbytes: int, size: int) -> None:
        """`nbytes` more of `layer` (of `size` bytes) moved (the layer is done when advance(0) says so)."""
        with self._lock:
            moved = self._layer_bytes.get(layer, 0) + nbytes
            self._layer_bytes[layer] = moved
            self.done_bytes += nbytes
            self.current = (layer, moved, size)
            if self.clock() - self._drawn >= self.REDRAW:
                self.render()

    def read_export(self, nbytes: int) -> None:
        """`nbytes` more of the `docker save` stream read: a push moves while it spools a layer."""
        with self._lock:
            self.exported += nbytes
            if self.clock() - self._drawn >= self.REDRAW:
                self.render()

    def line(self) -> str:
        from ._engine import human_size
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        share = self.done_bytes / self.total if self.total else (self.done_layers / self.layers if self.layers else 1)
        filled = int(self.WIDTH * min(share, 1.0))
        left = None
        if self.total and rate > 0:
            left = max(self.total - self.done_bytes, 0) / rate
        elif not self.total and self.done_layers:       # sizes unknown ahead: by layers
            left = (self.layers - self.done_layers) * elapsed / self.done_layers
        eta = "%d:%02d" % (left // 60, left % 60) if left is not None else "--:--"
        text = "%s [%s%s] %d/%d layers %s%s %s/s ETA %s" % (
            self.label, "#" * filled, "." * (self.WIDTH - filled), self.done_layers, self.layers,
            human_size(self.done_bytes), " of " + human_size(self.total) if self.total else "", human_size(rate), eta)
        if self.current and self.current[1] < self.current[2]:
            layer, moved, size = self.current
            text += " | layer %s %s of %s" % (layer[:12], human_size(moved), human_size(size))
        if self.exported:
            text += " | docker save %s read" % human_size(self.exported)
        return text

    def render(self) -> None:
        self._drawn = self.clock()
        self.out.step(self.line())


class _CountedRemote:
    """The remote, with every read of a layer being pulled reported to a Progress as its bytes arrive."""

    def __init__(self, remote, layers: Dict[str, Tuple[str, int]], progress: Progress):
        self._remote, self._layers, self._progress = remote, layers, progress      # key -> (oid, stored size)

    def open(self, key, size=None):
        reader = self._remote.open(key, size)
        return _CountedReader(reader, *self._layers[key], self._progress) if key in self._layers else reader

    def __getattr__(self, name):
        return getattr(self._remote, name)


class _CountedDaemon:
    """The daemon, with the `docker save` stream of a push reported to a Progress as it is read."""

    def __init__(self, daemon, progress: Progress):
        self._daemon, self._progress = daemon, progress

    def save(self, ref: str):
        for chunk in self._daemon.save(ref):
            self._progress.read_export(len(chunk))
            yield chunk

    def __getattr__(self, name):
        return getattr(self._daemon, name)


class _CountedReader:
    def __init__(self, reader, oid: str, size: int, progress: Progress):
        self._reader, self._oid, self._size, self._progress = reader, oid, size, progress

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if data:
            self._progress.moved(self._oid, len(data), self._size)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._reader, name)


def _daemons(args) -> List:
    """The daemons of --docker-host (or $DOCKER_HOST), over TLS as the docker CLI would reach them."""
    from ._docker import Daemon, tls_config
    require(["docker", "lz4", "zstandard"], "Docker images")
    tls = None
    if args.tls or args.tlsverify:
        cert_dir = os.environ.get("DOCKER_CERT_PATH") or os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        tls = tls_config(args.tlsverify, args.tlscacert, args.tlscert, args.tlskey, cert_dir)
    hosts = args.docker_host or [os.environ.get("DOCKER_HOST") or None]
    return [Daemon(host, args.timeout, tls, args.tls_hostname, os.environ.get("DOCKER_API_VERSION")) for host in hosts]


def cmd_push(args, out: Output) -> int:
    from ._engine import execute_push, human_size, plan_pushes
    repo = repository_from_args(args)
    daemon = _daemons(args)[0]
    for plan in plan_pushes(daemon, repo, args.images):
        # a layer's size is known once `docker save` has streamed it: the bar goes by layers
        progress_bar = Progress(out, "pushing %s" % plan.ref, len(plan.missing), 0)
        result = execute_push(_CountedDaemon(daemon, progress_bar) if out.progress else daemon, repo, plan,
                              args.compression, args.jobs,
                              lambda oid, stored_size: progress_bar.advance(stored_size))
        out.done()
        line = result.get("reason") or "%s: already on %s" % (plan.ref, repo.url)
        if result.get("bytes_transferred"):
            line += " (%s)" % human_size(result["bytes_transferred"])
        out.result(dict(result, image=str(plan.ref)), line)
    return 0


class _SpooledRemote:
    """The remote, with layers kept in a spool directory for one `pull` into several daemons:
    each layer is downloaded once, and every daemon's load still decodes and verifies it."""

    def __init__(self, remote, spool_dir: str):
        from ._blob_cache import BlobCache
        self._remote = remote
        self._cache = BlobCache(spool_dir, 1 << 62)

    def open(self, key, size=None):
        return self._cache.open(key, lambda: self._remote.open(key, size))     # kept once fetched whole

    def __getattr__(self, name):
        return getattr(self._remote, name)


def cmd_pull(args, out: Output) -> int:
    repo = repository_from_args(args)
    daemons = _daemons(args)
    peers = args.peers_file is not None
    if peers or (len(daemons) > 1 and not isinstance(repo.remote, LocalRemote)):   # a directory is read in place
        import shutil
        import tempfile
        spool = tempfile.mkdtemp(prefix="dogestry-pull-")
        try:
            if peers:       # the peers' bytes verified in the spool before a daemon sees them, each layer fetched once
                from ._peers import pulling_through_peers
                repo.remote = pulling_through_peers(repo.remote, args.peers_file, spool)
            else:
                repo.remote = _SpooledRemote(repo.remote, spool)
            return _pull_into(repo, daemons, args, out)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
    return _pull_into(repo, daemons, args, out)


def _pull_into(repo, daemons, args, out: Output) -> int:
    """Plan for each daemon, then load into all of them at once (each layer is fetched once: see
    _SpooledRemote); a progress bar for one daemon. A daemon that fails does not stop the others."""
    from ._engine import execute_pull, plan_pull
    policy = _policy(args.trusted_key)
    plans = [(daemon, plan_pull(daemon, repo, args.image, policy)) for daemon in daemons]

    def pull(daemon, plan, report=lambda layer: None):
        return execute_pull(daemon, repo, plan, report)

    if len(plans) == 1:
        daemon, plan = plans[0]
        stored = {layer.oid: layer.stored_size for layer in plan.missing}
        progress_bar = Progress(out, "pulling %s into %s" % (plan.ref or args.image, daemon.host),
                                len(stored), sum(stored.values()))
        if out.progress:        # the bar moves with each layer's bytes as they are read from the remote
            remote = repo.remote
            repo.remote = _CountedRemote(remote, {layer.key: (layer.oid, layer.stored_size) for layer in plan.missing},
                                         progress_bar)
            try:
                outcomes = [(daemon, plan, pull(daemon, plan, lambda layer: progress_bar.advance(0)
                                                if layer.oid in stored else None), None)]
            finally:
                repo.remote = remote
        else:
            outcomes = [(daemon, plan, pull(daemon, plan, lambda layer: progress_bar.advance(stored[layer.oid])
                                            if layer.oid in stored else None), None)]
        out.done()
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(plans)) as pool:
            futures = [(daemon, plan, pool.submit(pull, daemon, plan)) for daemon, plan in plans]
        outcomes = [(daemon, plan) + ((None, future.exception()) if future.exception() else (future.result(), None))
                    for daemon, plan, future in futures]
    for daemon, plan, result, error in outcomes:
        if error is not None:
            continue
        if result.get("reason"):
            line = "%s (on %s)" % (result["reason"], daemon.host)
        else:
            line = "%s on %s: up to date" % (plan.ref or args.image, daemon.host)
        out.result(dict(result, docker_host=daemon.host), line)
    errors = [error for _daemon, _plan, _result, error in outcomes if error is not None]
    if errors:
        raise errors[0]
    return 0


def _policy(key_files):
    """A signature policy from --trusted-key / --require-signature files (None without any)."""
    if not key_files:
        return None
    from ._signing import Policy, load_trusted_keys
    return Policy(load_trusted_keys(key_files))


def cmd_sign(args, out: Output) -> int:
    from ._signing import execute_sign, load_signing_key, plan_sign
    try:
        with open(args.key, "rb") as f:
            pem = f.read(1 << 20)
    except OSError as exc:
        raise DogestryError("--key %s: %s" % (args.key, exc.strerror or exc))
    key = load_signing_key(pem, os.environ.get("DOGESTRY_SIGNING_KEY_PASSWORD"), args.key)
    repo = repository_from_args(args)
    plan = plan_sign(repo, args.image, key)
    result = execute_sign(repo, plan, key)
    line = result.get("reason") or "%s (%s): already signed by key %s" % (plan.ref or args.image, plan.subject.digest[:19],
                                                                          key.key_id)
    out.result(result, line)
    return 0


def cmd_tags(args, out: Output) -> int:
    from ._engine import describe_tags
    repo = repository_from_args(args)
    repo.check()
    name, _sep, tag = args.pattern.rpartition(":") if ":" in args.pattern.rsplit("/", 1)[-1] else (args.pattern, "", "*")
    malformed = {}
    described, broken = describe_tags(repo, repo.list_targets(name or "*", tag or "*", malformed), malformed)
    for ref, why in sorted(broken.items()):
        sys.stderr.write("dogestry: warning: tag %s is broken: %s\n" % (ref, why))
    if out.as_json:
        out.result({"tags": described, "broken": broken}, "")
    else:
        for ref, info in described.items():
            what = ("%s %2d layer(s)" % (info["image_id"][:19], info["layers"]) if "image_id" in info
                    else "%s %s" % (info["manifest"][:19], info["media_type"]))
            out.result({}, "%-40s %s" % (ref, what))
    return 0


def cmd_verify(args, out: Output) -> int:
    from ._verify import verify
    report = verify(repository_from_args(args), args.sample, repair=args.repair, jobs=args.jobs)
    out.result(report.result(), report.summary())
    return 1 if report.unrepaired else 0


def cmd_prune(args, out: Output) -> int:
    from ._prune import execute_prune, plan_prune
    repo = repository_from_args(args)
    plan = plan_prune(repo, args.grace_period)
    result = plan.result() if args.dry_run else execute_prune(repo, plan, args.jobs)
    verb = "would delete" if args.dry_run else "deleted"
    out.result(result, "%s %d object(s) from %s" % (verb, plan.count, repo.url))
    return 0


def cmd_warm(args, out: Output) -> int:
    """Have the owners of each image's objects fetch them into their caches (publish pre-warms a release this
    way, so that a deploy reads nothing but tags from the remote)."""
    from ._peers import PeerClient, PeerConfig
    from ._format import blob_key, manifest_key
    if not args.peers_file:
        raise DogestryError("warm needs --peers-file (the fleet's peers)")
    repo = repository_from_args(args)
    repo.check()
    client = PeerClient(PeerConfig.from_file(args.peers_file, as_peer=False), repo.remote)
    for image in args.images:
        ref, oid = repo.resolve(image)
        manifest = repo.read_manifest(oid)
        objects = [(manifest_key(oid), None), (manifest.config_key, manifest.config_size)] + \
            [(layer.key, layer.stored_size) for layer in manifest.layers]
        owners = {}
        for key, size in objects:
            owner = client.warm(key, size)
            if owner is None:
                raise DogestryError("no peer of %s took %s: are the accelerators running?" % (args.peers_file, key))
            owners[key] = owner
        out.result({"image": str(ref or image), "owners": owners},
                   "%s: %d object(s) warming on %d peer(s)" % (ref or image, len(owners), len(set(owners.values()))))
    return 0


def cmd_serve(args, out: Output) -> int:
    from ._registry_api import RegistryApi
    from ._server import configure_logging, serve
    configure_logging()
    repo = repository_from_args(args)
    try:
        repo.check()    # a wrong path or bucket fails now, with its one-line error
    except RemoteMissingError:
        raise
    except RemoteNotFoundError as exc:
        # an accelerator set up before the first push: serve (images are unknown until one arrives)
        logging.getLogger("dogestry.serve").warning("%s", exc)

    def ready(host, port):
        out.result({"listening": "%s:%d" % (host, port), "remote": repo.url},
                   "dogestry: serving %s on %s://%s:%d/v2/" % (repo.url, "https" if tls else "http", host, port))
    if bool(args.tls_cert) != bool(args.tls_key):
        raise DogestryError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    from ._metrics import Metrics
    metrics = Metrics()
    cache = None
    if args.cache_dir:
        from ._blob_cache import BlobCache
        try:
            cache = BlobCache(args.cache_dir, args.cache_size, metrics.cache_hit, metrics.cache_miss,
                              on_evict=metrics.cache_evicted, on_bytes=metrics.blob_bytes)
        except OSError as exc:
            raise DogestryError("--cache-dir %s: %s" % (args.cache_dir, exc.strerror or exc))
    peers = _serve_peers(args, repo, cache, metrics)
    writer = None
    if not args.read_only:
        from ._registry_push import RegistryWriter
        try:
            writer = RegistryWriter(repo, args.spool_dir, args.max_blob_size)
        except OSError as exc:
            where = "--spool-dir %s" % args.spool_dir if args.spool_dir else "the remote's staging directory"
            raise DogestryError("%s: %s (%s): pushes are received there; serve with --read-only to refuse them"
                                % (where, exc.strerror or exc, os.path.dirname(exc.filename or "") or "?"))
        _check_spool_links(writer, repo.remote, args.spool_dir)
        metrics.watch_uploads(writer)
    if cache is not None:
        metrics.watch_cache(cache)
    policy = _policy(args.require_signature)
    puller = _puller(repo, args.pull_into, args.timeout_docker, policy) if args.pull_into else None
    try:
        serve(RegistryApi(repo, cache, metrics, writer, puller, policy), args.listen, args.threads, ready, tls,
              args.htpasswd, peers)
    finally:
        if writer is not None:
            writer.close()
    return 0


def _serve_peers(args, repo, cache, metrics):
    """With --peers-file, blobs are read through the fleet's peers (repo.remote becomes a PeerRemote), and with
    --peer-listen this accelerator serves them too. Returns serve()'s `peers` argument (None: no listener)."""
    if args.peer_listen and not args.peers_file:
        raise DogestryError("--peer-listen needs --peers-file (the fleet's peers and secret)")
    if not args.peers_file:
        return None
    if cache is None:
        raise DogestryError("--peers-file needs --cache-dir: what peers serve is verified there before Docker reads "
                            "it, and served to the other peers from there")
    if bool(args.peer_tls_cert) != bool(args.peer_tls_key) or (args.peer_listen and not args.peer_tls_cert):
        raise DogestryError("--peer-listen needs --peer-tls-cert and --peer-tls-key")
    from ._peers import PeerApp, PeerClient, PeerConfig, PeerRemote
    config = PeerConfig.from_file(args.peers_file, as_peer=bool(args.peer_listen))
    if args.peer_listen and config.me is None:
        raise DogestryError("peers file %s names no \"self\": the URL the other peers reach this one at"
                            % args.peers_file)
    client = PeerClient(config, repo.remote, metrics, cache=cache)
    repo.remote = PeerRemote(repo.remote, client)   # the registry API's cache verifies what peers serve
    cache.on_stored = client.stored
    logging.getLogger("dogestry.serve").info("reading blobs through %d peer(s)%s", len(config.peers),
                                             " as %s" % config.me if config.me else "")
    if not args.peer_listen:
        return None
    return PeerApp(client, cache), args.peer_listen, (args.peer_tls_cert, args.peer_tls_key), args.peer_threads


def _check_spool_links(writer, remote, spool_dir: Optional[str]) -> None:
    """A directory remote takes each pushed blob from the spool by link(): refuse a spool it cannot
    link from now, rather than answer every blob with a 503 later."""
    staging = remote.staging_dir()
    if staging is None:
        return
    probe = os.path.join(writer.spool, "link-probe")
    linked = os.path.join(staging, "link-probe-%s" % os.urandom(8).hex())
    try:
        open(probe, "wb").close()
        os.link(probe, linked)
    except OSError as exc:
        writer.close()
        where = "--spool-dir %s" % spool_dir if spool_dir else "the spool directory %s" % writer.spool
        problem = "is on another filesystem than" if exc.errno == errno.EXDEV else "cannot link pushed blobs into"
        raise DogestryError("%s %s the remote %s (%s): give a --spool-dir on the remote's filesystem, or none"
                            % (where, problem, remote.url, exc.strerror or exc))
    os.unlink(linked)
    os.unlink(probe)


def _puller(repo, docker_host: str, timeout: int, policy=None):
    """The server-side pull: the engine's pull into one daemon, as `dogestry pull` does it."""
    from ._docker import Daemon
    from ._engine import execute_pull, plan_pull

    def pull(image: str) -> Dict:
        daemon = Daemon(docker_host, timeout)
        result = execute_pull(daemon, repo, plan_pull(daemon, repo, image, policy))
        return dict(result, docker_host=daemon.host)
    return pull


COMMANDS = {"push": cmd_push, "pull": cmd_pull, "sign": cmd_sign, "tags": cmd_tags, "prune": cmd_prune,
            "verify": cmd_verify, "serve": cmd_serve, "warm": cmd_warm}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:       # already on stderr, as argparse puts it
        if "--json" in argv:
            Output(True).result({"error": exc.message, "exit_status": 2}, "")
        return 2
    out = Output(args.json)
    try:
        return COMMANDS[args.command](args, out)
    except DogestryError as exc:
        return out.error(str(exc), 1)
    except KeyboardInterrupt:
        return out.error("interrupted", 130)


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
