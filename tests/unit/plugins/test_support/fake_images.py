"""Write small, well-formed images straight into a remote (no Docker): blobs, config, manifest, index, tag."""

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import blob_key, canonical_json, sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref


def store_image(repo, ref, layers, tag=True):
    """`layers` are byte strings stored uncompressed; returns (manifest oid, Manifest)."""
    repo.check(create=True)
    entries = []
    for data in layers:
        oid = sha256_hex(data)
        repo.remote.put(blob_key(oid), data)
        entries.append(LayerEntry(oid, len(data), "none", len(data)))
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + e.oid for e in entries]},
                             "comment": str(ref)})
    config_oid = sha256_hex(config)
    repo.remote.put(blob_key(config_oid), config)
    manifest = Manifest(config_oid, len(config), tuple(entries))
    oid = repo.write_manifest(manifest)
    if tag:
        repo.write_tag(parse_image_ref(ref), oid)
    return oid, manifest
