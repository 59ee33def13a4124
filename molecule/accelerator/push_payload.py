"""Write what a registry client pushes for a one-layer image (a gzip layer, its config, an OCI
manifest), a TLS certificate for 127.0.0.1 and a bcrypt htpasswd file, into DIR, and their digests
into DIR/digests.json.

Run on the controller by prepare.yml: the side effect pushes these through the installed accelerator."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

import bcrypt


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main(out):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = b"pushed through the installed accelerator\n"
        info = tarfile.TarInfo("pushed.txt")
        info.size, info.mtime = len(data), 946684800
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/pushed"]},
                         "rootfs": {"type": "layers", "diff_ids": [digest(raw.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer),
                    "size": len(layer)}]}).encode()
    for name, blob in (("layer", layer), ("config", config), ("manifest", manifest)):
        with open("%s/%s" % (out, name), "wb") as f:
            f.write(blob)
    with open(out + "/htpasswd", "wb") as f:
        f.write(b"ci:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)) + b"\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", out + "/tls.key",
                    "-out", out + "/tls.crt", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    with open(out + "/digests.json", "w") as f:
        json.dump({"layer": digest(layer), "config": digest(config), "manifest": digest(manifest)}, f)


if __name__ == "__main__":
    main(sys.argv[1])
