"""Fake `docker save` archives in the layouts Docker 1.10-24 and Docker >= 25 write."""

import gzip
import hashlib
import io
import json
import tarfile


def layer_tar(files):
    """An uncompressed layer tar holding {path: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def config_for(layers):
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(layer) for layer in layers]}},
                      sort_keys=True).encode()


def _add(tar, name, data=None, symlink=None):
    info = tarfile.TarInfo(name)
    if symlink is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def save_archive(layers, layout="classic", repo_tag="app:1", gzip_layers=False):
    """The bytes `docker save` would stream for an image made of `layers` (layer tars)."""
    config = config_for(layers)
    config_id = sha(config)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if layout == "classic":
            paths = []
            for index, layer in enumerate(layers):
                v1 = sha(b"v1-%d" % index)
                _add(tar, "%s/VERSION" % v1, b"1.0")
                _add(tar, "%s/json" % v1, b"{}")
                if index and layer == layers[0]:        # Docker symlinks a repeated layer
                    _add(tar, "%s/layer.tar" % v1, symlink="../%s/layer.tar" % sha(b"v1-0"))
                else:
                    _add(tar, "%s/layer.tar" % v1, layer)
                paths.append("%s/layer.tar" % v1)
            _add(tar, "%s.json" % config_id, config)
        else:   # OCI layout, Docker >= 25 (or the containerd store with gzip_layers)
            _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            paths = []
            for layer in layers:
                blob = gzip.compress(layer) if gzip_layers else layer
                _add(tar, "blobs/sha256/%s" % sha(blob), blob)
                paths.append("blobs/sha256/%s" % sha(blob))
            _add(tar, "blobs/sha256/%s" % config_id, config)
            _add(tar, "index.json", b"{}")
        manifest = [{"Config": ("%s.json" % config_id) if layout == "classic" else "blobs/sha256/%s" % config_id,
                     "RepoTags": [repo_tag], "Layers": paths}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "repositories", b"{}")
    return buffer.getvalue(), config


def chunks(data, size=65536):
    return [data[i:i + size] for i in range(0, len(data), size)]
