"""Issue 17 online: a model trained with extra columns (categorical, numeric with gaps, bool as yes/no,
a categorical of zero-padded codes, a dotted name) serves a replayed CSV with the same scores as
``fraudlite score`` offline, every transaction once; poison in the extra fields goes to the DLQ with a
reason naming the field (metrics count it by base reason) and the stream goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fraudlite.cli import main
from fraudlite.errors import ModelDirError
from fraudlite.features.extras import ExtraColumn
from fraudlite.features.spec import FeatureSpec
from fraudlite.kafkaio.broker import free_port
from fraudlite.testing.reliability import metric, scrape
from fraudlite.testing.streaming import produce, read_topic, write_model

EXTRAS = "channel:categorical,device.score:numeric,card_present:bool,merchant:categorical"
SPLIT_DAY = "2026-01-30"  # replayed up to here, then the poison, then the rest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A generated file plus extra columns that tell fraud apart, a model trained on them, and the
    offline scores (``fraudlite score``) of the file as the stream carries it: without labels."""
    root = tmp_path_factory.mktemp("extras")
    base = root / "base.parquet"
    gen = ["--customers", "200", "--terminals", "400", "--days", "45", "--start-date", "2026-01-01"]
    assert main(["generate", "--out", str(base), *gen, "--seed", "7"]) == 0
    df = pd.read_parquet(base)
    rng = np.random.default_rng(3)
    n, fraud = len(df), df["label"].to_numpy() == 1
    legit_p, fraud_p = [0.5, 0.3, 0.1, 0.05, 0.05], [0.05, 0.1, 0.15, 0.3, 0.4]
    df["channel"] = np.where(
        fraud, rng.choice(["pos", "ecom", "atm", "moto", "app"], n, p=fraud_p),
        rng.choice(["pos", "ecom", "atm", "moto", "app"], n, p=legit_p),
    )  # fmt: skip
    score = np.clip(rng.normal(np.where(fraud, 0.85, 0.25), 0.1), 0, 1).round(4)
    df["device.score"] = np.where(rng.random(n) < 0.15, np.nan, score)
    df["card_present"] = np.where(rng.random(n) < np.where(fraud, 0.1, 0.7), "yes", "no")
    df["merchant"] = [f"{m:03d}" for m in rng.integers(0, 8, n)]  # "007": text, never the number 7
    df["note"] = "not a model input"  # sent, ignored by the decoder
    data = root / "tx.csv"
    df.to_csv(data, index=False)
    model = root / "model"
    assert main(["train", "--data", str(data), "--train-start", "2026-01-08", "--train-end", "2026-02-07",
                 "--extra-columns", EXTRAS, "--max-epochs", "5", "--out", str(model)]) == 0  # fmt: skip
    stream = root / "stream.csv"  # what the scorer sees: no labels (so no terminal risk either side)
    df.drop(columns=["label", "scenario"]).to_csv(stream, index=False)
    assert main(["score", "--model", str(model), "--data", str(stream), "--out", str(root / "s.csv")]) == 0
    scores = pd.read_csv(root / "s.csv", dtype={"tx_id": str})
    return data, model, dict(zip(scores["tx_id"], scores["score"], strict=True)), len(df)


def _poison() -> list[tuple[bytes, bytes]]:
    ok = {"tx_id": "p", "timestamp": "2026-01-30T12:00:00Z", "customer_id": "C00001",
          "terminal_id": "T00001", "amount": 10.0, "channel": "pos", "device.score": 0.5,
          "card_present": "no", "merchant": "001"}  # fmt: skip
    bad = [
        {**ok, "tx_id": "p-text", "device.score": "high"},
        {**ok, "tx_id": "p-list", "device.score": [0.5]},
        {k: v for k, v in {**ok, "tx_id": "p-nobool"}.items() if k != "card_present"},
        {**ok, "tx_id": "p-null", "card_present": None},
        {**ok, "tx_id": "p-maybe", "card_present": "maybe"},
    ]
    return [(m["customer_id"].encode(), json.dumps(m).encode()) for m in bad]


EXPECTED_DLQ = {
    "p-text": "bad_type:device.score", "p-list": "bad_type:device.score",
    "p-nobool": "missing_field:card_present", "p-null": "missing_field:card_present",
    "p-maybe": "bad_type:card_present",
}  # fmt: skip


def _wait(what, check, timeout_s: float, serve, log) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert serve.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.integration
def test_extra_columns_serve_like_offline_and_poison_goes_to_the_dlq(setup, broker, tmp_path):
    from fraudlite.streaming.replay import replay

    data, model, offline, n = setup
    suffix = tmp_path.name[-12:].replace("_", "-")
    topics = {k: f"extras-{k}-{suffix}" for k in ("input", "output", "alerts", "dlq", "labels")}
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "fraudlite", "serve", "--model", str(model), "--bootstrap-servers",
             broker.bootstrap, "--group-id", f"extras-{suffix}", "--metrics-port", str(port),
             "--session-timeout-ms", "6000", *[x for k, t in topics.items() for x in (f"--{k}-topic", t)]],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready() -> bool:
        try:
            return metric(scrape(port), "fraudlite_scorer_ready") == 1
        except OSError:
            return False

    def scored() -> float:
        return metric(scrape(port), "fraudlite_messages_consumed_total")

    try:
        _wait("serve never became ready", ready, 60, serve, log)
        # Paced as a live stream arrives (terminal_feed's arrival condition): a full-speed burst of 15 days
        # can make one partition's later days visible before another's earlier ones (seen once in CI).
        feed = {"bootstrap_servers": broker.bootstrap, "topic": topics["input"], "rate": 5000}
        first = replay(str(data), end=SPLIT_DAY, **feed)
        produce(broker.bootstrap, topics["input"], _poison())
        rest = replay(str(data), start="2026-01-31", **feed)
        assert first.transactions + rest.transactions == n
        _wait("not every message consumed", lambda: scored() >= n + len(EXPECTED_DLQ), 60, serve, log)
        metrics = scrape(port)
        decisions = [json.loads(r.value) for r in read_topic(broker.bootstrap, topics["output"], min_count=n)]
        dlq = read_topic(broker.bootstrap, topics["dlq"], min_count=len(EXPECTED_DLQ))
    finally:
        serve.terminate()
        serve.wait(30)

    counts = Counter(d["tx_id"] for d in decisions)
    assert len(counts) == n and set(counts.values()) == {1}  # every transaction scored exactly once
    assert set(counts) == set(offline)
    worst = max(abs(d["score"] - offline[d["tx_id"]]) for d in decisions)
    assert worst <= 1e-4, f"online and offline scores differ by up to {worst}"
    assert len({round(d["score"], 3) for d in decisions}) > 50  # the scores are not all alike
    got = {json.loads(r.value)["tx_id"]: dict(r.headers)["fraudlite.dlq.reason"].decode() for r in dlq}
    assert got == EXPECTED_DLQ
    # metrics count by base reason only (bounded labels)
    assert metric(metrics, "fraudlite_dlq_messages_total", reason="bad_type") == 3
    assert metric(metrics, "fraudlite_dlq_messages_total", reason="missing_field") == 2
    assert not [k for k in metrics if k.startswith("fraudlite_dlq_messages_total{") and ":" in k]


@pytest.mark.integration
def test_a_restarted_scorer_replays_the_input_with_its_extra_fields(setup, broker, make_topic):
    """The second scorer rebuilds the customer state by replaying the committed input (no changelog
    record yet): those records are decoded with the extra fields too, and every score still matches."""
    from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.replay import replay
    from fraudlite.streaming.scorer import Scorer
    from fraudlite.testing.streaming import ScorerThread

    data, model, offline, _ = setup
    u = make_topic(1).rsplit("-", 1)[-1]
    t = Topics(input=make_topic(2), output=f"d-{u}", alerts=f"a-{u}", dlq=f"q-{u}", labels=make_topic(2))
    n = replay(str(data), bootstrap_servers=broker.bootstrap, topic=t.input, limit=4000).transactions
    cfg = ServeConfig(
        bootstrap_servers=broker.bootstrap, topics=t, model_dir=model, group_id=f"restart-{u}",
        metrics_port=None, batch=BatchConfig(max_records=200, max_ms=20), changelog_interval_s=3600.0,
    )  # fmt: skip
    first = ScorerThread(Scorer(cfg, load_model(model)))
    first.scorer._flush_changelog = lambda: None  # as after a crash
    first.start().wait_scored(n // 2)
    first.stop()
    done = first.scorer.summary.consumed
    assert n // 2 <= done < n, "stopped mid-stream"
    second = ScorerThread(Scorer(cfg, load_model(model))).start()
    second.wait_scored(n - done)
    second.stop()
    decisions = [json.loads(r.value) for r in read_topic(broker.bootstrap, t.output, min_count=n)]
    assert len(decisions) == n == len({d["tx_id"] for d in decisions})
    worst = max(abs(d["score"] - offline[d["tx_id"]]) for d in decisions)
    assert worst <= 1e-4, f"after the restart, scores differ from offline by up to {worst}"


def test_a_model_with_other_extra_columns_is_refused_as_shadow_and_at_hot_swap(tmp_path):
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.shadow import load_shadow

    served = FeatureSpec(extra_columns=(ExtraColumn("channel", "categorical", vocabulary=("atm", "pos")),))
    refitted = FeatureSpec(extra_columns=(ExtraColumn("channel", "categorical", vocabulary=("atm", "web")),))
    other = FeatureSpec(extra_columns=(ExtraColumn("device.score", "numeric", fill=0.5),))
    for name, spec, why in (
        ("refitted", refitted, "fitted on other data"),
        ("other", other, "extra columns device.score:numeric; served: channel:categorical"),
        ("none", FeatureSpec(), "extra columns none; served: channel:categorical"),
    ):
        path = write_model(tmp_path / name, spec).path
        with pytest.raises(ModelDirError, match="restart the scorer to change features") as e:
            load_model(path, expected_spec=served)  # what the registry reloader does
        assert why in str(e.value)
        with pytest.raises(ModelDirError, match=f"--shadow-model .*differs from the served model's.*{why}"):
            load_shadow(path, served)
    assert load_model(write_model(tmp_path / "same", served).path, expected_spec=served).spec == served
