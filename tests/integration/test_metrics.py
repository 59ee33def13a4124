"""/metrics answers an operator's questions, each series moving as the traffic that should move it: request latency
by route and status, blob bytes by where they were read (remote or cache), uploads in progress and the spool they
hold, the cache's size and evictions, remote errors by kind. A real `dogestry serve` over a directory remote, real
HTTP; the grafana dashboard beside the role names only series it exports."""

import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import tarfile

from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, wait_for

DASHBOARD = os.path.join(REPO, "roles", "accelerator", "files", "grafana-dashboard.json")
LAYER_BYTES = 96 << 10
CACHE_BYTES = 150 << 10        # one layer fits, two do not: the second fetch evicts the first


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(rng, tag):
    """(layer as pushed: gzip of a tar of random bytes, config, manifest) of a one-layer image."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = rng.randbytes(LAYER_BYTES)
        info = tarfile.TarInfo("data-%s" % tag)
        info.size, info.mtime = len(data), 946684800
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(raw.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                    "size": len(layer)}]}).encode()
    return layer, config, manifest


def _send(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=dict({"Content-Type": "application/octet-stream"}, **(headers or {})))
        response = conn.getresponse()
        try:
            data = response.read()
        except http.client.IncompleteRead as exc:      # a body cut short (a blob that failed verification)
            data = exc.partial
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


def _push(server, layer, config, manifest, tag):
    for blob in (layer, config):
        status, _h, body = _send(server, "POST", "/v2/app/blobs/uploads/?digest=" + _digest(blob), blob)
        assert status == 201, body
    status, _h, body = _send(server, "PUT", "/v2/app/manifests/" + tag, manifest,
                             {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, body


def scrape(server):
    """{(name, ((label, value), ...)): value} of every sample on /metrics."""
    status, _h, body = _send(server, "GET", "/metrics")
    assert status == 200, body
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_each_series_moves_with_the_traffic_that_should_move_it(tmp_path, servers, fault_seed):
    rng = random.Random(fault_seed)
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path, args=["--cache-dir", str(tmp_path / "cache"), "--cache-size", "%dK" % (CACHE_BYTES >> 10)])
    first, second = _image(rng, "1"), _image(rng, "2")
    before = scrape(server)
    assert value(before, "dogestry_uploads_in_progress") == 0 and value(before, "dogestry_upload_spool_bytes") == 0
    assert value(before, "dogestry_cache_limit_bytes") == CACHE_BYTES and value(before, "dogestry_cache_size_bytes") == 0

    # An upload in progress: counted with the bytes it holds in the spool until it finishes.
    status, headers, body = _send(server, "POST", "/v2/app/blobs/uploads/")
    assert status == 202, body
    location = headers["Location"]
    chunk = first[0][:4096]
    status, headers, body = _send(server, "PATCH", location, chunk, {"Content-Range": "0-%d" % (len(chunk) - 1)})
    assert status == 202, body
    during = scrape(server)
    assert value(during, "dogestry_uploads_in_progress") == 1, during
    assert value(during, "dogestry_upload_spool_bytes") == len(chunk), during
    status, _h, body = _send(server, "PUT", headers["Location"] + ("&" if "?" in headers["Location"] else "?")
                             + "digest=" + _digest(first[0]), first[0][len(chunk):])
    assert status == 201, body
    after = scrape(server)
    assert value(after, "dogestry_uploads_in_progress") == 0 and value(after, "dogestry_upload_spool_bytes") == 0, after

    _push(server, *first, tag="1")
    _push(server, *second, tag="2")
    wait_for(lambda: value(scrape(server), "dogestry_request_duration_seconds_count", route="manifests", code="201") == 2,
             30, "two manifest PUTs in the latency histogram")

    # First read of a layer: from the remote (a miss), then kept; the second read: from the cache (a hit).
    layer_path = "/v2/app/blobs/" + _digest(first[0])
    assert _send(server, "GET", layer_path)[2] == first[0]
    wait_for(lambda: value(scrape(server), "dogestry_cache_size_bytes") > 0, 30, "the first layer cached")
    assert _send(server, "GET", layer_path)[2] == first[0]
    wait_for(lambda: value(scrape(server), "dogestry_request_duration_seconds_count", route="blobs", code="200") == 2,
             30, "two blob GETs in the latency histogram")
    samples = scrape(server)
    assert value(samples, "dogestry_served_bytes_total", source="remote") == len(first[0]), samples
    assert value(samples, "dogestry_served_bytes_total", source="cache") == len(first[0]), samples
    assert value(samples, "dogestry_cache_misses_total") == 1 and value(samples, "dogestry_cache_hits_total") == 1
    assert value(samples, "dogestry_cache_evictions_total") == 0
    assert value(samples, "dogestry_request_duration_seconds_bucket", route="blobs", code="200", le="+Inf") == 2
    assert value(samples, "dogestry_request_duration_seconds_sum", route="blobs", code="200") > 0

    # The second layer does not fit beside the first: the first is evicted, the cache stays within its bound.
    assert _send(server, "GET", "/v2/app/blobs/" + _digest(second[0]))[2] == second[0]
    wait_for(lambda: value(scrape(server), "dogestry_cache_evictions_total") == 1, 30, "an eviction")
    samples = scrape(server)
    assert 0 < value(samples, "dogestry_cache_size_bytes") <= CACHE_BYTES, samples
    assert value(samples, "dogestry_served_bytes_total", source="remote") == len(first[0]) + len(second[0])

    # Remote errors by kind: a damaged blob is "corrupt", a remote without its version object is "missing".
    stored = os.path.join(remote, "blobs", "sha256", _digest(first[0])[7:9], _digest(first[0])[7:])
    with open(stored, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    status, _h, body = _send(server, "GET", layer_path)        # evicted above: read from the remote again
    assert body != first[0]
    wait_for(lambda: value(scrape(server), "dogestry_remote_errors_total", kind="corrupt") == 1, 30, "a corrupt blob counted")
    os.rename(os.path.join(remote, "dogestry.json"), os.path.join(remote, "dogestry.json.away"))
    assert _send(server, "GET", "/healthz")[0] == 503
    wait_for(lambda: value(scrape(server), "dogestry_request_duration_seconds_count", route="healthz", code="503") == 1,
             30, "the 503 of /healthz in the latency histogram")
    assert value(scrape(server), "dogestry_remote_errors_total", kind="missing") == 1


def _exported_names():
    """Every series name /metrics can carry (histograms and counters with their suffixes)."""
    from ansible_collections.dogestry.dogestry.plugins.module_utils._metrics import Metrics
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update({family.name + suffix for suffix in ("_total", "_created", "_bucket", "_count", "_sum")})
    return names


def test_the_grafana_dashboard_names_only_exported_series():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 6, expressions
    exported = _exported_names()
    used = set()
    for expr in expressions:
        names = set(re.findall(r"\b(dogestry_[a-z_]+)", expr))
        assert names, expr
        assert names <= exported, "%s names %s, which /metrics does not export" % (expr, sorted(names - exported))
        used |= names
    for wanted in ("dogestry_request_duration_seconds_bucket", "dogestry_served_bytes_total", "dogestry_uploads_in_progress",
                   "dogestry_upload_spool_bytes", "dogestry_cache_size_bytes", "dogestry_cache_evictions_total",
                   "dogestry_remote_errors_total"):
        assert wanted in used, "the dashboard shows no panel of %s" % wanted
