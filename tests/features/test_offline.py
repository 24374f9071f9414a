"""Offline features: hand-computed cases and leak-freedom as a property."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudlite.features.offline import TransactionArrays, compute_features
from fraudlite.features.spec import FeatureSpec

DAY = 86_400
T0 = 20_000 * DAY  # a Monday-ish epoch day far from 0


def _features(spec, ts, cust, term, amount, label=None):
    tx = TransactionArrays.from_columns(
        spec, np.array(ts), np.array(cust), np.array(term), np.array(amount), label
    )
    return dict(zip(spec.names, compute_features(spec, tx).T, strict=True))


def test_customer_windows_count_and_mean_include_current_row_only_up_to_it():
    spec = FeatureSpec(customer_windows=(1, 7), terminal_windows=(1,), delay_days=1)
    ts = [T0 + 10, T0 + 20, T0 + DAY + 5, T0 + 8 * DAY]
    f = _features(spec, ts, ["a", "a", "a", "a"], ["t"] * 4, [10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(f["customer_nb_tx_1d"], [1, 2, 1, 1])
    np.testing.assert_allclose(f["customer_avg_amount_1d"], [10, 15, 30, 40])
    # the 7-day window on day 8 covers days 2..8: only the row itself
    np.testing.assert_allclose(f["customer_nb_tx_7d"], [1, 2, 3, 1])
    np.testing.assert_allclose(f["customer_avg_amount_7d"], [10, 15, 20, 40])
    np.testing.assert_allclose(f["customer_amount_ratio_7d"], [1, 20 / 15, 30 / 20, 1], rtol=1e-6)


def test_velocity_gap_and_new_terminal():
    spec = FeatureSpec(velocity_seconds=3600, velocity_cap=3)
    ts = [T0, T0 + 100, T0 + 200, T0 + 300, T0 + 4000]
    f = _features(spec, ts, ["a"] * 5, ["t1", "t1", "t2", "t1", "t2"], [1.0] * 5)
    np.testing.assert_allclose(
        f["customer_nb_tx_1h"], [1, 2, 3, 3, 1]
    )  # capped at 3; 4000-3600=400 > 300: none
    np.testing.assert_allclose(
        f["customer_log_seconds_since_prev"][1:], np.log1p([100, 100, 100, 3700]), rtol=1e-6
    )
    np.testing.assert_allclose(f["customer_new_terminal"], [1, 0, 1, 0, 0])


def test_terminal_risk_uses_only_labels_older_than_the_delay():
    spec = FeatureSpec(terminal_windows=(7,), delay_days=2)
    ts = [T0, T0 + 1 * DAY, T0 + 2 * DAY, T0 + 3 * DAY]
    label = np.array([1, 1, 0, 0])
    f = _features(spec, ts, ["a", "b", "c", "d"], ["t"] * 4, [1.0] * 4, label)
    # day 2 sees day 0 only (1 fraud / 1 tx); day 3 sees days 0..1 (2/2)
    np.testing.assert_allclose(f["terminal_nb_tx_7d"], [0, 0, 1, 2])
    np.testing.assert_allclose(f["terminal_risk_7d"], [0, 0, 1, 1])


def test_other_entities_never_mix():
    spec = FeatureSpec()
    ts = [T0, T0 + 1, T0 + 2]
    f = _features(spec, ts, ["a", "b", "a"], ["t1", "t2", "t3"], [5.0, 100.0, 7.0])
    np.testing.assert_allclose(f["customer_nb_tx_1d"], [1, 1, 2])
    np.testing.assert_allclose(f["customer_avg_amount_30d"], [5, 100, 6])


def test_empty_input_and_shape():
    spec = FeatureSpec()
    tx = TransactionArrays.from_columns(
        spec, np.array([], dtype=np.int64), np.array([]), np.array([]), np.array([])
    )
    assert compute_features(spec, tx).shape == (0, spec.n_features)


def test_spec_round_trips_and_validates():
    spec = FeatureSpec(customer_windows=(2, 5), delay_days=3)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.from_dict(spec.to_dict(names=False)) == spec  # what a compressed model ships
    from fraudlite.errors import ConfigError

    with pytest.raises(ConfigError, match="names do not match"):
        FeatureSpec.from_dict({**spec.to_dict(), "names": spec.names[::-1]})

    with pytest.raises(ConfigError, match="customer_windows"):
        FeatureSpec(customer_windows=(0,))
    with pytest.raises(ConfigError, match="delay_days"):
        FeatureSpec(delay_days=0)
    with pytest.raises(ConfigError, match="bloom_bits"):
        FeatureSpec(bloom_bits=65)


@st.composite
def histories(draw):
    n = draw(st.integers(5, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ts = np.sort(T0 + rng.integers(0, 40 * DAY, n))
    if draw(st.booleans()):  # same-second ties
        ts[1::3] = ts[0::3][: len(ts[1::3])]
        ts = np.sort(ts)
    cust = rng.choice(["a", "b", "c"], n)
    term = rng.choice(["t1", "t2", "t3", "t4"], n)
    amount = np.round(rng.uniform(0.5, 500, n), 2)
    label = (rng.random(n) < 0.3).astype(np.int8)
    cut = draw(st.integers(1, n - 1))
    return ts, cust, term, amount, label, cut, rng


@settings(max_examples=60, deadline=None)
@given(histories(), st.integers(1, 10))
def test_no_leak_from_future_rows_or_young_labels(history, delay):
    """A row's features change neither with anything after it nor with labels younger than the delay."""
    ts, cust, term, amount, label, cut, rng = history
    spec = FeatureSpec(delay_days=delay)

    def feats(ts, cust, term, amount, label):
        tx = TransactionArrays.from_columns(spec, ts, cust, term, amount, label)
        return compute_features(spec, tx)

    base = feats(ts, cust, term, amount, label)
    # 1) change everything after row `cut` (amounts, labels, entities): rows up to `cut` keep their features
    amount2, label2, cust2 = amount.copy(), label.copy(), cust.copy()
    amount2[cut:] = rng.uniform(1, 900, len(ts) - cut).round(2)
    label2[cut:] = 1 - label2[cut:]
    cust2[cut:] = rng.choice(["a", "b", "z"], len(ts) - cut)
    future = feats(ts, cust2, term, amount2, label2)
    np.testing.assert_array_equal(base[:cut], future[:cut])
    # 2) flip labels younger than the delay relative to row `cut`: row `cut`'s features do not move
    day = ts // DAY
    young = day > day[cut] - delay
    label3 = label.copy()
    label3[young] = 1 - label3[young]
    flipped = feats(ts, cust, term, amount, label3)
    np.testing.assert_array_equal(base[cut], flipped[cut])
