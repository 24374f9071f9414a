"""Tests of the simulator's extra attributes (``fraudlite.data.attributes``, ``generate --extra-attributes``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fraudlite.data.attributes import (
    ATTRIBUTE_COLUMNS,
    CARD_PRESENT_CHANNELS,
    CHANNELS,
    ENTRY_MODES,
    EXTRA_COLUMNS_ARG,
    MCCS,
    TRACES,
    draw_attributes,
)
from fraudlite.data.simulator import COLUMNS, LEGIT, SCENARIOS, SimulatorConfig, simulate
from fraudlite.data.transactions import load_transactions
from fraudlite.errors import ConfigError
from fraudlite.features.extras import parse_extra_columns

SMALL = dict(n_customers=300, n_terminals=600, n_days=40, seed=5)
MEDIUM = dict(n_customers=1500, n_terminals=3000, n_days=90, drift_day=45)
RISKY_MCCS = ("5967", "4829", "7995", "5732")


@pytest.fixture(scope="module")
def medium() -> pd.DataFrame:
    return simulate(SimulatorConfig(**MEDIUM, extra_attributes=True))


def _cnp(df: pd.DataFrame) -> pd.Series:
    return ~df["card_present"]


def test_same_seed_gives_identical_attributes() -> None:
    a = simulate(SimulatorConfig(**SMALL, extra_attributes=True))
    b = simulate(SimulatorConfig(**SMALL, extra_attributes=True))
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SimulatorConfig(**{**SMALL, "seed": 6}, extra_attributes=True))
    assert len(a) != len(c) or not a["channel"].equals(c["channel"])


def test_core_columns_label_and_scenario_unchanged_by_the_flag() -> None:
    config = dict(SMALL, drift_day=20)
    plain = simulate(SimulatorConfig(**config))
    extra = simulate(SimulatorConfig(**config, extra_attributes=True))
    assert tuple(plain.columns) == COLUMNS
    assert tuple(extra.columns) == (*COLUMNS, *ATTRIBUTE_COLUMNS)
    pd.testing.assert_frame_equal(extra[list(COLUMNS)], plain)


def test_value_domains(medium: pd.DataFrame) -> None:
    df = medium
    assert df["mcc"].str.fullmatch(r"\d{4}").all()
    assert set(df["mcc"]) <= {m[0] for m in MCCS} and 15 <= df["mcc"].nunique() <= 25
    assert set(df["channel"]) == set(CHANNELS)
    assert df["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert df["card_present"].dtype == np.bool_
    assert (df["card_present"] == df["channel"].isin(CARD_PRESENT_CHANNELS)).all()
    assert set(df["entry_mode"]) == set(ENTRY_MODES)
    assert ((df["entry_mode"] == "keyed") == ~df["card_present"]).all()
    assert (df.loc[df["channel"] == "atm", "entry_mode"] != "contactless").all()
    score = df["device_score"]
    assert score.dtype == np.float64
    assert (score.isna() == df["card_present"]).all()
    assert score.dropna().between(0, 1).all()
    assert np.allclose(score.dropna(), score.dropna().round(3))
    for col in ("mcc", "channel", "country", "entry_mode", "merchant_id"):
        assert pd.api.types.is_string_dtype(df[col]), col


def test_merchants_and_codes_are_fixed_per_terminal(medium: pd.DataFrame) -> None:
    per_terminal = medium.groupby("terminal_id")[["mcc", "merchant_id"]].nunique()
    assert (per_terminal == 1).all().all()
    assert (medium.groupby("merchant_id")["mcc"].nunique() == 1).all()
    terminals = medium.groupby("merchant_id")["terminal_id"].nunique()
    assert terminals.max() <= 5 and terminals.median() >= 3
    assert medium["merchant_id"].nunique() > 500  # many hundreds: hashed by a model, not one-hot
    assert medium["merchant_id"].str.fullmatch(r"M\d{5}").all()


def test_channels_follow_the_merchant_code(medium: pd.DataFrame) -> None:
    by_mcc = medium.groupby("mcc")["channel"]
    assert set(by_mcc.get_group("5541")) == {"pos"}  # fuel: card present only
    assert set(by_mcc.get_group("6011")) == {"atm"}
    legit = medium[medium["label"] == 0]
    online = _cnp(legit).groupby(legit["mcc"]).mean()
    assert online["4899"] > 0.9 and online["5411"] < 0.15
    assert 0.2 < _cnp(legit).mean() < 0.45


def test_countries_are_mostly_home(medium: pd.DataFrame) -> None:
    legit = medium[medium["label"] == 0]
    assert 0.7 < (legit["country"] == "DE").mean() < 0.9
    assert legit["country"].nunique() >= 10  # trips, foreign homes, foreign online merchants
    per_customer = legit.groupby("customer_id")["country"].agg(lambda c: c.value_counts().iloc[0] / len(c))
    assert per_customer.median() > 0.85  # each customer is mostly in one (home) country


def test_fraud_scenarios_leave_traces(medium: pd.DataFrame) -> None:
    df = medium
    base = df["label"].mean()
    high = df["device_score"] > 0.6
    ecom_high = (df["channel"] == "ecom") & high
    assert df.loc[ecom_high, "label"].mean() > 5 * base
    legit = df[df["scenario"] == LEGIT]
    card = df[df["scenario"] == "compromised_card"]
    testing = df[df["scenario"] == "card_testing"]
    takeover = df[df["scenario"] == "account_takeover"]
    assert _cnp(card).mean() > _cnp(legit).mean() + 0.15
    assert _cnp(testing).mean() > 0.8
    foreign = (legit["country"] != "DE").mean()
    assert (takeover["country"] != "DE").mean() > 2 * foreign
    assert (card["country"] != "DE").mean() > 1.5 * foreign
    assert testing["mcc"].isin(["5967", "5999", "4829", "7995", "4899"]).mean() > 2 * (
        legit["mcc"].isin(["5967", "5999", "4829", "7995", "4899"]).mean()
    )
    assert takeover["mcc"].isin(RISKY_MCCS).mean() > 1.5 * legit["mcc"].isin(RISKY_MCCS).mean()


def test_stripe_clones_mark_counterfeit_use_but_genuine_fallbacks_exist(medium: pd.DataFrame) -> None:
    present = medium[medium["card_present"]]
    stripe = present["entry_mode"] == "magstripe"
    by_scenario = stripe.groupby(present["scenario"]).mean()
    assert 0.01 < by_scenario[LEGIT] < 0.04
    assert 0.4 < by_scenario["compromised_terminal"] < 0.6
    assert by_scenario["compromised_card"] > 5 * by_scenario[LEGIT]
    assert present.loc[stripe, "label"].mean() < 0.5  # genuine fallbacks outnumber the clones
    contactless = (present["entry_mode"] == "contactless").groupby(present["channel"]).mean()
    assert 0.5 < contactless["pos"] < 0.65 and contactless["atm"] == 0


def test_traces_overlap_and_compromised_terminals_leave_only_the_stripe(medium: pd.DataFrame) -> None:
    df = medium
    legit = df[df["scenario"] == LEGIT]
    high_legit = (legit["device_score"] > 0.6).sum()
    assert high_legit > (df.loc[df["label"] == 1, "device_score"] > 0.6).sum()  # not a label copy
    ecom_high = (df["channel"] == "ecom") & (df["device_score"] > 0.6)
    assert df.loc[ecom_high, "label"].mean() < 0.5
    terminal = df[df["scenario"] == "compromised_terminal"]
    assert _cnp(terminal).mean() <= _cnp(legit).mean()
    assert abs((terminal["country"] == "DE").mean() - (legit["country"] == "DE").mean()) < 0.1


def test_every_scenario_has_a_trace() -> None:
    assert set(TRACES) == {LEGIT, *SCENARIOS}


def test_unknown_scenario_is_refused() -> None:
    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="nonsense"):
        draw_attributes(np.random.default_rng(0), 1, 1, 1, one, one, one, one, ["nonsense"])


def test_empty_world_works() -> None:
    empty = simulate(
        SimulatorConfig(n_customers=1, n_terminals=1, n_days=1, mean_tx_per_day=1e-9, extra_attributes=True)
    )
    assert len(empty) == 0 and tuple(empty.columns) == (*COLUMNS, *ATTRIBUTE_COLUMNS)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flag_must_be_a_bool(value: object) -> None:
    with pytest.raises(ConfigError, match="extra_attributes"):
        SimulatorConfig(extra_attributes=value)


def test_extra_columns_arg_names_every_attribute() -> None:
    assert tuple(c.name for c in parse_extra_columns(EXTRA_COLUMNS_ARG)) == ATTRIBUTE_COLUMNS


def _generate(*args: str) -> None:
    small = ("--customers", "200", "--terminals", "400", "--days", "30", "--seed", "3")
    r = subprocess.run(
        [sys.executable, "-m", "fraudlite", "generate", *small, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr


def test_cli_flag_writes_the_columns(tmp_path) -> None:
    plain, extra, parquet = tmp_path / "plain.csv", tmp_path / "extra.csv", tmp_path / "extra.parquet"
    _generate("--out", str(plain))
    _generate("--out", str(extra), "--extra-attributes")
    _generate("--out", str(parquet), "--extra-attributes")
    header = extra.read_text().splitlines()[0].split(",")
    assert header == [*COLUMNS, *ATTRIBUTE_COLUMNS]
    assert plain.read_text().splitlines()[0].split(",") == list(COLUMNS)
    text = pd.read_csv(extra, dtype=str, keep_default_na=False)
    assert set(text["card_present"]) == {"true", "false"}
    assert (text["device_score"] == "").equals(text["card_present"] == "true")
    assert text["mcc"].str.fullmatch(r"\d{4}").all()
    pd.testing.assert_frame_equal(
        pd.read_csv(extra, usecols=list(COLUMNS)), pd.read_csv(plain), check_dtype=False
    )
    from_parquet = pd.read_parquet(parquet)
    assert from_parquet["card_present"].dtype == np.bool_
    for path in (extra, parquet):  # both load as the extra columns they are meant to be
        df = load_transactions(path, require_label=True, extras=parse_extra_columns(EXTRA_COLUMNS_ARG))
        assert set(np.unique(df["card_present"])) == {0.0, 1.0}
        assert df["mcc"].map(len).eq(4).all()
        assert (np.isnan(df["device_score"]) == (df["card_present"] == 1.0)).all()
