"""The accelerator's metrics in Prometheus' text exposition format."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _metrics
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError, RemoteError
from ansible_collections.dogestry.dogestry.plugins.module_utils._metrics import Metrics


def samples(metrics):
    status, body, content_type = metrics.render()
    assert status == 200 and content_type == _metrics.prometheus_client.CONTENT_TYPE_LATEST
    return dict(line.rsplit(" ", 1) for line in body.decode().splitlines() if line and not line.startswith("#"))


def test_requests_are_counted_by_method_and_code_with_bytes_and_cache_and_remote_errors():
    metrics = Metrics()
    metrics.request("GET", 200, 100)
    metrics.request("GET", 200, 50)
    metrics.request("HEAD", 404, 0)
    metrics.request("PUT", 201, 7)          # any other method is "other": a bounded label set
    metrics.cache_hit()
    metrics.cache_miss()
    metrics.cache_miss()
    metrics.remote_error(RemoteError("the remote is unreachable"))
    metrics.remote_error(BlobCorruptError("sha256:00 does not match its digest"))
    got = samples(metrics)
    assert float(got['dogestry_requests_total{code="200",method="GET"}']) == 2.0
    assert float(got['dogestry_requests_total{code="404",method="HEAD"}']) == 1.0
    assert float(got['dogestry_requests_total{code="201",method="other"}']) == 1.0
    assert float(got["dogestry_bytes_served_total"]) == 157.0
    assert (float(got["dogestry_cache_hits_total"]), float(got["dogestry_cache_misses_total"])) == (1.0, 2.0)
    assert float(got['dogestry_remote_errors_total{kind="unavailable"}']) == 1.0
    assert float(got['dogestry_remote_errors_total{kind="corrupt"}']) == 1.0
    assert not [key for key in got if "PUT" in key]


def test_two_servers_count_apart():
    first, second = Metrics(), Metrics()
    first.cache_hit()
    assert float(samples(first)["dogestry_cache_hits_total"]) == 1.0
    assert float(samples(second)["dogestry_cache_hits_total"]) == 0.0


def test_without_prometheus_client_every_call_is_a_no_op_and_render_says_why(monkeypatch):
    monkeypatch.setattr(_metrics, "HAS_PROMETHEUS", False)
    metrics = Metrics()
    metrics.request("GET", 200, 10)
    metrics.cache_hit()
    assert metrics.render() == (503, b"prometheus_client is not installed: pip install prometheus_client\n", "text/plain")


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "POST"])
def test_other_methods_share_one_label(method):
    metrics = Metrics()
    metrics.request(method, 202, 0)
    assert float(samples(metrics)['dogestry_requests_total{code="202",method="other"}']) == 1.0
