"""``train --extra-columns`` end to end through the CLI: the model gains from signals the six core columns
do not carry, every command reads them from the spec, bad input exits 2 naming the column and writes
nothing, and a short window trains with default flags."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

EXTRAS = "chan:categorical,dev:numeric,cp:bool"
TRAIN = ("--train-start", "2026-01-31", "--train-end", "2026-02-28", "--max-epochs", "6", "--seed", "1")
TEST_WINDOW = ("--start", "2026-03-08", "--end", "2026-03-16")


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "fraudlite", "-q", *args], capture_output=True, text=True, timeout=600
    )


def with_signals(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Three columns a bank might have, noisy and overlapping, in which fraud leaves a trace."""
    rng = np.random.default_rng(seed)
    y = df["label"].to_numpy().astype(bool)
    n = len(df)
    out = df.copy()
    ecom = rng.random(n) < np.where(y, 0.6, 0.2)
    out["chan"] = np.where(ecom, "ecom", rng.choice(["pos", "atm", "moto"], n, p=[0.8, 0.15, 0.05]))
    dev = np.clip(rng.normal(np.where(y, 0.6, 0.35), 0.2), 0, 1).round(3)
    out["dev"] = np.where(rng.random(n) < 0.3, np.nan, dev)
    out["cp"] = np.where(rng.random(n) < np.where(y, 0.35, 0.8), "yes", "No")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    plain = root / "plain.csv"
    r = run("generate", "--out", str(plain), "--customers", "400", "--terminals", "800", "--days", "75",
            "--seed", "7")  # fmt: skip
    assert r.returncode == 0, r.stderr
    path = root / "tx.csv"
    with_signals(pd.read_csv(plain, dtype={"tx_id": str})).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("extras-models")
    out = {}
    for name, extra in (("with", ("--extra-columns", EXTRAS)), ("without", ())):
        out[name] = root / name
        r = run("train", "--data", str(data), *TRAIN, *extra, "--out", str(out[name]))
        assert r.returncode == 0, r.stderr
    return out


def evaluate(model, data) -> dict:
    r = run("evaluate", "--model", str(model), "--data", str(data), *TEST_WINDOW)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_extra_columns_raise_test_ap_by_at_least_0_02(models, data):
    with_, without = evaluate(models["with"], data), evaluate(models["without"], data)
    print(
        f"[extras] test AP with {with_['average_precision']:.4f} vs without {without['average_precision']:.4f}"
    )
    assert with_["average_precision"] >= without["average_precision"] + 0.02


def test_the_spec_records_the_extras_and_score_reads_them(models, data, tmp_path):
    spec = json.loads((models["with"] / "feature_spec.json").read_text())["spec"]
    assert [(c["name"], c["kind"], c["encoding"]) for c in spec["extra_columns"]] == [
        ("chan", "categorical", "onehot"),
        ("dev", "numeric", "value"),
        ("cp", "bool", "value"),
    ]
    assert spec["names"][-7:] == ["chan=atm", "chan=ecom", "chan=moto", "chan=pos", "chan=<other>", "dev",
                                  "dev_missing", "cp"][-7:]  # fmt: skip
    out = tmp_path / "s.csv"
    r = run("score", "--model", str(models["with"]), "--data", str(data), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) == len(pd.read_csv(data, usecols=["tx_id"]))


def test_indicator_inputs_are_centred_but_not_scaled(models):
    """One-hot, bool and missing-flag inputs keep unit scale in the model (a rare category's column
    divided by its std would reach ~1/sqrt(share)); the numeric value and the built-in inputs are scaled."""
    from fraudlite.compression.served import open_model

    served = open_model(models["with"])
    mean, std = served.normalization()
    names, flags = served.spec.names, served.spec.indicator_inputs
    assert [n for n, f in zip(names, flags, strict=True) if f] == [
        "chan=atm", "chan=ecom", "chan=moto", "chan=pos", "chan=<other>", "dev_missing", "cp",
    ]  # fmt: skip
    np.testing.assert_array_equal(std[flags], 1.0)
    assert np.all(std[~flags] != 1.0)
    share = mean[names.index("chan=ecom")]
    assert 0.2 < share < 0.4  # centred on its training share: the reason codes' reference stays the mean


def test_columns_maps_an_extra_column_like_a_core_one(models, data, tmp_path):
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(data, dtype={"tx_id": str}).rename(columns={"dev": "device_risk"}).to_csv(
        renamed, index=False
    )
    direct = evaluate(models["with"], data)
    r = run("evaluate", "--model", str(models["with"]), "--data", str(renamed), "--columns", "dev=device_risk",
            *TEST_WINDOW)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["average_precision"] == direct["average_precision"]
    r = run("evaluate", "--model", str(models["with"]), "--data", str(renamed), *TEST_WINDOW)
    assert r.returncode == 2 and "missing column 'dev'" in r.stderr


@pytest.mark.parametrize(
    "change, extras, needle",
    [
        (None, "nope:numeric", "missing column 'nope'"),
        (
            "text_in_numeric",
            EXTRAS,
            "column 'dev' (numeric extra column dev): non-numeric values in 1 row(s)",
        ),
        ("one_value", EXTRAS, "column 'chan' (categorical extra column chan): a single value ('pos')"),
        ("bad_bool", EXTRAS, "column 'cp' (bool extra column cp): values that are not true/false"),
        (None, "chan:colour", "--extra-columns: chan: kind must be one of"),
    ],
)
def test_bad_extra_columns_exit_2_with_one_line_and_write_nothing(data, tmp_path, change, extras, needle):
    path = data
    if change:
        df = pd.read_csv(data, dtype={"tx_id": str, "chan": str, "cp": str})
        if change == "text_in_numeric":
            df["dev"] = df["dev"].astype(object)
            df.loc[5, "dev"] = "high"
        elif change == "one_value":
            df["chan"] = "pos"
        else:
            df.loc[3, "cp"] = "maybe"
        path = tmp_path / "bad.csv"
        df.to_csv(path, index=False)
    out = tmp_path / "m"
    r = run("train", "--data", str(path), *TRAIN, "--extra-columns", extras, "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists() and not any(p.name.startswith(".m") for p in tmp_path.iterdir())


def test_a_seven_day_window_trains_with_default_flags(data, tmp_path):
    out = tmp_path / "week"
    r = subprocess.run(
        [sys.executable, "-m", "fraudlite", "train", "--data", str(data), "--train-start", "2026-02-22",
         "--train-end", "2026-02-28", "--max-epochs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "validating on 2026-02-27..2026-02-28 (2 days: the default" in r.stderr
    window = json.loads((out / "manifest.json").read_text())["data_window"]
    assert (window["train_end"], window["valid_start"]) == ("2026-02-26", "2026-02-27")
