"""Reason codes in serving, end to end on the embedded broker with a real trained model: every alert
carries valid reasons (the same as the offline Shapley values of the same features), decisions carry
none unless ``--explain-all``, and the explain stage is timed and counted.

The stream is the last 15 days of a generated file replayed with late labels (terminal risk is live),
the alert threshold set so ~2% of the transactions alert.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudlite.monitoring.reasons import MAX_REASONS, shapley_values
from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics
from fraudlite.streaming.serve import make_scorer
from fraudlite.testing.streaming import ScorerThread

pytestmark = pytest.mark.integration

DECISION_KEYS = {"tx_id", "customer_id", "score", "decision", "threshold", "model_version", "scored_at"}


@pytest.fixture(scope="module")
def stream(train_small, tmp_path_factory):
    """(model dir, stream CSV, offline features X, offline scores, alert threshold, the served model)."""
    from fraudlite.compression.served import open_model
    from fraudlite.data.transactions import load_transactions
    from fraudlite.models.evaluation import features_for

    data, model = train_small("explain-stream", 3)
    raw = pd.read_parquet(data)
    path = tmp_path_factory.mktemp("explain") / "stream.csv"
    raw[raw["timestamp"] >= "2026-03-01"].drop(columns="scenario").to_csv(path, index=False)
    served = open_model(model)
    df = load_transactions(path, {}, require_label=True)
    X = features_for(served.spec, df).astype(np.float32)
    scores = served.score(X)
    threshold = float(np.quantile(scores, 0.98))
    return {"model": model, "path": path, "df": df, "X": X, "scores": scores, "alert": threshold,
            "served": served}  # fmt: skip


def _run(broker, make_topic, consume_all, s, **kw):
    """Replay the stream (with labels), serve it to the end; returns (decisions, alerts, metrics)."""
    from fraudlite.streaming.replay import replay

    u = uuid.uuid4().hex[:8]
    t = Topics(input=make_topic(4), output=f"dec-{u}", alerts=f"al-{u}", dlq=f"dlq-{u}", labels=make_topic(4))
    replay(str(s["path"]), bootstrap_servers=broker.bootstrap, topic=t.input, labels_topic=t.labels)
    config = ServeConfig(
        bootstrap_servers=broker.bootstrap, model_dir=s["model"], topics=t, group_id=f"explain-{u}",
        metrics_port=0, batch=BatchConfig(max_records=500, max_ms=20), alert_threshold=s["alert"], **kw,
    )  # fmt: skip
    scorer = make_scorer(config)
    run = ScorerThread(scorer).start()
    n = len(s["df"])
    run.wait_scored(n, timeout_s=120)
    text = urllib.request.urlopen(f"http://127.0.0.1:{scorer.metrics_port}/metrics", timeout=5).read()
    run.stop()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    decisions = {
        json.loads(r.value)["tx_id"]: json.loads(r.value) for r in consume_all(t.output, min_count=n)
    }
    alerts = [json.loads(r.value) for r in consume_all(t.alerts, min_count=1)]
    assert len(decisions) == n
    return decisions, alerts, families


def _sample(families, name, **labels) -> float:
    return sum(
        x.value
        for f in families.values()
        for x in f.samples
        if x.name == name and labels.items() <= x.labels.items()
    )


def _check_reasons(reasons, tx_row, s, phi_row):
    """1-3 reasons, positive and ordered, named as in the spec; values are the transaction's features and
    contributions its offline Shapley values (the streamed features equal the offline ones)."""
    names = s["served"].spec.names
    assert 1 <= len(reasons) <= MAX_REASONS
    assert [set(r) for r in reasons] == [{"feature", "value", "contribution", "text"}] * len(reasons)
    contributions = [r["contribution"] for r in reasons]
    assert contributions == sorted(contributions, reverse=True) and contributions[-1] > 0
    for r in reasons:
        j = names.index(r["feature"])
        assert r["value"] == pytest.approx(float(s["X"][tx_row, j]), abs=1e-5)
        assert r["contribution"] == pytest.approx(phi_row[j], abs=1e-5)
        assert isinstance(r["text"], str) and len(r["text"]) > 3
    # the top reasons are the top contributions (ties aside)
    kth = sorted(phi_row, reverse=True)[len(reasons) - 1]
    assert min(contributions) >= kth - 1e-5


def test_every_alert_carries_reasons_decisions_do_not(broker, make_topic, consume_all, stream):
    s = stream
    decisions, alerts, families = _run(broker, make_topic, consume_all, s)
    row = {tx: i for i, tx in enumerate(s["df"]["tx_id"])}
    expected_alerts = {tx for tx, d in decisions.items() if d["score"] >= s["alert"]}
    assert len(expected_alerts) >= 50
    assert {a["tx_id"] for a in alerts} == expected_alerts and len(alerts) == len(expected_alerts)
    for d in decisions.values():
        assert set(d) == DECISION_KEYS, "a decision without --explain-all is unchanged"
    rows = np.array([row[a["tx_id"]] for a in alerts])
    phi = shapley_values(s["served"].log_odds, s["X"][rows], s["served"].normalization()[0])
    for a, i, phi_row in zip(alerts, rows.tolist(), phi, strict=True):
        reasons = a.pop("reasons")
        assert a == decisions[a["tx_id"]], "an alert is its decision plus the reasons"
        _check_reasons(reasons, i, s, phi_row)
    assert _sample(families, "fraudlite_explained_total") == len(alerts)
    assert _sample(families, "fraudlite_stage_seconds_count", stage="explain") >= 1
    assert _sample(families, "fraudlite_alerts_total") == len(alerts)


def test_explain_all_puts_reasons_on_every_decision(broker, make_topic, consume_all, stream):
    s = stream
    decisions, alerts, families = _run(broker, make_topic, consume_all, s, explain_all=True)
    row = {tx: i for i, tx in enumerate(s["df"]["tx_id"])}
    rng = np.random.default_rng(0)
    some = rng.choice(sorted(decisions), 200, replace=False).tolist()  # offline Shapley for a sample
    rows = np.array([row[tx] for tx in some])
    phi = shapley_values(s["served"].log_odds, s["X"][rows], s["served"].normalization()[0])
    for tx, i, phi_row in zip(some, rows.tolist(), phi, strict=True):
        reasons = decisions[tx]["reasons"]
        if phi_row.max() > 0:
            _check_reasons(reasons, i, s, phi_row)
        else:  # nothing pushed the score up: the single largest contribution
            assert [r["feature"] for r in reasons] == [s["served"].spec.names[int(np.argmax(phi_row))]]
    assert all(set(d) == DECISION_KEYS | {"reasons"} for d in decisions.values())
    for a in alerts:
        assert a == decisions[a["tx_id"]], "with --explain-all the alert is its decision"
    assert _sample(families, "fraudlite_explained_total") == len(decisions)


def test_explain_all_flag_reaches_the_config(stream):
    from fraudlite.cli import build_parser
    from fraudlite.streaming.config import build_serve_config

    base = ["serve", "--model", str(stream["model"]), "--bootstrap-servers", "127.0.0.1:9092"]
    parser = build_parser()
    assert build_serve_config(parser.parse_args(base)).explain_all is False
    assert build_serve_config(parser.parse_args([*base, "--explain-all"])).explain_all is True


# -- the explainer without a broker -------------------------------------------------------------------------


def test_explainer_picks_the_alerted_rows_and_counts_them(stream):
    from prometheus_client import CollectorRegistry

    from fraudlite.monitoring.reasons import explain_rows
    from fraudlite.streaming.explain import Explainer
    from fraudlite.streaming.metrics import ScorerMetrics
    from fraudlite.streaming.reload import load_model

    model = load_model(stream["model"], alert_threshold=stream["alert"])
    x, scores = stream["X"][:2000], stream["scores"][:2000]
    metrics = ScorerMetrics(CollectorRegistry())
    out = Explainer(metrics)(model, x, scores)
    alerted = np.flatnonzero(scores >= stream["alert"])
    assert len(alerted) > 0 and out.rows.tolist() == alerted.tolist() and not out.in_decisions
    assert out.reasons == explain_rows(model.scorer.log_odds, x[alerted], model.scorer.normalization()[0],
                                       model.spec.names)  # fmt: skip
    get = metrics.registry.get_sample_value
    assert get("fraudlite_explained_total") == len(alerted)
    assert get("fraudlite_stage_seconds_count", {"stage": "explain"}) == 1
    # one partition's run of the batch: indices relative to its start
    start, stop = int(alerted[0]), int(alerted[-1])
    part = out.between(start, stop)
    assert list(part) == [int(r) - start for r in alerted if r < stop]
    assert part[0] == out.reasons[0]
    assert Explainer(metrics)(model, x, np.zeros(len(x), np.float32)) is None, "no alert, nothing to do"
    assert Explainer(metrics)(model, None, np.zeros(0, np.float32)) is None
    every = Explainer(None, explain_all=True)(model, x[:50], scores[:50])
    assert every.rows.tolist() == list(range(50)) and every.in_decisions


def test_a_model_without_feature_means_serves_without_reasons(stream, monkeypatch, caplog):
    from fraudlite.compression.served import ServedModel
    from fraudlite.errors import ModelDirError
    from fraudlite.streaming.explain import Explainer
    from fraudlite.streaming.reload import load_model

    model = load_model(stream["model"], alert_threshold=0.0)

    def no_means(self):
        raise ModelDirError(f"{self.path}: the feature spec has no normalization (mean, std)")

    monkeypatch.setattr(ServedModel, "normalization", no_means)
    explainer = Explainer()
    with caplog.at_level("WARNING", logger="fraudlite.streaming.explain"):
        assert explainer(model, stream["X"][:10], stream["scores"][:10]) is None
        assert explainer(model, stream["X"][:10], stream["scores"][:10]) is None
    assert [r.message for r in caplog.records].count(
        f"model {model.version}: no reason codes ({model.path}: the feature spec has no normalization (mean, std))"
    ) == 1, "warned once per model"
    monkeypatch.undo()
    swapped = load_model(stream["model"], alert_threshold=0.0)  # a new model: its means are looked up again
    assert len(explainer(swapped, stream["X"][:10], stream["scores"][:10])) == 10
