# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Signature verification cost on a pull: what Policy.require adds (what dogestry_pull's trusted_keys and
`dogestry serve --require-signature` do before Docker sees a byte), on a directory remote and on S3 (moto_server
on loopback), against the baseline every pull pays anyway: reading the tag and its manifest.

Each round starts as a pull does, with a new Repository (no cached manifests), so the remote's round trips
count: the baseline is the tag and manifest read; the verification is loading the trusted key, listing the
manifest's referrers and reading and checking the signature's manifest, payload and bundle.

With a Docker daemon (--docker-host, default $DOCKER_HOST or the local socket) it also times a whole pull plan
(plan_pull, what check mode and every pull do before moving a layer) with and without the policy, interleaved.
Exit status 1 if the policy adds 50 ms or more (issue 20's limit) to a pull plan (with --no-docker: if the check
alone takes that long) on any remote.

--s3-delay-ms MS puts tests/support/s3_faults.py's proxy (without faults) in front of moto with that delay per
request, closer to S3 as seen from EC2 than loopback's none (registry_bench.py's `--s3 shaped` does the same).

    .venv/bin/python benchmarks/sign_bench.py [--rounds N] [--no-s3 | --s3-delay-ms MS] [--docker-host URL | --no-docker]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import REPO, Engine, Moto  # noqa: E402

TARGET_MS = 50      # issue 20: the verification adds under 50 ms to a pull


def measure(engine, modules, url, options, public, rounds):
    """Median and max milliseconds of the baseline (tag + manifest) and of the verification, over `rounds`."""
    ref = modules.parse_image_ref("app:1")
    baseline, verification = [], []
    for _round in range(rounds):
        repo = engine.Repository(engine.remote_from_url(url, **options))
        start = time.perf_counter()
        target = repo.read_target(ref)
        repo.read_manifest(target)
        read = time.perf_counter()
        modules.Policy(modules.load_trusted_keys([public])).require(repo, target, "app:1")
        done = time.perf_counter()
        baseline.append((read - start) * 1000)
        verification.append((done - read) * 1000)
    return baseline, verification


def measure_plans(engine, modules, url, options, public, rounds, docker_host):
    """Milliseconds of plan_pull without and with the policy, interleaved, each from a new Repository."""
    daemon = engine.Daemon(docker_host)
    without, with_policy = [], []
    for _round in range(rounds):
        for times, policy in ((without, None), (with_policy, modules.Policy(modules.load_trusted_keys([public])))):
            repo = engine.Repository(engine.remote_from_url(url, **options))
            start = time.perf_counter()
            engine.plan_pull(daemon, repo, "app:1", policy=policy)
            times.append((time.perf_counter() - start) * 1000)
    return without, with_policy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--no-s3", action="store_true", help="only the directory remote (no moto_server)")
    parser.add_argument("--s3-delay-ms", type=float, default=0.0, help="a delay per S3 request (a proxy before moto)")
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    parser.add_argument("--no-docker", action="store_true", help="only the verification, no pull plans")
    args = parser.parse_args()
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(tmp)
        modules = Modules(engine.base)
        remotes = [("directory", os.path.join(tmp, "remote"), {})]
        moto = None if args.no_s3 else Moto(tmp)
        proxy = None
        if moto and args.s3_delay_ms:
            sys.path.insert(0, os.path.join(REPO, "tests", "support"))
            from s3_faults import FaultProxy
            proxy = FaultProxy(moto.url, faults={}, delay=args.s3_delay_ms / 1000.0)
            remotes.append(("S3 (+%g ms/request)" % args.s3_delay_ms, "s3://bench/sign", {"endpoint_url": proxy.url}))
        elif moto:
            remotes.append(("S3 (moto, loopback)", "s3://bench/sign", {"endpoint_url": moto.url}))
        try:
            failed = False
            for label, url, options in remotes:
                repo = engine.Repository(engine.remote_from_url(url, **options))
                modules.store_image(repo, "app:1", [b"layer"])
                key = modules.load_signing_key(pem.decode(), None, "bench")
                modules.execute_sign(repo, modules.plan_sign(repo, "app:1", key), key)
                baseline, verification = measure(engine, modules, url, options, public, args.rounds)
                alone = statistics.median(verification)
                print("%-20s tag+manifest read %.2f ms (max %.2f); the check alone %.2f ms (max %.2f): %.2fx the read; %d rounds"
                      % (label, statistics.median(baseline), max(baseline), alone, max(verification),
                         alone / statistics.median(baseline), args.rounds))
                if args.no_docker:      # no pull plan to add it to: the check alone is what a pull would add
                    added, what = alone, "the check alone"
                else:
                    without, with_policy = measure_plans(engine, modules, url, options, public, args.rounds, args.docker_host)
                    added, what = statistics.median(with_policy) - statistics.median(without), "the pull plan"
                    print("%-20s pull plan %.2f ms without the policy, %.2f ms with it (%.2fx)"
                          % ("", statistics.median(without), statistics.median(with_policy),
                             statistics.median(with_policy) / statistics.median(without)))
                failed |= added >= TARGET_MS
                print("%-20s %s  the policy adds %.2f ms to %s (limit %d ms)"
                      % ("", "PASS" if added < TARGET_MS else "FAIL", added, what, TARGET_MS))
        finally:
            if proxy:
                proxy.stop()
            if moto:
                moto.stop()
    sys.exit(1 if failed else 0)


class Modules:
    """The engine's signing functions and the tests' image fixture, through the Engine's import path."""

    def __init__(self, base):
        import importlib
        signing = importlib.import_module(base + "_ops.signing")
        for name in ("Policy", "execute_sign", "load_signing_key", "load_trusted_keys", "plan_sign"):
            setattr(self, name, getattr(signing, name))
        self.parse_image_ref = importlib.import_module(base + "_format.reference").parse_image_ref
        self.store_image = importlib.import_module(
            base.replace("plugins.module_utils.", "") + "tests.unit.plugins.test_support.fake_images").store_image


if __name__ == "__main__":
    main()
