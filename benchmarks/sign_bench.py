"""Signature verification cost on a pull: Policy.require over a directory remote (what dogestry_pull's
trusted_keys and `dogestry serve --require-signature` add before Docker sees a byte).

    .venv/bin/python benchmarks/sign_bench.py [--rounds N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# the engine imported through a private ansible_collections symlink tree, as bench.py does
_ROOT = tempfile.mkdtemp(prefix="sign-bench-")
os.makedirs(os.path.join(_ROOT, "ansible_collections", "dogestry"))
os.symlink(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.join(_ROOT, "ansible_collections", "dogestry", "dogestry"))
sys.path.insert(0, _ROOT)

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.signing import Policy, execute_sign, load_signing_key, load_trusted_keys, plan_sign
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository(LocalRemote(tmp + "/remote"))
        store_image(repo, "app:1", [b"layer"])
        key = load_signing_key(pem, None, "bench")
        execute_sign(repo, plan_sign(repo, "app:1", key), key)
        times = []
        for _round in range(args.rounds):
            start = time.perf_counter()
            policy = Policy(load_trusted_keys([public.decode()]))
            policy.require(repo, repo.read_target(parse_image_ref("app:1")), "app:1")
            times.append((time.perf_counter() - start) * 1000)
    print("verification on a pull, directory remote: median %.2f ms, max %.2f ms over %d rounds"
          % (statistics.median(times), max(times), args.rounds))


if __name__ == "__main__":
    main()
