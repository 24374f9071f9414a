"""``fraudlite features``: both engines write the features ``compute_features`` gives, with tx_id, in input
order; Spark (local mode, a real session) equals the local engine; bad input exits 2 and writes nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraudlite.cli import main
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import load_transactions, to_arrays
from fraudlite.features.extras import canonical_values, fit_extra_columns, parse_extra_columns
from fraudlite.features.offline import compute_features
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import SPEC_FILE


def _data(n_customers=150, days=35, seed=3, extra=False) -> pd.DataFrame:
    cfg = SimulatorConfig(
        n_customers=n_customers, n_terminals=2 * n_customers, n_days=days, seed=seed, extra_attributes=extra
    )
    return simulate(cfg).drop(columns=["scenario"])


def _features(path) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    t = pq.read_table(path)
    names = [n for n in t.schema.names if n not in ("tx_id", "label")]
    return names, np.stack([t.column(n).to_numpy() for n in names], axis=1), t.to_pandas()


def _expected(spec: FeatureSpec, source) -> tuple[np.ndarray, pd.DataFrame]:
    df = load_transactions(source, extras=spec.extra_columns)
    return compute_features(spec, to_arrays(spec, df)), df


def _write_dir(df: pd.DataFrame, folder, parts=3) -> None:
    folder.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), parts)):
        df.iloc[chunk].to_parquet(folder / f"part-{i}.parquet", index=False)


def test_local_directory_out_of_core_equals_in_memory(tmp_path):
    df = _data()
    df.loc[df.index[10:20], "timestamp"] = df["timestamp"].iloc[10]  # ties in time: input order decides
    _write_dir(df, tmp_path / "in")
    out = tmp_path / "f.parquet"
    assert (
        main(["features", "--data", str(tmp_path / "in"), "--out", str(out), "--memory-limit", "600M"]) == 0
    )
    spec = FeatureSpec()
    expected, frame = _expected(spec, tmp_path / "in")
    names, X, got = _features(out)
    assert names == spec.names
    assert got["tx_id"].tolist() == frame["tx_id"].tolist()
    assert got["label"].tolist() == frame["label"].tolist()
    np.testing.assert_array_equal(X, expected)


def test_local_csv_in_memory_and_delay_days(tmp_path):
    df = _data(days=20)
    df.drop(columns=["label"]).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "f.parquet"
    assert main(["features", "--data", str(tmp_path / "d.csv"), "--out", str(out), "--delay-days", "3"]) == 0
    expected, frame = _expected(FeatureSpec(delay_days=3), tmp_path / "d.csv")
    names, X, got = _features(out)
    assert "label" not in got and got["tx_id"].tolist() == frame["tx_id"].tolist()
    np.testing.assert_array_equal(X, expected)
    assert not np.array_equal(X, _expected(FeatureSpec(), tmp_path / "d.csv")[0])  # the delay is used


def test_a_glob_of_parquet_files_is_read_in_memory(tmp_path):
    df = _data(days=12)
    _write_dir(df, tmp_path / "in", parts=2)
    out = tmp_path / "f.parquet"
    assert main(["features", "--data", str(tmp_path / "in" / "part-*.parquet"), "--out", str(out)]) == 0
    np.testing.assert_array_equal(_features(out)[1], _expected(FeatureSpec(), tmp_path / "in")[0])


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    _data(days=10).drop(columns=["amount"]).to_parquet(tmp_path / "d.parquet", index=False)
    out = tmp_path / "f.parquet"
    assert main(["features", "--data", str(tmp_path / "d.parquet"), "--out", str(out)]) == 2
    assert "amount" in capsys.readouterr().err
    assert main(["features", "--data", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "f.csv")]) == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


def _spec_with_extras(df: pd.DataFrame) -> FeatureSpec:
    declared = parse_extra_columns(
        "channel:categorical,card_present:bool,device_score:numeric,merchant_id:categorical"
    )
    values = {c.name: canonical_values(c, df[c.name].tolist())[0] for c in declared}
    return FeatureSpec(extra_columns=fit_extra_columns(declared, values))


def test_spark_equals_local(tmp_path):
    """A real local-mode Spark session over a directory of Parquet files with extra columns."""
    df = _data(n_customers=120, days=40, seed=5, extra=True)
    _write_dir(df, tmp_path / "in", parts=2)
    spec = _spec_with_extras(df)
    model = tmp_path / "model"
    model.mkdir()
    (model / SPEC_FILE).write_text("")  # not a model directory: --model is refused by name
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    data = str(tmp_path / "in")
    from fraudlite.data.feature_export import export_features

    export_features(data, spec, local)
    summary = export_features(data, spec, spark, engine="spark")
    assert summary["rows"] == len(df) and summary["spark_master"].startswith("local")
    names_l, X_l, got_l = _features(local)
    names_s, X_s, got_s = _features(spark)
    assert names_l == names_s == spec.names and len(spec.names) > 30
    assert got_l["tx_id"].tolist() == got_s["tx_id"].tolist() == df["tx_id"].astype(str).tolist()
    assert np.abs(X_l - X_s).max() <= 1e-5
    np.testing.assert_array_equal(X_l, _expected(spec, data)[0])
    assert (
        main(["features", "--data", data, "--out", str(tmp_path / "x.parquet"), "--model", str(model)]) == 2
    )


def test_spark_csv_and_bad_values(tmp_path, capsys):
    """A CSV goes through the driver; a bad value found by a Spark task is one line naming its column."""
    df = _data(n_customers=60, days=20, seed=8)
    df.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "f.parquet"
    assert main(["features", "--data", str(tmp_path / "d.csv"), "--out", str(out), "--engine", "spark"]) == 0
    np.testing.assert_array_equal(_features(out)[1], _expected(FeatureSpec(), tmp_path / "d.csv")[0])
    df["amount"] = df["amount"].astype(str)
    df.loc[df.index[7], "amount"] = "n/a"
    df.to_parquet(tmp_path / "bad.parquet", index=False)
    bad_out = tmp_path / "bad-out.parquet"
    args = ["features", "--data", str(tmp_path / "bad.parquet"), "--out", str(bad_out), "--engine", "spark"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'amount'" in err and "rows 8" in err and "Traceback" not in err
    assert not bad_out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_help_names_the_engines(engine, capsys):
    with pytest.raises(SystemExit):
        main(["features", "--help"])
    assert engine in capsys.readouterr().out
