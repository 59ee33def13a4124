# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The command line's grammar: every command, flag and value check.

May import _errors, _storage and _ops constants.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .._errors import DogestryError
from .._ops.prune import DEFAULT_GRACE_PERIOD, parse_duration
from .._storage.factory import remote_from_urls
from .._storage.repository import Repository
from .._transfer import MAX_JOBS
from .._version import require_for_url


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
