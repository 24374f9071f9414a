"""ScorerMetrics: names and conventions, batch histograms, HTTP exposition."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fraudlite.streaming.metrics import LATENCY_BUCKETS, BatchHistogram, ScorerMetrics, serve_metrics


def families(registry: CollectorRegistry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_batch_histogram_matches_prometheus_histogram():
    values = np.array([0.0, 0.0005, 0.0004, 0.003, 1.0, 7.5, 100.0, np.nan])
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "doc", LATENCY_BUCKETS, registry=reg_a)
    batch.observe_many(values[:3])
    batch.observe_many(values[3:])
    plain = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=reg_b)
    for v in values[~np.isnan(values)]:
        plain.observe(v)
    a = [(s.name, s.labels, s.value) for s in families(reg_a)["x_seconds"].samples]
    b = [
        (s.name, s.labels, s.value)
        for s in families(reg_b)["x_seconds"].samples
        if not s.name.endswith("_created")
    ]
    assert a == b


def test_batch_histogram_labels():
    reg = CollectorRegistry()
    h = BatchHistogram("y", "doc", (1.0, 2.0), labelnames=("kind",), registry=reg)
    h.observe_many(np.array([0.5, 1.5]), labels=("a",))
    h.observe_many(np.array([3.0]), labels=("b",))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families(reg)["y"].samples}
    assert samples[("y_count", (("kind", "a"),))] == 2
    assert samples[("y_bucket", (("kind", "b"), ("le", "2.0")))] == 0
    assert samples[("y_bucket", (("kind", "b"), ("le", "+Inf")))] == 1


def test_names_follow_conventions():
    reg = CollectorRegistry()
    m = ScorerMetrics(reg)
    m.set_model(
        "v1", "mlp", ["prune", "quantize"], {"manifest": 700, "compact": 1234, "spec": 56}, 1.0, "ort-dense"
    )
    m.set_shadow("v2", "numpy-dense")
    m.set_lag("transactions", {0: 5, 1: -3})
    m.latency.observe_many(np.array([0.0002, 0.004]))
    m.scores.observe_many(np.array([0.1, 0.95]))
    m.count_dlq(["bad_json", "bad_json", "oversize"])
    fams = families(reg)
    for name, fam in fams.items():
        if name.startswith(("process_", "python_")):
            continue
        assert name.startswith("fraudlite_"), name
        if fam.type == "counter":
            assert any(s.name.endswith("_total") for s in fam.samples), name
        assert fam.type != "summary", name
    for needed in (
        "fraudlite_transactions_scored",
        "fraudlite_dlq_messages",
        "fraudlite_batch_size",
        "fraudlite_end_to_end_latency_seconds",
        "fraudlite_stage_seconds",
        "fraudlite_consumer_lag_messages",
        "fraudlite_score",
        "fraudlite_alerts",
        "fraudlite_model_info",
        "fraudlite_model_bytes",
        "fraudlite_state_entries",
        "fraudlite_state_bytes",
        "fraudlite_rebalances",
        "fraudlite_commit_failures",
        "fraudlite_scorer_ready",
        "fraudlite_scorer_healthy",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    ):
        assert needed in fams, needed
    # sub-millisecond buckets where it matters
    les = {s.labels["le"] for s in fams["fraudlite_end_to_end_latency_seconds"].samples if "le" in s.labels}
    assert "0.0005" in les
    les = {s.labels["le"] for s in fams["fraudlite_stage_seconds"].samples if "le" in s.labels}
    assert "1e-05" in les
    info = [s for s in fams["fraudlite_model_info"].samples]
    assert info[0].labels == {
        "version": "v1",
        "model_type": "mlp",
        "stages": "prune,quantize",
        "form": "ort-dense",
    }
    loaded = {s.labels["role"]: s.value for s in fams["fraudlite_model_bytes"].samples}
    assert loaded == {"manifest": 700.0, "compact": 1234.0, "spec": 56.0}
    lag = {s.labels["partition"]: s.value for s in fams["fraudlite_consumer_lag_messages"].samples}
    assert lag == {"0": 5.0, "1": 0.0}
    dlq = {
        s.labels["reason"]: s.value
        for s in fams["fraudlite_dlq_messages"].samples
        if s.name.endswith("_total")
    }
    assert dlq["bad_json"] == 2 and dlq["oversize"] == 1 and dlq["bad_amount"] == 0
    m.set_model("v2", "mlp", [], {"onnx": 1}, 2.0)
    info = [s for s in families(reg)["fraudlite_model_info"].samples]
    assert [s.labels["version"] for s in info] == ["v2"]


def test_two_factories_do_not_collide():
    ScorerMetrics(CollectorRegistry())
    ScorerMetrics(CollectorRegistry())


def test_http_endpoint():
    reg = CollectorRegistry()
    m = ScorerMetrics(reg)
    m.scored.labels("fraud").inc(3)
    server, _ = serve_metrics(reg, "127.0.0.1", 0)
    try:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    finally:
        server.shutdown()
        server.server_close()
    assert 'fraudlite_transactions_scored_total{decision="fraud"} 3.0' in text
    assert "process_resident_memory_bytes" in text


def test_port_taken_raises_oserror():
    reg = CollectorRegistry()
    server, _ = serve_metrics(reg, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            serve_metrics(CollectorRegistry(), "127.0.0.1", server.server_port)
    finally:
        server.shutdown()
        server.server_close()
