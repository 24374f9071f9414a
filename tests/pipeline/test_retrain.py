"""Retrain job: windows, champion/challenger decision, drift recovery, guardrails, locking, bad input."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from retrain_support import CONFIG, DAYS, DRIFT_DAY, NOW_V1, NOW_V2, day

from fraudlite.cli import main
from fraudlite.compression.served import open_model
from fraudlite.data.transactions import format_day, load_transactions
from fraudlite.errors import ConfigError, DataError, FraudliteError
from fraudlite.modeldir import ModelDir, write_model_dir
from fraudlite.models.evaluation import evaluate_window
from fraudlite.models.training import train_model
from fraudlite.pipeline.registry import Registry, RegistryBusyError, read_champion
from fraudlite.pipeline.retrain import (
    RetrainConfig,
    RetrainWindows,
    decide,
    run_retrain,
)


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
    drift_share = evaluate_window(open_model(v1), df, day(DAYS - 7), day(DAYS - 1))["n_fraud"]
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
    with pytest.raises(ConfigError, match="--alert-budget"):
        RetrainConfig(alert_budget="lots")
    budgeted = RetrainConfig(alert_budget="300/day")
    assert RetrainWindows.for_now(day(40), budgeted).train_config(budgeted).alert_budget == "300/day"
    with pytest.raises(DataError):
        run_retrain("unused", "unused.parquet", RetrainConfig(), frame=None, now_day=day(40))
