"""Tests of the vectorized transaction simulator (small configs, each well under a second or two)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudlite.data.simulator import (
    COLUMNS,
    DRIFT_SCENARIO,
    LEGIT,
    SCENARIOS,
    SimulatorConfig,
    _nearby_terminals,
    simulate,
)
from fraudlite.errors import ConfigError

SMALL = dict(n_customers=300, n_terminals=600, n_days=40)
MEDIUM = dict(n_customers=1000, n_terminals=2000, n_days=120)


@pytest.fixture(scope="module")
def medium() -> pd.DataFrame:
    return simulate(SimulatorConfig(**MEDIUM))


@pytest.fixture(scope="module")
def drifted() -> tuple[SimulatorConfig, pd.DataFrame]:
    config = SimulatorConfig(n_customers=600, n_terminals=1200, n_days=60, drift_day=30)
    return config, simulate(config)


def _day(df: pd.DataFrame, config: SimulatorConfig) -> np.ndarray:
    start = np.datetime64(config.start_date, "ns")
    return ((df["timestamp"].to_numpy() - start) // np.timedelta64(1, "D")).astype(np.int64)


def test_same_seed_gives_identical_frames() -> None:
    a = simulate(SimulatorConfig(**SMALL, seed=7))
    b = simulate(SimulatorConfig(**SMALL, seed=7))
    pd.testing.assert_frame_equal(a, b)


def test_different_seed_differs() -> None:
    a = simulate(SimulatorConfig(**SMALL, seed=1))
    b = simulate(SimulatorConfig(**SMALL, seed=2))
    assert len(a) != len(b) or not a.equals(b)


def test_schema_dtypes_and_order(medium: pd.DataFrame) -> None:
    df = medium
    assert tuple(df.columns) == COLUMNS
    assert df["tx_id"].dtype == np.int64
    assert np.array_equal(df["tx_id"].to_numpy(), np.arange(len(df)))
    assert df["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert df["timestamp"].is_monotonic_increasing
    assert (df["timestamp"].dt.nanosecond == 0).all() and (df["timestamp"].dt.microsecond == 0).all()
    assert df["timestamp"].min() >= pd.Timestamp("2026-01-01")
    assert df["timestamp"].max() < pd.Timestamp("2026-01-01") + pd.Timedelta(days=MEDIUM["n_days"])
    for col in ("customer_id", "terminal_id", "scenario"):
        assert pd.api.types.is_string_dtype(df[col]), col
    assert df["customer_id"].str.fullmatch(r"C\d{5}").all()
    assert df["terminal_id"].str.fullmatch(r"T\d{5}").all()
    assert df["amount"].dtype == np.float64
    assert (df["amount"] > 0).all()
    assert np.allclose(df["amount"], df["amount"].round(2))
    assert df["label"].dtype == np.int8
    assert set(df["label"].unique()) == {0, 1}
    assert ((df["scenario"] == LEGIT) == (df["label"] == 0)).all()


def test_every_scenario_present_on_a_moderate_config(drifted) -> None:
    _, df = drifted
    assert set(df["scenario"].unique()) == {LEGIT, *SCENARIOS}


def test_fraud_rate_is_realistic(medium: pd.DataFrame) -> None:
    assert 0.005 <= medium["label"].mean() <= 0.01


def test_about_two_transactions_per_customer_per_day(medium: pd.DataFrame) -> None:
    per_customer_day = len(medium) / (MEDIUM["n_customers"] * MEDIUM["n_days"])
    assert 1.8 <= per_customer_day <= 2.2


def test_day_night_and_weekend_rhythm(medium: pd.DataFrame) -> None:
    legit = medium[medium["label"] == 0]
    night = (legit["timestamp"].dt.hour < 6).mean()
    assert 0.02 < night < 0.1
    per_day = legit.groupby(legit["timestamp"].dt.date).size()
    weekend = pd.to_datetime(per_day.index).day_of_week >= 5
    ratio = per_day[weekend].mean() / per_day[~weekend].mean()
    assert 0.7 < ratio < 0.9  # default weekend_factor 0.8


def test_customers_use_few_favourite_terminals(medium: pd.DataFrame) -> None:
    legit = medium[medium["label"] == 0]
    distinct = legit.groupby("customer_id")["terminal_id"].nunique()
    assert distinct.median() < 40
    top_share = legit.groupby("customer_id")["terminal_id"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    assert top_share.median() > 0.1


def test_compromised_terminal_takes_all_its_transactions(medium: pd.DataFrame) -> None:
    df = medium.assign(day=medium["timestamp"].dt.floor("D"))
    hit = df.loc[df["scenario"] == "compromised_terminal", ["terminal_id", "day"]].drop_duplicates()
    rows = df.merge(hit, on=["terminal_id", "day"])
    assert len(rows) > 0 and (rows["label"] == 1).all()
    per_terminal_days = hit.groupby("terminal_id")["day"].agg(lambda d: (d.max() - d.min()).days)
    assert per_terminal_days.max() >= 7  # compromises last weeks, not a day


def test_compromised_card_inflates_amounts(medium: pd.DataFrame) -> None:
    legit_mean = medium[medium["label"] == 0].groupby("customer_id")["amount"].mean()
    card = medium[medium["scenario"] == "compromised_card"]
    ratio = card["amount"].to_numpy() / legit_mean.loc[card["customer_id"]].to_numpy()
    assert np.median(ratio) > 2


def test_card_testing_has_tiny_then_large_amounts(medium: pd.DataFrame) -> None:
    ct = medium[medium["scenario"] == "card_testing"]
    assert (ct["amount"] <= 2.0).sum() > (ct["amount"] >= 150).sum() > 0
    first = ct.groupby("customer_id")["amount"].first()
    assert (first <= 2.0).mean() > 0.9  # the burst starts with tiny tests


def test_account_takeover_uses_terminals_the_card_never_used(medium: pd.DataFrame) -> None:
    pairs = ["customer_id", "terminal_id"]
    legit_pairs = medium.loc[medium["label"] == 0, pairs].drop_duplicates()
    ato = medium.loc[medium["scenario"] == "account_takeover", pairs]
    assert len(ato) > 0
    assert len(ato.merge(legit_pairs, on=pairs)) == 0


def test_high_amount_is_an_outlier(medium: pd.DataFrame) -> None:
    high = medium.loc[medium["scenario"] == "high_amount", "amount"]
    assert len(high) > 0
    assert high.min() > medium.loc[medium["label"] == 0, "amount"].max()


def test_drift_absent_before_drift_day_and_present_after(drifted) -> None:
    config, df = drifted
    day = _day(df, config)
    drift = (df["scenario"] == DRIFT_SCENARIO).to_numpy()
    assert not drift[day < config.drift_day].any()
    assert drift[day >= config.drift_day].sum() > 20
    assert (df.loc[drift, "timestamp"].dt.hour < 6).all()
    assert (df.loc[drift, "amount"] <= 40).all()


def test_drift_only_adds_rows(drifted) -> None:
    config, df = drifted
    plain = simulate(SimulatorConfig(n_customers=600, n_terminals=1200, n_days=60, seed=config.seed))
    assert DRIFT_SCENARIO not in set(plain["scenario"])
    rest = df[df["scenario"] != DRIFT_SCENARIO].drop(columns="tx_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, plain.drop(columns="tx_id"))


def test_every_customer_has_a_nearby_terminal() -> None:
    rng = np.random.default_rng(0)
    cust = rng.uniform(0, 100, (400, 2))
    term = rng.uniform(0, 100, (150, 2))
    radius = 4.0
    ptr, idx = _nearby_terminals(cust, term, radius, 100.0, np.random.default_rng(1))
    dist = np.sqrt(((cust[:, None, :] - term[None, :, :]) ** 2).sum(axis=2))
    for c in range(len(cust)):
        got = set(idx[ptr[c] : ptr[c + 1]].tolist())
        expected = set(np.flatnonzero(dist[c] <= radius).tolist()) or {int(dist[c].argmin())}
        assert got == expected


def test_tiny_and_empty_configs_work() -> None:
    one = simulate(SimulatorConfig(n_customers=1, n_terminals=1, n_days=1))
    assert tuple(one.columns) == COLUMNS
    empty = simulate(SimulatorConfig(n_customers=1, n_terminals=1, n_days=1, mean_tx_per_day=1e-9))
    assert len(empty) == 0 and tuple(empty.columns) == COLUMNS


def test_progress_is_reported() -> None:
    messages: list[str] = []
    simulate(SimulatorConfig(**SMALL), progress=messages.append)
    assert len(messages) >= 3 and messages[-1].startswith("done")


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_customers": 0},
        {"n_terminals": -5},
        {"n_days": 2.5},
        {"n_days": True},
        {"seed": -1},
        {"start_date": "2026/01/01"},
        {"start_date": "2026-13-01"},
        {"start_date": 20260101},
        {"drift_day": 180},
        {"drift_day": -1},
        {"drift_day": "10"},
        {"card_testing_rate": -0.1},
        {"compromised_terminal_rate": float("nan")},
        {"high_amount_share": 1.5},
        {"night_share": "0.05"},
        {"terminal_radius": 0.0},
        {"terminal_skew": 0.5},
        {"compromised_card_days": 0},
    ],
)
def test_invalid_config_raises_config_error(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**overrides)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="drift_day"):
        SimulatorConfig(n_days=10, drift_day=10)
