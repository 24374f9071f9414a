"""End to end: a running ``fraudlite serve --registry`` picks up the scheduled retrain's promotion."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from retrain_support import CONFIG, DAYS, day

from fraudlite.compression.served import open_model
from fraudlite.data.transactions import format_day, load_transactions, parse_day
from fraudlite.pipeline.registry import Registry
from fraudlite.pipeline.retrain import (
    COMPRESSION_UNAVAILABLE,
    RetrainConfig,
    run_retrain,
)

RETRAIN_DAY = 66  # the scheduled run at 03:00 on this day trains on data up to day 59 (drift from day 45)
# Compressed with the built-in recipe. The AP budget is wider than the 0.005 default because this tiny test
# set (~40 frauds per validation week) makes AP noisy; the guardrail itself is tested with injected results.
E2E_CONFIG = RetrainConfig(train_days=28, valid_days=7, delay_days=7, max_epochs=3, max_ap_drop=0.05)


@pytest.fixture(scope="module")
def broker():
    from fraudlite.kafkaio.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _wait_for(predicate, timeout_s: float, what: str, proc=None) -> None:

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _read_decisions(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        time.sleep(1.0)  # anything beyond `expected` would be a duplicate: give it a chance to show up
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@pytest.mark.integration
def test_end_to_end_running_scorer_switches_to_the_scheduled_retrain(
    lifecycle, drift_data, broker, tmp_path, capsys
):
    import subprocess
    import sys

    from fraudlite.models.evaluation import evaluate_scores, known_fraud_mask, score_frame
    from fraudlite.pipeline.scheduler import FakeClock, Scheduler
    from fraudlite.streaming.replay import replay

    # the registry starts with v1 (trained before the drift) as champion
    v1_id = lifecycle["first"].challenger
    reg = Registry(tmp_path / "registry", create=True)
    reg.add(Registry(lifecycle["root"]).load(v1_id))
    reg.promote(v1_id)
    suffix = tmp_path.name[-12:].replace("_", "-")
    topics = {k: f"e2e-{k}-{suffix}" for k in ("input", "output", "alerts", "dlq", "labels")}
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "fraudlite", "serve", "--registry", str(reg.root),
         "--bootstrap-servers", broker.bootstrap, "--group-id", f"e2e-{suffix}", "--metrics-port", str(port),
         "--reload-interval", "0.5", "--session-timeout-ms", "6000",
         *[x for k, t in topics.items() for x in (f"--{k}-topic", t)]],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for(lambda: f'version="{v1_id}"' in _scrape(port), 60, "the scorer to serve v1", serve)
        common = {
            "bootstrap_servers": broker.bootstrap,
            "topic": topics["input"],
            "labels_topic": topics["labels"],
        }
        sent = replay(str(drift_data), end=format_day(day(RETRAIN_DAY - 1)), **common).transactions
        # drifted traffic keeps flowing while the scheduled run trains and promotes v2
        background: dict = {}

        def during():
            background["sent"] = replay(
                str(drift_data), start=format_day(day(RETRAIN_DAY)), end=format_day(day(RETRAIN_DAY + 6)),
                rate=400, **common,
            ).transactions  # fmt: skip

        feeder = threading.Thread(target=during)
        feeder.start()
        clock = FakeClock(
            datetime.fromisoformat(format_day(day(RETRAIN_DAY))).replace(tzinfo=UTC) - timedelta(hours=2)
        )
        results = []

        def job(fire):
            now_day = parse_day(fire.date().isoformat(), "now")
            results.append(run_retrain(reg.root, drift_data, E2E_CONFIG, now_day=now_day))
            return results[-1].decision

        assert [r.outcome for r in Scheduler("0 3 * * *", job, clock=clock).run(max_runs=1)] == ["promoted"]
        v2_id = results[0].challenger
        compression = results[0].compression
        if compression != COMPRESSION_UNAVAILABLE:  # the compression stage exists in this build
            assert compression["status"] == "compressed", compression
            assert (
                reg.load(v2_id).has("compact") and compression["report"]["ap_drop"] <= E2E_CONFIG.max_ap_drop
            )
        feeder.join(120)
        sent += background["sent"]
        _wait_for(lambda: f'version="{v2_id}"' in _scrape(port), 60, "the scorer to hot-reload v2", serve)
        sent += replay(str(drift_data), start=format_day(day(RETRAIN_DAY + 7)), **common).transactions
        decisions = _read_decisions(broker.bootstrap, topics["output"], sent)
        metrics_text = _scrape(port)
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()
    # every transaction decided exactly once, across the swap
    values = [json.loads(r.value) for r in decisions]
    tx_ids = [v["tx_id"] for v in values]
    assert len(tx_ids) == sent and len(set(tx_ids)) == sent
    # within each partition the version switches once, v1 -> v2, and never back
    switched_at = {}
    for r, v in zip(decisions, values, strict=True):
        assert v["model_version"] in (v1_id, v2_id)
        if v["model_version"] == v2_id:
            switched_at.setdefault(r.partition, r.offset)
        else:
            assert r.partition not in switched_at, "a v1 decision after v2 took over"
    assert switched_at, "v2 never scored anything"
    assert f'fraudlite_model_info{{version="{v2_id}"' in metrics_text or f'version="{v2_id}"' in metrics_text
    # AP on the drifted traffic after the switch: the served v2 scores vs v1 on the same transactions
    df = load_transactions(drift_data, require_label=True)
    by_tx = {v["tx_id"]: (v["score"], v["model_version"]) for v in values}
    window = df["ts"].to_numpy() // 86_400 >= day(RETRAIN_DAY + 7)
    served = np.array([by_tx[t][0] for t in df["tx_id"]], dtype=np.float64)
    assert all(by_tx[t][1] == v2_id for t in df["tx_id"][window])
    mask = window & ~known_fraud_mask(df, CONFIG.delay_days)
    ap_served_v2 = evaluate_scores(df, served, mask)["average_precision"]
    ap_v1 = evaluate_scores(df, score_frame(open_model(reg.load(v1_id)), df), mask)["average_precision"]
    ap_v2_offline = evaluate_scores(df, score_frame(open_model(reg.load(v2_id)), df), mask)[
        "average_precision"
    ]
    during_swap = [
        by_tx[t][1] for t in df["tx_id"][(df["ts"] // 86_400).between(day(RETRAIN_DAY), day(RETRAIN_DAY + 6))]
    ]
    with capsys.disabled():
        print(
            f"\n[e2e] traffic during the retrain ({format_day(day(RETRAIN_DAY))}..{format_day(day(RETRAIN_DAY + 6))}): "
            f"{during_swap.count(v1_id)} scored by v1, {during_swap.count(v2_id)} by v2"
        )
        print(
            f"[e2e] v2 compression: {compression if isinstance(compression, str) else compression['status']}"
            + (
                f" (compact {compression['report']['compact_ratio']:.0f}x smaller, AP drop "
                f"{compression['report']['ap_drop']:+.4f})"
                if isinstance(compression, dict) and compression.get("report")
                else ""
            )
        )
        print(
            f"[e2e] {sent} transactions, {len(values)} decisions, 0 duplicates; scorer switched to v2 in "
            f"{len(switched_at)} partitions. Drifted traffic {format_day(day(RETRAIN_DAY + 7))}..{format_day(day(DAYS - 1))}: "
            f"AP v1 {ap_v1:.4f} -> served v2 {ap_served_v2:.4f} (v2 offline {ap_v2_offline:.4f})"
        )
    assert ap_served_v2 > ap_v1
