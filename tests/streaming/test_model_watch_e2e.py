"""Issue 19 end to end: 60,000 generated transactions replayed with late labels into ``fraudlite serve``
with a shadow model. Every alert explains itself, every feature has a drift gauge, late labels become
outcome counts for the served and the shadow model, and the shadow's metrics and topic exist."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from fraudlite.data.simulator import simulate
from fraudlite.data.simulator_config import SimulatorConfig
from fraudlite.data.transactions import load_transactions, parse_day, write_table
from fraudlite.features.spec import FeatureSpec
from fraudlite.kafkaio.broker import free_port
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model
from fraudlite.testing.reliability import metric, scrape

N = 60_000
SIM = {"n_customers": 2500, "n_terminals": 2500, "n_days": 50, "start_date": "2026-01-01", "seed": 5}
TRAIN = ("2026-01-08", "2026-02-04")
REPLAY_START = "2026-02-05"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    data = root / "tx.parquet"
    write_table(simulate(SimulatorConfig(**SIM)), data)
    df = load_transactions(data, require_label=True)
    spec = FeatureSpec()
    models = {}
    for name, model_type in (("served", "mlp"), ("shadow", "logreg")):
        cfg = TrainConfig(
            parse_day(TRAIN[0], "s"), parse_day(TRAIN[1], "e"), model_type=model_type, max_epochs=3
        )
        models[name] = train_model(prepare_training_data(df, cfg, spec), cfg, spec, root / name)
    return root, data, models


def _ready(port: int) -> bool:
    try:
        return metric(scrape(port), "fraudlite_scorer_ready") == 1
    except OSError:
        return False


def _read(bootstrap: str, topic: str, expected: int | None, timeout_s: float = 90.0) -> list[dict]:
    """The committed records of ``topic``: until ``expected`` are read, or (None) until 3 s bring nothing."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict] = []
        deadline, last_new = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline and (expected is None or len(out) < expected):
            for batch in consumer.poll(timeout_ms=500).values():
                out += [json.loads(r.value) for r in batch]
                last_new = time.monotonic()
            if expected is None and time.monotonic() - last_new > 3:
                break
        return out
    finally:
        consumer.close()


@pytest.mark.integration
def test_replay_with_late_labels_into_serve_with_a_shadow(setup, broker, tmp_path):
    from fraudlite.streaming.replay import replay

    root, data, models = setup
    suffix = tmp_path.name[-12:].replace("_", "-")
    topics = {k: f"watch-{k}-{suffix}" for k in ("input", "output", "alerts", "dlq", "labels", "shadow")}
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "fraudlite", "serve", "--model", str(models["served"].path),
         "--shadow-model", str(models["shadow"].path), "--bootstrap-servers", broker.bootstrap,
         "--group-id", f"watch-{suffix}", "--metrics-port", str(port), "--session-timeout-ms", "6000",
         *[x for k, t in topics.items() for x in (f"--{k}-topic", t)]],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve never became ready"
            time.sleep(0.3)
        sent = replay(str(data), bootstrap_servers=broker.bootstrap, topic=topics["input"], start=REPLAY_START,
                      limit=N, labels_topic=topics["labels"])  # fmt: skip
        assert sent.transactions == N
        decisions = _read(broker.bootstrap, topics["output"], N)
        assert len(decisions) == N
        # labels count once the stream's time passes their transaction's day + the label delay: those of
        # the first ~5 of the ~12 replayed days
        deadline = time.monotonic() + 60
        while metric(scrape(port), "fraudlite_label_outcomes_total") < 0.25 * N:
            assert time.monotonic() < deadline, "late labels never joined"
            time.sleep(0.5)
        metrics = scrape(port)
        alerts = _read(broker.bootstrap, topics["alerts"], None, timeout_s=10)
        shadow = _read(broker.bootstrap, topics["shadow"], N)
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()

    names = models["served"].spec.names
    # every alert carries 1-3 valid reasons, ordered by contribution
    assert alerts, "no alerts: the test data should raise some"
    for alert in alerts:
        reasons = alert["reasons"]
        assert 1 <= len(reasons) <= 3
        contributions = [r["contribution"] for r in reasons]
        assert contributions == sorted(contributions, reverse=True) and contributions[-1] > 0
        for r in reasons:
            assert r["feature"] in names and math.isfinite(r["value"]) and r["text"].strip()
    assert "reasons" not in decisions[0]  # decisions carry them only with --explain-all
    assert metric(metrics, "fraudlite_explained_total") >= len(alerts)
    # a PSI gauge for every feature, and the score's
    for name in names:
        assert f"fraudlite_feature_drift_psi{{feature={name}}}" in metrics, name
    assert "fraudlite_score_drift_psi{}" in metrics
    # late labels joined to this scorer's decisions: every outcome class that occurred is counted
    outcomes = {o: metric(metrics, "fraudlite_label_outcomes_total", outcome=o)
                for o in ("true_positive", "false_positive", "false_negative", "true_negative")}  # fmt: skip
    assert outcomes["true_negative"] > 0 and outcomes["true_positive"] + outcomes["false_negative"] > 0
    assert sum(outcomes.values()) >= 0.25 * N
    # the shadow scored every transaction, wrote one decision each, and has its own outcomes
    assert metric(metrics, "fraudlite_shadow_scored_total") == N
    assert len(shadow) == N and {d["model_version"] for d in shadow} == {models["shadow"].version}
    assert metric(metrics, "fraudlite_shadow_disagreements_total", kind="decision") > 0
    assert metric(metrics, "fraudlite_shadow_score_delta_count") == N
    assert metric(metrics, "fraudlite_shadow_label_outcomes_total") == sum(outcomes.values())
    assert metric(metrics, "fraudlite_shadow_model_info", version=models["shadow"].version) == 1
