"""``fraudlite score --explain``: reason columns for the rows at or above the model's alert threshold, on a
real trained model; the same reasons ``serve`` gives (``monitoring.reasons`` over the same features)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fraudlite.cli import main


@pytest.fixture(scope="module")
def trained(train_small):
    return train_small("score-explain", 3)


def test_score_explain_writes_reason_columns_for_alerted_rows(trained, tmp_path):
    from fraudlite.compression.served import open_model
    from fraudlite.data.transactions import load_transactions
    from fraudlite.models.evaluation import features_for
    from fraudlite.monitoring.reasons import explain_rows

    data, model = trained
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(out), "--explain"]) == 0
    table = pd.read_csv(out, keep_default_na=False, dtype={"tx_id": str})
    assert list(table.columns) == ["tx_id", "score", "reason_1", "reason_2", "reason_3"]
    served = open_model(model)
    df = load_transactions(data, {}, require_label=True)
    assert table["tx_id"].tolist() == df["tx_id"].tolist()
    X = features_for(served.spec, df).astype(np.float32)
    scores = served.score(X)
    alerted = scores >= served.model_dir.alert_threshold
    assert alerted.sum() >= 10
    reasons = table[["reason_1", "reason_2", "reason_3"]].to_numpy()
    assert (reasons[~alerted] == "").all(), "rows below the alert threshold get no reasons"
    assert (reasons[alerted, 0] != "").all(), "every alerted row gets at least one reason"
    rows = np.flatnonzero(alerted)
    expected = explain_rows(served.log_odds, X[rows], served.normalization()[0], served.spec.names)
    for i, why in zip(rows.tolist(), expected, strict=True):
        texts = [r.text for r in why] + [""] * (3 - len(why))
        assert reasons[i].tolist() == texts


def test_score_without_explain_is_unchanged(trained, tmp_path):
    data, model = trained
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
    assert list(pd.read_csv(out).columns) == ["tx_id", "score"]


def test_score_help_says_which_rows_get_reasons():
    out = subprocess.run(
        [sys.executable, "-m", "fraudlite", "score", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    assert "--explain" in out.stdout and "alert threshold" in " ".join(out.stdout.split())
