"""Out-of-core features: equal to ``compute_features`` bit for bit, in bounded memory, errors named."""

import json

import numpy as np
import pandas as pd
import pytest

from fraudlite.data.feature_store import FeatureStore
from fraudlite.data.out_of_core import (
    DEFAULT_MEMORY_LIMIT,
    PARTITION_ROW_BYTES,
    Plan,
    build_feature_store,
    parse_memory,
)
from fraudlite.data.parquet_scan import fit_extras, input_files
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import load_transactions, parse_day, to_arrays
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import parse_extra_columns
from fraudlite.features.offline import compute_features
from fraudlite.features.spec import FeatureSpec
from fraudlite.models.training import TrainConfig, training_spec

EXTRAS = "device_score:numeric,channel:categorical,card_present:bool,merchant_id:categorical:16"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """~9k rows with ties in time, extra columns (missing values too) and labels."""
    df = simulate(SimulatorConfig(n_customers=60, n_terminals=120, n_days=40, seed=5)).drop(
        columns="scenario"
    )
    rng = np.random.default_rng(0)
    ties = rng.choice(len(df) - 1, 800, replace=False)
    df.loc[ties + 1, "timestamp"] = df.loc[ties, "timestamp"].to_numpy()  # same second as the row before
    df.loc[ties[:200] + 1, "customer_id"] = df.loc[ties[:200], "customer_id"].to_numpy()  # same customer too
    n = len(df)
    df["device_score"] = np.where(rng.random(n) < 0.2, np.nan, rng.random(n))
    df["channel"] = rng.choice(["pos", "ecom", "atm"], n)
    df["card_present"] = rng.random(n) < 0.5
    df["merchant_id"] = rng.integers(0, 300, n)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # not in time order


def _split(df: pd.DataFrame, folder, parts: int = 3):
    """Rows cut into files at arbitrary places: customers span files."""
    folder.mkdir()
    cuts = np.linspace(0, len(df), parts + 1).astype(int)
    for i in range(parts):
        df.iloc[cuts[i] : cuts[i + 1]].to_parquet(folder / f"part-{i:02d}.parquet", index=False)
    return folder


def _expected(df: pd.DataFrame, spec: FeatureSpec, tmp_path, label: bool = True) -> np.ndarray:
    path = tmp_path / "whole.parquet"
    (df if label else df.drop(columns="label")).to_parquet(path, index=False)
    return compute_features(spec, to_arrays(spec, load_transactions(path, extras=spec.extra_columns)))


def _spec(df: pd.DataFrame, tmp_path) -> FeatureSpec:
    path = tmp_path / "fit.parquet"
    df.to_parquet(path, index=False)
    extras = parse_extra_columns(EXTRAS)
    config = TrainConfig(parse_day("2026-01-05", "s"), parse_day("2026-02-05", "e"))
    return training_spec(load_transactions(path, extras=extras), config, extras)


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_equals_compute_features_exactly(frame, tmp_path, partitions):
    spec = _spec(frame, tmp_path)
    data = _split(frame, tmp_path / "in", parts=4)
    plan = Plan(0, DEFAULT_MEMORY_LIMIT, partitions, 10**6, batch_rows=1_000, bucket_rows=2_500)
    store = build_feature_store(data, spec, tmp_path / "store", plan=plan, progress=lambda _m: None)
    got = np.load(store.path / "features.npy")
    want = _expected(frame, spec, tmp_path)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(frame), spec.n_features)
    assert np.array_equal(got, want)  # bit for bit, extras included
    assert np.array_equal(store.column("label"), frame["label"].to_numpy())
    assert np.array_equal(
        store.column("day"), frame["timestamp"].to_numpy().astype("datetime64[D]").astype(int)
    )
    # The store's customer column groups rows as the ids do.
    codes = pd.factorize(frame["customer_id"])[0]
    assert len(np.unique(store.column("customer"))) == codes.max() + 1
    assert (pd.Series(store.column("customer")).groupby(codes).nunique() == 1).all()
    blocks = list(store.blocks(block_rows=1_234))
    assert np.array_equal(np.concatenate([b.X for b in blocks]), want)
    assert [b.start for b in blocks] == list(range(0, len(frame), 1_234))


def test_without_labels_terminal_risk_is_zero(frame, tmp_path):
    spec = FeatureSpec()
    data = _split(frame.drop(columns="label"), tmp_path / "in")
    store = build_feature_store(data, spec, tmp_path / "store", require_label=False, progress=lambda _m: None)
    assert not store.has_label
    assert np.array_equal(np.load(store.path / "features.npy"), _expected(frame, spec, tmp_path, label=False))


def test_fit_extras_streamed_equals_in_memory(frame, tmp_path):
    data = _split(frame, tmp_path / "in")
    got = fit_extras(
        data,
        None,
        parse_extra_columns(EXTRAS),
        parse_day("2026-01-05", "s"),
        parse_day("2026-01-29", "e"),
        batch_rows=700,
    )
    assert got == _spec(frame, tmp_path).extra_columns


def test_partitions_respect_the_memory_limit(frame, tmp_path):
    plan = Plan.for_rows(20_000_000, parse_memory("2G"), 20)
    assert plan.partitions * plan.partition_rows >= 1.2 * 20_000_000
    assert plan.partition_rows * PARTITION_ROW_BYTES <= parse_memory("2G")
    assert Plan.for_rows(20_000_000, parse_memory("1G"), 20).partitions > plan.partitions
    # A real build: the largest partition stays within the plan's bound, and the build records it.
    data = _split(frame, tmp_path / "in")
    tight = Plan(0, DEFAULT_MEMORY_LIMIT, 6, int(1.2 * len(frame) / 6 * 1.5), 2_000, 3_000)
    store = build_feature_store(data, FeatureSpec(), tmp_path / "store", plan=tight, progress=lambda _m: None)
    build = json.loads((store.path / "store.json").read_text())["build"]
    assert 0 < max(build["max_partition_rows"].values()) <= tight.partition_rows
    assert not (store.path / "spill").exists()


def test_memory_sizes_parse():
    assert parse_memory("2G") == 2 * 2**30 and parse_memory("1500M") == 1500 * 2**20
    assert parse_memory("800MiB") == 800 * 2**20 and parse_memory("1.5GB") == int(1.5 * 2**30)
    with pytest.raises(ConfigError, match="--memory-limit"):
        parse_memory("lots")
    with pytest.raises(ConfigError, match="too small"):
        Plan.for_rows(10, parse_memory("300M"), 20)


def test_duplicate_ids_across_files_are_named(frame, tmp_path):
    df = frame.copy()
    df.loc[len(df) - 1, "tx_id"] = df.loc[0, "tx_id"]
    data = _split(df, tmp_path / "in")
    with pytest.raises(
        DataError, match=r"duplicate ids in 1 row\(s\).*part-02.parquet:\d+ .*first at part-00.parquet:1"
    ):
        build_feature_store(data, FeatureSpec(), tmp_path / "store", progress=lambda _m: None)
    assert not (tmp_path / "store").exists() and list(tmp_path.glob(".store*")) == []


def test_bad_values_name_file_and_rows(frame, tmp_path):
    df = frame.copy()
    df["amount"] = df["amount"].astype(object)
    df.loc[len(df) - 2, "amount"] = "lots"
    data = _split(df.astype({"amount": str}), tmp_path / "in")
    with pytest.raises(
        DataError, match=r"part-02.parquet \(rows .*column 'amount' \(amount\): missing or non-numeric"
    ):
        build_feature_store(data, FeatureSpec(), tmp_path / "store", progress=lambda _m: None)
    with pytest.raises(DataError, match="missing column 'label'"):
        build_feature_store(
            _split(frame.drop(columns="label"), tmp_path / "nolabel"), FeatureSpec(), tmp_path / "s"
        )


def test_inputs(tmp_path):
    with pytest.raises(DataError, match="without .parquet files"):
        input_files(tmp_path)
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match=".parquet file or a directory"):
        input_files(tmp_path / "x.csv")
    for name in ("b/2.parquet", "a.parquet", "b/10.parquet", "_tmp/1.parquet", ".hidden.parquet"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in input_files(tmp_path)] == [
        "a.parquet",
        "b/10.parquet",
        "b/2.parquet",
    ]


def test_store_refuses_other_formats(tmp_path):
    with pytest.raises(DataError, match="not a feature store"):
        FeatureStore.open(tmp_path)
