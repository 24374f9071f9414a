"""Training past memory: r = 1 is the in-memory model; downsampling is reweighted and stays calibrated."""

import numpy as np
import pytest

from fraudlite.compression.served import open_model
from fraudlite.data.out_of_core import BASE_BYTES, build_feature_store, parse_memory
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import load_transactions, parse_day
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.spec import FeatureSpec
from fraudlite.models.metrics import average_precision
from fraudlite.models.streamed import (
    DEFAULT_MAX_TRAIN_ROWS,
    StreamConfig,
    WindowCounts,
    choose_negative_rate,
    epoch_scale,
    keep_legit,
    should_stream,
    train_streamed,
)
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model, training_spec

DAYS = 90
FIRST = parse_day("2026-01-01", "first")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """~88k rows, ~570 frauds over 90 days, as two Parquet files (customers span them)."""
    root = tmp_path_factory.mktemp("streamed")
    df = simulate(SimulatorConfig(n_customers=500, n_terminals=1000, n_days=DAYS, seed=11)).drop(
        columns="scenario"
    )
    (root / "dir").mkdir()
    df.iloc[: len(df) // 2].to_parquet(root / "dir" / "a.parquet", index=False)
    df.iloc[len(df) // 2 :].to_parquet(root / "dir" / "b.parquet", index=False)
    df.to_parquet(root / "one.parquet", index=False)
    store = build_feature_store(root / "dir", FeatureSpec(), root / "store", progress=lambda _m: None)
    return root, store


def _config(**kw) -> TrainConfig:
    return TrainConfig(FIRST + 30, FIRST + DAYS - 22, **kw)


def test_rate_one_is_the_in_memory_model_bit_for_bit(data, tmp_path):
    root, _ = data
    config = _config(max_epochs=2)
    df = load_transactions(root / "one.parquet", require_label=True)
    spec = training_spec(df, config)
    memory = train_model(prepare_training_data(df, config, spec), config, spec, tmp_path / "memory")
    streamed = train_streamed(root / "dir", None, config, tmp_path / "streamed", progress=lambda _m: None)
    assert streamed.manifest["training"]["negative_rate"] == 1.0
    assert (tmp_path / "memory" / "model.onnx").read_bytes() == (
        tmp_path / "streamed" / "model.onnx"
    ).read_bytes()
    for key in ("threshold", "alert_threshold", "n_train", "n_valid", "monitoring"):
        assert memory.manifest[key] == streamed.manifest[key], key
    assert memory.manifest["metrics"]["validation"] == streamed.manifest["metrics"]["validation"]
    assert memory.spec == streamed.spec


def _test_window(store):
    day, y = store.column("day"), store.column("label")
    rows = day >= FIRST + DAYS - 14
    X = np.concatenate([b.X for b in store.blocks()])[rows]
    return X, y[rows]


def test_downsampling_is_reweighted_and_calibrated(data, tmp_path):
    """r = 0.2: every fraud kept, legit rows at ~0.2; the raw scores match r = 1's on average (kept legit
    rows weigh 1/r), the calibrated mean probability on an untouched test window matches its fraud rate,
    and test AP stays within noise of r = 1."""
    root, store = data
    X, y = _test_window(store)
    result = {}
    for rate in (1.0, 0.2):
        out = tmp_path / f"r{rate}"
        train_streamed(root / "dir", None, _config(max_epochs=6), out, stream=StreamConfig(negative_rate=rate),
                       progress=lambda _m: None)  # fmt: skip
        model = open_model(out)
        result[rate] = (model.model_dir.manifest["training"], model.score(X), model.score_raw(X))
    training, calibrated, raw = result[0.2]
    assert training["negative_rate"] == 0.2 and training["epoch_scale"] > 4
    n_train = result[1.0][0]["n_sampled"]
    frauds = int(
        store.column("label")[
            (store.column("day") >= FIRST + 30) & (store.column("day") <= FIRST + DAYS - 29)
        ].sum()
    )
    assert training["n_sampled"] == pytest.approx(frauds + 0.2 * (n_train - frauds), rel=0.05)
    assert calibrated.mean() == pytest.approx(y.mean(), rel=0.25)
    assert raw.mean() == pytest.approx(result[1.0][2].mean(), rel=0.5)
    assert average_precision(y, calibrated) > average_precision(y, result[1.0][1]) - 0.1


def test_keep_legit_is_a_fixed_hash_of_position():
    pos = np.arange(200_000)
    keep = keep_legit(pos, 0.2, seed=3)
    assert keep.mean() == pytest.approx(0.2, abs=0.005)
    assert np.array_equal(
        np.concatenate([keep_legit(pos[:777], 0.2, 3), keep_legit(pos[777:], 0.2, 3)]), keep
    )
    assert not np.array_equal(keep_legit(pos, 0.2, seed=4), keep)
    assert keep_legit(pos, 1.0, 3).all()


def test_negative_rate_follows_memory():
    limit = parse_memory("2G")
    small = WindowCounts(n_train=500_000, n_train_fraud=4_000, n_valid=50_000, n_valid_fraud=400)
    assert choose_negative_rate(small, 20, limit) == 1.0
    big = WindowCounts(n_train=13_500_000, n_train_fraud=100_000, n_valid=780_000, n_valid_fraud=6_000)
    rate = choose_negative_rate(big, 20, limit)
    assert 100_000 + rate * 13_400_000 == pytest.approx(DEFAULT_MAX_TRAIN_ROWS)
    tight = choose_negative_rate(big, 20, BASE_BYTES + parse_memory("300M"))
    assert tight < rate and (100_000 + tight * 13_400_000) * 96 <= parse_memory("300M") / 2
    assert choose_negative_rate(big, 20, limit, negative_rate=0.3) == 0.3
    with pytest.raises(ConfigError, match="--negative-rate 1 keeps"):
        choose_negative_rate(big, 20, limit, negative_rate=1.0)
    with pytest.raises(ConfigError, match="validation rows alone"):
        choose_negative_rate(WindowCounts(10**6, 10**4, 10**7, 10**5), 20, limit)
    assert epoch_scale(13_500_000, 2_000_000) == 1.0 and epoch_scale(700_000, 140_000) == 5.0


def test_stream_config_and_when_to_stream(data, tmp_path, monkeypatch):
    root, _ = data
    with pytest.raises(ConfigError, match="--negative-rate"):
        StreamConfig(negative_rate=0.0)
    with pytest.raises(ConfigError, match="--memory-limit"):
        StreamConfig(memory_limit=parse_memory("100M"))
    assert should_stream(root / "dir", StreamConfig())
    assert not should_stream(root / "one.parquet", StreamConfig())
    assert should_stream(root / "one.parquet", StreamConfig(force=True))
    monkeypatch.setattr("fraudlite.models.streamed.IN_MEMORY_ROW_BYTES", 10_000)  # 88k rows -> 880 MB
    assert should_stream(root / "one.parquet", StreamConfig(memory_limit=parse_memory("600M")))
    (tmp_path / "x.csv").write_text("a\n")
    assert not should_stream(tmp_path / "x.csv", StreamConfig(memory_limit=parse_memory("600M")))


def test_window_errors_are_named(data, tmp_path):
    root, _ = data
    late = TrainConfig(FIRST + 200, FIRST + 230)
    with pytest.raises(DataError, match="training window 2026-07-20..2026-08-12 holds no transactions"):
        train_streamed(root / "dir", None, late, tmp_path / "m", progress=lambda _m: None)
    assert list(tmp_path.iterdir()) == []  # no model, no leftover feature store
