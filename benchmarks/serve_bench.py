# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Which HTTP server should `dogestry serve` stand on? Same app, same remote, several servers.

Each candidate serves the real registry API (_registry/api.py's RegistryApi, via _registry/server.py's WsgiApp)
over a directory remote holding one big lz4 layer and 50 small ones, in its own process, and is
measured with curl clients (not Python, so the client's GIL does not cap the numbers):

- one client streaming the big layer (decoded from lz4 and verified on the fly): MB/s;
- 50 clients at once, each fetching a different 4 MiB layer: seconds for all, failures;
- the server process's peak RSS (VmHWM) over the whole run.

Candidates: cheroot (threaded WSGI, CherryPy's server), waitress (WSGI, asyncore I/O + worker
threads) and the stdlib's wsgiref + ThreadingMixIn as the baseline Python's docs warn against.
Usage: python3 benchmarks/serve_bench.py [--size-mb 1024] [--servers cheroot,waitress,wsgiref]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import REPO, MiB, peak_rss  # noqa: E402
SMALL = 50


def _engine():
    """This checkout's plugins/module_utils as package `dogestry` (the venv may be shared)."""
    shim = tempfile.mkdtemp(prefix="dogestry-bench-shim-")
    os.symlink(os.path.join(REPO, "plugins", "module_utils"), os.path.join(shim, "dogestry"))
    sys.path.insert(0, shim)
    return shim


def make_remote(root, size_mb):
    from dogestry._codecs import encoder
    from dogestry._format.keys import blob_key, canonical_json
    from dogestry._format.manifest import LayerEntry, Manifest
    from dogestry._format.reference import parse_image_ref
    from dogestry._storage.local import LocalRemote
    from dogestry._storage.repository import Repository
    import hashlib
    repo = Repository(LocalRemote(root))
    repo.check(create=True)

    def store(name, chunks):
        digest, size, enc = hashlib.sha256(), 0, encoder("lz4")
        tmp = os.path.join(root, "tmp.lz4")
        with open(tmp, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(enc.update(chunk))
            out.write(enc.finish())
        oid = digest.hexdigest()
        layer = LayerEntry(oid, size, "lz4", os.path.getsize(tmp))
        repo.remote.put_file(blob_key(oid, "lz4"), tmp)     # the remote takes the file over
        config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + oid]}, "n": name})
        cfg_oid = hashlib.sha256(config).hexdigest()
        repo.remote.put(blob_key(cfg_oid), config)
        repo.write_tag(parse_image_ref(name), repo.write_manifest(Manifest(cfg_oid, len(config), (layer,))))
        return oid, size

    def mixed(total, seed):
        # half random, half text: lz4 has real work to do in both directions
        text = (b"%d 2026-01-01T00:00:00Z GET /v2/app/blobs ok\n" % seed) * 20000
        left = total
        while left > 0:
            n = min(MiB, left)
            yield (os.urandom(n // 2) + text)[:n]
            left -= n
    big = store("big:1", mixed(size_mb * MiB, 0))
    small = [store("small%d:1" % i, mixed(4 * MiB, i + 1)) for i in range(SMALL)]
    return big, small


def serve(kind, root, port):
    _engine()
    from dogestry._registry.api import RegistryApi
    from dogestry._storage.local import LocalRemote
    from dogestry._storage.repository import Repository
    from dogestry._registry.server import WsgiApp, serve as cheroot_serve
    import logging
    logging.getLogger("dogestry").addHandler(logging.NullHandler())
    api = RegistryApi(Repository(LocalRemote(root)))
    if kind == "cheroot":
        cheroot_serve(api, "127.0.0.1:%d" % port, threads=16, ready=lambda h, p: print("ready", flush=True))
    elif kind == "waitress":
        import waitress
        print("ready", flush=True)
        waitress.serve(WsgiApp(api), host="127.0.0.1", port=port, threads=16, _quiet=True)
    elif kind == "wsgiref":
        import socketserver
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Threading(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass
        server = make_server("127.0.0.1", port, WsgiApp(api), server_class=Threading, handler_class=Quiet)
        print("ready", flush=True)
        server.serve_forever()


def curl(url):
    return subprocess.Popen(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def measure(kind, root, big, small):
    from socket import socket as sock
    with sock() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, root, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        base = "http://127.0.0.1:%d/v2" % port
        t0 = time.monotonic()
        client = curl("%s/big/blobs/sha256:%s" % (base, big[0]))
        got = int(client.communicate()[0] or 0)
        one = time.monotonic() - t0
        ok_big = client.returncode == 0 and got == big[1]
        rss_big = peak_rss(proc.pid) / MiB
        t0 = time.monotonic()
        clients = [curl("%s/small%d/blobs/sha256:%s" % (base, i, oid)) for i, (oid, _size) in enumerate(small)]
        results = [(c.communicate()[0], c.returncode) for c in clients]
        many = time.monotonic() - t0
        failures = sum(1 for (out, rc), (_oid, size) in zip(results, small) if rc != 0 or int(out or 0) != size)
        return {"server": kind, "big_MBps": round(big[1] / MiB / one, 1) if ok_big else None,
                "big_ok": ok_big, "50_clients_s": round(many, 2),
                "50_clients_MBps": round(sum(s for _o, s in small) / MiB / many, 1), "failures": failures,
                "peak_rss_big_MB": round(rss_big, 1),
                "peak_rss_MB": round(peak_rss(proc.pid) / MiB, 1)}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="the big layer (default 1024)")
    parser.add_argument("--servers", default="cheroot,waitress,wsgiref")
    parser.add_argument("--tmpdir")
    args = parser.parse_args()
    shim = _engine()
    root = tempfile.mkdtemp(prefix="dogestry-serve-bench-", dir=args.tmpdir)
    try:
        big, small = make_remote(root, args.size_mb)
        rows = [measure(kind, root, big, small) for kind in args.servers.split(",")]
        for row in rows:
            print(json.dumps(row))
        return 0 if all(r["big_ok"] and not r["failures"] for r in rows) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(shim, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
