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

The commands. May import every layer below the front ends; no other front end but the registry server it starts.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Dict, List, Optional

from .._errors import DogestryError, RemoteMissingError, RemoteNotFoundError
from .._storage.local import LocalRemote
from .._storage.spooled import _SpooledRemote
from .._version import require
from .output import Output, Progress, _CountedDaemon, _CountedRemote
from .parser import UsageError, build_parser, repository_from_args


def _daemons(args) -> List:
    """The daemons of --docker-host (or $DOCKER_HOST), over TLS as the docker CLI would reach them."""
    from .._docker.daemon import Daemon, tls_config
    require(["docker", "lz4", "zstandard"], "Docker images")
    tls = None
    if args.tls or args.tlsverify:
        cert_dir = os.environ.get("DOCKER_CERT_PATH") or os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        tls = tls_config(args.tlsverify, args.tlscacert, args.tlscert, args.tlskey, cert_dir)
    hosts = args.docker_host or [os.environ.get("DOCKER_HOST") or None]
    return [Daemon(host, args.timeout, tls, args.tls_hostname, os.environ.get("DOCKER_API_VERSION")) for host in hosts]


def cmd_push(args, out: Output) -> int:
    from .._ops.common import human_size
    from .._ops.push import execute_push, plan_pushes
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
                from .._peers.client import pulling_through_peers
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
    from .._ops.pull import execute_pull, plan_pull
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
    from .._ops.signing import Policy, load_trusted_keys
    return Policy(load_trusted_keys(key_files))


def cmd_sign(args, out: Output) -> int:
    from .._ops.signing import execute_sign, load_signing_key, plan_sign
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
    from .._ops.tags import describe_tags
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
    from .._ops.verify import verify
    report = verify(repository_from_args(args), args.sample, repair=args.repair, jobs=args.jobs)
    out.result(report.result(), report.summary())
    return 1 if report.unrepaired else 0


def cmd_prune(args, out: Output) -> int:
    from .._ops.prune import execute_prune, plan_prune
    repo = repository_from_args(args)
    plan = plan_prune(repo, args.grace_period)
    result = plan.result() if args.dry_run else execute_prune(repo, plan, args.jobs)
    verb = "would delete" if args.dry_run else "deleted"
    out.result(result, "%s %d object(s) from %s" % (verb, plan.count, repo.url))
    return 0


def cmd_warm(args, out: Output) -> int:
    """Have the owners of each image's objects fetch them into their caches (publish pre-warms a release this
    way, so that a deploy reads nothing but tags from the remote)."""
    from .._peers.client import PeerClient
    from .._peers.config import PeerConfig
    from .._format.keys import manifest_key
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
    from .._registry.api import RegistryApi
    from .._registry.server import configure_logging, serve
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
    from .._metrics import Metrics
    metrics = Metrics()
    cache = None
    if args.cache_dir:
        from .._storage.blob_cache import BlobCache
        try:
            cache = BlobCache(args.cache_dir, args.cache_size, metrics.cache_hit, metrics.cache_miss,
                              on_evict=metrics.cache_evicted, on_bytes=metrics.blob_bytes)
        except OSError as exc:
            raise DogestryError("--cache-dir %s: %s" % (args.cache_dir, exc.strerror or exc))
    peers = _serve_peers(args, repo, cache, metrics)
    writer = None
    if not args.read_only:
        from .._registry.writer import RegistryWriter
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
    from .._peers.client import PeerClient, PeerRemote
    from .._peers.config import PeerConfig
    from .._peers.server import PeerApp
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
    from .._docker.daemon import Daemon
    from .._ops.pull import execute_pull, plan_pull

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
