"""The CLI contract end to end on small generated data: generate -> train -> evaluate -> score."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from fraudlite.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "fraudlite", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tx.csv"
    r = run(
        "generate",
        "--out",
        str(path),
        "--customers",
        "300",
        "--terminals",
        "600",
        "--days",
        "75",
        "--seed",
        "7",
    )
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    r = run(
        "train",
        "--data",
        str(small_data),
        "--train-start",
        "2026-01-31",
        "--train-end",
        "2026-02-28",
        "--max-epochs",
        "3",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    return out


def test_generate_writes_the_contract_columns(small_data):
    df = pd.read_csv(small_data)
    assert list(df.columns)[:6] == ["tx_id", "timestamp", "customer_id", "terminal_id", "amount", "label"]
    assert df["tx_id"].is_unique and df["timestamp"].is_monotonic_increasing


def test_train_writes_a_complete_model_dir(trained):
    from fraudlite.modeldir import ModelDir

    manifest = json.loads((trained / "manifest.json").read_text())
    assert {e["role"] for e in manifest["files"].values()} == {"onnx", "spec"}  # what serves
    kinds = {e["role"]: e["kind"] for e in ModelDir.load(trained).entries().values()}
    assert kinds == {"onnx": "serve", "spec": "serve", "weights": "train", "report": "doc", "plot": "doc"}
    assert manifest["data_window"]["train_start"] == "2026-01-31"
    assert 0 < manifest["threshold"] < 1
    monitoring = manifest["monitoring"]  # calibrated scores, the drift reference, no budget unless asked
    assert monitoring["calibration"]["method"] == "platt" and monitoring["calibration"]["a"] > 0
    assert "reference" in monitoring and "alert_budget_per_1k" not in monitoring
    report = json.loads((trained / "metrics.json").read_text())["calibration"]
    assert report["ece_calibrated"] < report["ece_raw"]
    assert (trained / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_train_alert_budget_sets_the_alert_threshold(small_data, tmp_path):
    out = tmp_path / "budget"
    r = run("train", "--data", str(small_data), "--train-start", "2026-01-31", "--train-end", "2026-02-27",
            "--max-epochs", "2", "--alert-budget", "20/1k", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    from fraudlite.compression.served import open_model
    from fraudlite.data.transactions import load_transactions, parse_day, window_mask
    from fraudlite.models.evaluation import features_for

    served = open_model(out)
    assert served.alert_budget_per_1k == 20.0
    w = served.manifest["data_window"]
    df = load_transactions(str(small_data), {})
    valid = window_mask(df, parse_day(w["valid_start"], "v"), parse_day(w["valid_end"], "v"), "v")
    scores = served.score(features_for(served.spec, df)[valid])
    alerts_per_1k = 1000 * (scores >= served.manifest["alert_threshold"]).mean()
    assert 15 <= alerts_per_1k <= 20  # at most the budget, and close to it


def test_train_bad_alert_budget_exits_2_and_writes_nothing(small_data, tmp_path):
    out = tmp_path / "bad"
    r = run("train", "--data", str(small_data), "--train-start", "2026-01-31", "--train-end", "2026-02-27",
            "--alert-budget", "5/week", "--out", str(out))  # fmt: skip
    assert r.returncode == 2 and "--alert-budget" in r.stderr
    assert not out.exists()


def test_evaluate_prints_one_json_object(small_data, trained):
    r = run(
        "evaluate",
        "--model",
        str(trained),
        "--data",
        str(small_data),
        "--start",
        "2026-03-08",
        "--end",
        "2026-03-16",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("roc_auc", "average_precision", "card_precision_at_100", "n", "n_fraud"):
        assert key in result
    assert result["n_fraud"] > 0 and result["roc_auc"] > 0.7


def test_score_writes_every_row(small_data, trained, tmp_path):
    out = tmp_path / "scores.csv"
    r = run("score", "--model", str(trained), "--data", str(small_data), "--out", str(out))
    assert r.returncode == 0, r.stderr
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["tx_id", "score"]
    assert len(scores) == len(pd.read_csv(small_data))
    assert scores["score"].between(0, 1).all()


def test_bad_column_mapping_exits_2_naming_it_and_leaves_no_model(small_data, tmp_path):
    out = tmp_path / "never"
    r = run(
        "train",
        "--data",
        str(small_data),
        "--columns",
        "amount=amt_eur",
        "--train-start",
        "2026-01-31",
        "--train-end",
        "2026-02-28",
        "--out",
        str(out),
    )
    assert r.returncode == 2
    assert "'amt_eur'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_single_class_and_empty_windows_exit_2(small_data, tmp_path, capsys):
    no_fraud = tmp_path / "nofraud.csv"
    pd.read_csv(small_data).assign(label=0).to_csv(no_fraud, index=False)
    window = ["--train-start", "2026-01-31", "--train-end", "2026-02-28", "--out", str(tmp_path / "m")]
    assert main(["train", "--data", str(no_fraud), *window]) == 2
    assert "single class" in capsys.readouterr().err
    late = ["--train-start", "2027-01-01", "--train-end", "2027-02-01", "--out", str(tmp_path / "m")]
    assert main(["train", "--data", str(small_data), *late]) == 2
    assert "holds no transactions" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nofraud.csv"]


def test_failed_training_leaves_no_directory(small_data, tmp_path, monkeypatch):
    import fraudlite.models.training as training

    def crash(*a, **k):
        raise RuntimeError("killed mid-train")

    monkeypatch.setattr(training, "fit_arrays", crash)
    with pytest.raises(RuntimeError):
        main(
            [
                "train",
                "--data",
                str(small_data),
                "--train-start",
                "2026-01-31",
                "--train-end",
                "2026-02-28",
                "--out",
                str(tmp_path / "m"),
            ]
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            [
                "evaluate",
                "--model",
                "/nonexistent",
                "--data",
                "x.csv",
                "--start",
                "2026-01-01",
                "--end",
                "2026-01-02",
            ],
            "not a model directory",
        ),
        (
            [
                "train",
                "--data",
                "x.csv",
                "--train-start",
                "2026-13-01",
                "--train-end",
                "2026-01-02",
                "--out",
                "o",
            ],
            "--train-start",
        ),
        (["generate", "--out", "x.txt"], "--out"),
        (["train", "--bogus"], "required"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_every_command_has_help():
    r = run("--help")
    assert r.returncode == 0
    commands = ["generate", "train", "evaluate", "score", "demo"]
    for c in commands:
        assert c in r.stdout
        assert run(c, "--help").returncode == 0
