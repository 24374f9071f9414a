"""Retrain job: windows, champion/challenger decision, drift recovery, guardrails, locking, bad input."""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from fraudlite.cli import main
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import format_day, load_transactions, parse_day, write_table
from fraudlite.errors import ConfigError, DataError, FraudliteError
from fraudlite.modeldir import ModelDir, write_model_dir
from fraudlite.models.evaluation import evaluate_window
from fraudlite.models.training import train_model
from fraudlite.pipeline.registry import Registry, RegistryBusyError, read_champion
from fraudlite.pipeline.retrain import (
    COMPRESSION_UNAVAILABLE,
    RetrainConfig,
    RetrainWindows,
    decide,
    run_retrain,
)

START = "2026-01-01"
DAYS = 80
DRIFT_DAY = 45  # 0-based: the new fraud scenario starts on 2026-02-15
# decision tests skip compression (speed); the end-to-end test compresses (see E2E_CONFIG)
CONFIG = RetrainConfig(train_days=28, valid_days=7, delay_days=7, max_epochs=3, compress=False)


def day(i: int) -> int:
    """Epoch day of the i-th simulated day."""
    return parse_day(START, "start") + i


@pytest.fixture(scope="module")
def drift_data(tmp_path_factory) -> Path:
    """A small simulated dataset whose fraud changes from DRIFT_DAY on."""
    path = tmp_path_factory.mktemp("retrain-data") / "tx.parquet"
    cfg = SimulatorConfig(
        n_customers=600,
        n_terminals=1200,
        n_days=DAYS,
        start_date=START,
        seed=7,
        drift_day=DRIFT_DAY,
        drift_rate=4e-3,
    )
    write_table(simulate(cfg), path)
    return path


# v1 sees only data before the drift (its window ends the day before it); v2 runs at the end of the data.
NOW_V1 = day(DRIFT_DAY - 1 + 7)
NOW_V2 = day(DAYS - 1 + 7)


@pytest.fixture(scope="module")
def lifecycle(drift_data, tmp_path_factory) -> dict:
    """v1 trained and promoted before the drift, then one *scheduled* run (fake clock) after it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from fraudlite.pipeline.scheduler import FakeClock, Scheduler, retrain_metrics

    root = tmp_path_factory.mktemp("lifecycle") / "registry"
    first = run_retrain(root, drift_data, CONFIG, now_day=NOW_V1)
    prom = CollectorRegistry()
    # the clock starts the evening before NOW_V2; the cron fires at 03:00 on NOW_V2 without real waiting
    fire_day = datetime.fromisoformat(format_day(NOW_V2)).replace(tzinfo=UTC)
    clock = FakeClock(fire_day - timedelta(hours=5))
    metrics = retrain_metrics(prom, model_registry=root, clock=clock)
    results = []

    def job(fire: datetime) -> str:
        result = run_retrain(
            root, drift_data, CONFIG, now_day=parse_day(fire.date().isoformat(), "now"), decided_at=fire
        )
        results.append(result)
        return result.decision

    records = Scheduler("0 3 * * *", job, clock=clock, metrics=metrics).run(max_runs=1)
    return {
        "root": root,
        "first": first,
        "second": results[0],
        "records": records,
        "clock": clock,
        "metrics_text": generate_latest(prom).decode(),
    }


def test_first_model_promoted_then_scheduled_run_recovers_from_drift(lifecycle, drift_data, capsys):
    first, second = lifecycle["first"], lifecycle["second"]
    reg = Registry(lifecycle["root"])
    # v1: the first model ever is promoted when it passes the guardrails
    assert first.decision == "promoted" and first.champion is None
    assert "first model" in first.reason
    assert first.windows["valid_end"] == format_day(day(DRIFT_DAY - 1))
    assert first.compression == {"status": "skipped"}
    # the scheduled run fired at 03:00 on NOW_V2, only on the fake clock
    record = lifecycle["records"][0]
    assert record.fire_time == datetime.fromisoformat(format_day(NOW_V2)).replace(hour=3, tzinfo=UTC)
    assert record.outcome == "promoted" and lifecycle["clock"].slept == pytest.approx(8 * 3600)
    # v2 trained after the drift, beats v1 on the recent (drifted) window, is promoted
    assert second.decision == "promoted", second.reason
    assert second.champion == first.challenger and second.new_champion == second.challenger
    ap_v1_drifted = second.metrics["champion"]["average_precision"]
    ap_v2_drifted = second.metrics["challenger"]["average_precision"]
    assert ap_v2_drifted > ap_v1_drifted + CONFIG.tolerance
    assert read_champion(reg.root) == second.challenger
    v2 = reg.load(second.challenger)
    assert v2.manifest["parent_version"] == first.challenger
    assert v2.manifest["metrics"]["recent_window"]["average_precision"] == pytest.approx(ap_v2_drifted)
    assert v2.manifest["retrain"]["compression_status"] == "skipped"
    history = reg.history()
    assert [e["decision"] for e in history] == ["promoted", "promoted"]
    assert history[1]["metrics"]["champion"]["average_precision"] == pytest.approx(ap_v1_drifted)
    assert history[1]["time"].startswith(format_day(NOW_V2))
    # drifted traffic: AP of v1 vs v2 on the same recent window, and v1 on its own (pre-drift) window
    df = load_transactions(drift_data, require_label=True)
    v1 = reg.load(first.challenger)
    ap_v1_before = first.metrics["challenger"]["average_precision"]
    drift_share = evaluate_window(v1, df, day(DAYS - 7), day(DAYS - 1))["n_fraud"]
    with capsys.disabled():
        print(
            f"\n[retrain drift] v1 AP pre-drift window {first.windows['eval_start']}..{first.windows['eval_end']}: "
            f"{ap_v1_before:.4f}; drifted window {second.windows['eval_start']}..{second.windows['eval_end']}: "
            f"v1 {ap_v1_drifted:.4f} -> v2 {ap_v2_drifted:.4f} (frauds in the last week: {drift_share})"
        )
    # scheduler metrics
    text = lifecycle["metrics_text"]
    assert 'fraudlite_retrain_runs_total{outcome="promoted"} 1.0' in text
    assert 'fraudlite_retrain_runs_total{outcome="failed"} 0.0' in text
    assert f'fraudlite_champion_info{{version="{second.challenger}"}} 1.0' in text


def copy_of(src: ModelDir, version: str, on_train=None):
    """A trainer that 'trains' by copying ``src`` under a new version name (fast; for decision tests)."""

    def trainer(prepared, config, spec, out):
        if on_train is not None:
            on_train()
        roles = {name: e["role"] for name, e in src.manifest["files"].items()}

        def write(tmp: Path) -> dict[str, str]:
            for name in roles:
                shutil.copyfile(src.path / name, tmp / name)
            return roles

        manifest = {
            k: v for k, v in src.manifest.items() if k not in ("files", "format", "signature", "created")
        }
        return write_model_dir(out, write, manifest | {"version": version, "parent_version": None})

    return trainer


@pytest.fixture
def registry_copy(lifecycle, tmp_path) -> Registry:
    """A private copy of the lifecycle registry (champion v2)."""
    dst = tmp_path / "registry"
    shutil.copytree(lifecycle["root"], dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return Registry(dst)


def test_worse_challenger_is_rejected_with_reason(registry_copy, drift_data):
    champion = registry_copy.champion()

    def shuffled_labels(prepared, config, spec, out):
        y = prepared.df["label"].to_numpy().copy()
        rng = __import__("numpy").random.default_rng(0)
        rng.shuffle(y)
        prepared.df = prepared.df.assign(label=y)  # a model that learns noise
        return train_model(prepared, config, spec, out)

    config = RetrainConfig(train_days=28, valid_days=7, max_epochs=1, compress=False)
    result = run_retrain(registry_copy.root, drift_data, config, now_day=NOW_V2, trainer=shuffled_labels)
    assert result.decision == "rejected"
    assert "below champion" in result.reason and "tolerance 0.005" in result.reason
    assert read_champion(registry_copy.root) == champion
    last = registry_copy.history()[-1]
    assert last["decision"] == "rejected" and last["reason"] == result.reason
    assert last["champion"] == champion and last["new_champion"] == champion
    assert (
        last["metrics"]["challenger"]["average_precision"] < last["metrics"]["champion"]["average_precision"]
    )
    assert registry_copy.status(result.challenger) == "rejected"  # kept, for audit, but not served


def test_compression_guardrails_reject(registry_copy, drift_data):
    champion = registry_copy.champion()
    src = registry_copy.load(champion)

    def failing(trained, df, out, recipe, max_ap_drop):
        raise FraudliteError(f"no setting keeps the AP drop within {max_ap_drop}")

    result = run_retrain(
        registry_copy.root, drift_data, CONFIG, now_day=NOW_V2, trainer=copy_of(src, "c1"), compressor=failing
    )
    assert result.decision == "rejected" and result.reason.startswith("guardrail: compression: no setting")
    assert result.compression["status"] == "failed"

    def too_lossy(trained, df, out, recipe, max_ap_drop):
        return trained, {"status": "compressed", "report": {"ap_drop": 0.02}}

    result = run_retrain(
        registry_copy.root,
        drift_data,
        CONFIG,
        now_day=NOW_V2,
        trainer=copy_of(src, "c2"),
        compressor=too_lossy,
    )
    assert (
        result.decision == "rejected" and "compression AP drop 0.0200 > --max-ap-drop 0.005" in result.reason
    )
    # an equal model passes (same AP as the champion: within the tolerance)
    ok = run_retrain(registry_copy.root, drift_data, CONFIG, now_day=NOW_V2, trainer=copy_of(src, "c3"))
    assert ok.decision == "promoted" and "delta +0.0000" in ok.reason
    assert read_champion(registry_copy.root) == "c3"
    assert [e["decision"] for e in registry_copy.history()[-3:]] == ["rejected", "rejected", "promoted"]


def test_two_concurrent_runs_cannot_both_write_the_champion(registry_copy, drift_data):
    src = registry_copy.load(registry_copy.champion())
    n_history = len(registry_copy.history())
    inside, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def block():
        inside.set()
        assert release.wait(60)

    def first():
        outcome["first"] = run_retrain(
            registry_copy.root, drift_data, CONFIG, now_day=NOW_V2, trainer=copy_of(src, "a", on_train=block)
        )

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(120)
    with pytest.raises(RegistryBusyError, match="retrain is locked by another process"):
        run_retrain(registry_copy.root, drift_data, CONFIG, now_day=NOW_V2, trainer=copy_of(src, "b"))
    release.set()
    t.join(120)
    assert outcome["first"].decision == "promoted"
    assert read_champion(registry_copy.root) == "a"
    assert len(registry_copy.history()) == n_history + 1
    assert "b" not in registry_copy.version_names()


def test_champion_moved_during_run_is_the_one_compared(registry_copy, drift_data):
    champion = registry_copy.champion()
    other = registry_copy.history()[0]["challenger"]  # v1
    src = registry_copy.load(champion)
    result = run_retrain(
        registry_copy.root,
        drift_data,
        CONFIG,
        now_day=NOW_V2,
        trainer=copy_of(src, "d", on_train=lambda: registry_copy.promote(other, reason="operator")),
    )
    assert result.extra["champion_at_start"] == champion
    assert result.champion == other  # compared against the champion at decision time
    assert result.decision == "promoted" and read_champion(registry_copy.root) == "d"


def test_tampered_champion_does_not_block_a_good_challenger(registry_copy, drift_data, tmp_path):
    champion = registry_copy.champion()
    src_dir = tmp_path / "src"
    shutil.copytree(registry_copy.path(champion), src_dir)
    onnx = registry_copy.path(champion) / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"x")
    result = run_retrain(
        registry_copy.root, drift_data, CONFIG, now_day=NOW_V2, trainer=copy_of(ModelDir.load(src_dir), "e")
    )
    assert result.decision == "promoted" and "champion unusable" in result.reason
    assert result.extra["champion_problem"] and "model.onnx" in result.extra["champion_problem"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "lock" not in p.name
    }


def test_bad_input_exits_2_and_leaves_the_registry_unchanged(registry_copy, drift_data, tmp_path, capsys):
    root = str(registry_copy.root)
    before = snapshot(registry_copy.root)
    base = ["retrain", "--registry", root, "--data", str(drift_data), "--max-epochs", "1"]
    cases = [
        (["--once", "--now", format_day(day(DAYS + 30))], "the data ends on 2026-03-21"),
        (["--once", "--now", format_day(day(20))], "use a shorter --train-days"),
        (["--once", "--now", "2026-13-01"], "--now: expected a date"),
        (["--once", "--train-days", "7"], "--train-days (7) must be longer than --valid-days (7)"),
        (["--once", "--columns", "amount=nope"], "column 'nope' (mapped from 'amount'"),
        (["--schedule", "61 * * * *"], "invalid cron expression '61 * * * *'"),
        (["--schedule", "not cron"], "invalid cron expression"),
        (["--schedule", "0 3 * * *", "--now", "2026-03-01"], "--now applies to --once"),
        (["--once", "--tolerance", "-1"], "--tolerance must be in [0, 1.0]"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    with pytest.raises(SystemExit) as exc:  # neither --once nor --schedule: argparse says so
        main(["retrain", "--registry", root, "--data", str(drift_data)])
    assert exc.value.code == 2
    capsys.readouterr()
    assert snapshot(registry_copy.root) == before
    # a registry that does not exist yet is not created by a failed run
    fresh = tmp_path / "new-registry"
    assert (
        main(
            [
                "retrain",
                "--registry",
                str(fresh),
                "--data",
                str(drift_data),
                "--once",
                "--now",
                format_day(day(DAYS + 30)),
            ]
        )
        == 2
    )
    assert not fresh.exists()


def test_store_without_labels_exits_2(tmp_path, drift_data, capsys):
    from fraudlite.pipeline.label_store import LabelStore

    df = load_transactions(drift_data)
    store = LabelStore(tmp_path / "store", create=True)
    import pandas as pd

    store.write(
        pd.DataFrame(
            {
                "tx_id": df["tx_id"][:500],
                "timestamp": pd.to_datetime(df["ts"][:500], unit="s", utc=True).astype("datetime64[ms, UTC]"),
                "customer_id": df["customer_id"][:500],
                "terminal_id": df["terminal_id"][:500],
                "amount": df["amount"][:500],
            }
        )
    )
    reg = tmp_path / "reg"
    assert main(["retrain", "--registry", str(reg), "--data", str(tmp_path / "store"), "--once"]) == 2
    assert "no labels yet" in capsys.readouterr().err
    assert not reg.exists()
    assert main(["retrain", "--registry", str(reg), "--data", str(tmp_path / "empty-dir"), "--once"]) == 2


def test_cli_once_prints_the_decision_as_json(tmp_path, drift_data, capsys):
    reg = tmp_path / "reg"
    argv = [
        "-q",
        "retrain",
        "--registry",
        str(reg),
        "--data",
        str(drift_data),
        "--once",
        "--now",
        format_day(NOW_V1),
    ]
    assert main(argv + ["--model-type", "logreg", "--train-days", "21", "--no-compress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "promoted" and out["new_champion"] == read_champion(reg)
    assert out["compression"] == {"status": "skipped"}
    assert out["windows"]["train_start"] == format_day(NOW_V1 - 7 - 21 + 1)
    assert set(out["metrics"]["challenger"]) >= {
        "average_precision",
        "roc_auc",
        "card_precision_at_100",
        "n",
        "n_fraud",
    }
    assert main(["registry", "--root", str(reg), "verify"]) == 0


def test_windows_and_decision_rule():
    w = RetrainWindows.for_now(day(40), RetrainConfig(train_days=28, valid_days=7, delay_days=7))
    assert (w.valid_end, w.valid_start, w.fit_end, w.train_start) == (day(33), day(27), day(26), day(6))
    assert decide({"average_precision": 0.5}, None, tolerance=0.005)[0] == "promoted"
    assert decide({"average_precision": 0.796}, {"average_precision": 0.8}, tolerance=0.005)[0] == "promoted"
    verdict, reason = decide({"average_precision": 0.79}, {"average_precision": 0.8}, tolerance=0.005)
    assert verdict == "rejected" and "0.0100 below champion 0.8000" in reason
    verdict, reason = decide({"average_precision": 0.9}, None, tolerance=0.005, guardrail_failures=["x"])
    assert verdict == "rejected" and reason == "guardrail: x"
    assert decide({"average_precision": float("nan")}, None, tolerance=0.0)[0] == "rejected"
    with pytest.raises(ConfigError, match="--max-ap-drop"):
        RetrainConfig(max_ap_drop=2)
    with pytest.raises(ConfigError, match="--recipe"):
        RetrainConfig(recipe="/nonexistent.toml")
    with pytest.raises(DataError):
        run_retrain("unused", "unused.parquet", RetrainConfig(), frame=None, now_day=day(40))


# --- end to end: a running `fraudlite serve --registry` picks up the scheduled retrain's promotion ------

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
    ap_v1 = evaluate_scores(df, score_frame(reg.load(v1_id), df), mask)["average_precision"]
    ap_v2_offline = evaluate_scores(df, score_frame(reg.load(v2_id), df), mask)["average_precision"]
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
                f" (compact {compression['report']['compact_ratio']:.0f}x, runnable "
                f"{compression['report']['runnable_ratio']:.1f}x smaller, AP drop {compression['report']['ap_drop']:+.4f})"
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
