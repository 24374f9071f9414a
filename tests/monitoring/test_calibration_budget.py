"""Platt scaling (fit, apply, record), ECE, and alert-budget thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fraudlite.errors import ConfigError
from fraudlite.models.calibrate import fit_platt
from fraudlite.monitoring.budget import budget_threshold, parse_alert_budget, per_1k
from fraudlite.monitoring.calibration import Platt, expected_calibration_error, reliability_bins


def _overconfident(n: int = 50_000, seed: int = 0):
    """Labels drawn from true probabilities; raw scores that overstate them (as class reweighting does)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-4, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    raw = 1 / (1 + np.exp(-(1.3 * z + 3)))
    return raw.astype(np.float32), y


def test_platt_scaling_calibrates_and_keeps_the_ranking():
    raw, y = _overconfident()
    platt = fit_platt(raw[:25_000], y[:25_000])
    cal = platt(raw[25_000:])
    assert expected_calibration_error(raw[25_000:], y[25_000:]) > 0.05
    assert expected_calibration_error(cal, y[25_000:]) < 0.01
    assert average_precision_score(y[25_000:], cal) == pytest.approx(
        average_precision_score(y[25_000:], raw[25_000:]), abs=1e-6
    )
    order = np.argsort(raw[25_000:], kind="stable")
    assert np.all(np.diff(cal[order]) >= 0)
    assert platt.inverse(float(platt(np.array([0.3]))[0])) == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize("a, b", [(0.7, -3.0), (1.3, 2.0), (40.0, -1.0)])
def test_platt_small_batches_calibrate_like_large_ones(a, b):
    """A few scores take the Python-float path (serving at low load); the values are the numpy path's."""
    p = Platt(a, b)
    s = np.array([0.0, 1e-9, 1e-4, 0.01, 0.3, 0.5, 0.77, 0.999, 1 - 1e-9, 1.0, np.nan], np.float32)
    large = p(np.tile(s, 2))[: len(s)]  # 22 scores: the numpy path
    small = np.concatenate([p(s[i : i + 4]) for i in range(0, len(s), 4)])
    assert small.dtype == np.float32 and small.shape == s.shape
    np.testing.assert_allclose(small, large, rtol=1e-6, atol=1e-12)
    assert np.isnan(small[-1]) and np.isnan(large[-1])


def test_platt_record_round_trip_and_bad_records():
    p = Platt(0.7, -3.0)
    q = Platt.from_record(p.record())
    assert (q.a, q.b) == (0.7, -3.0)
    assert Platt.from_record(None) is None
    for bad in (
        {"method": "isotonic"},
        {"method": "platt", "a": "x", "b": 1},
        {"method": "platt", "a": -1, "b": 0},
    ):
        with pytest.raises(ConfigError):
            Platt.from_record(bad)


def test_fit_platt_needs_both_classes():
    with pytest.raises(ConfigError, match="both classes"):
        fit_platt(np.array([0.1, 0.2]), np.array([0, 0]))


def test_reliability_bins_cover_every_row():
    raw, y = _overconfident(5_000)
    bins = reliability_bins(raw, y)
    assert sum(b["n"] for b in bins) == 5_000
    assert all(b["lo"] <= b["mean_score"] <= b["hi"] for b in bins)


@pytest.mark.parametrize(
    ("text", "expected"), [("2.5", (2.5, "1k")), ("2.5/1k", (2.5, "1k")), ("300/day", (300.0, "day"))]
)
def test_parse_alert_budget(text, expected):
    assert parse_alert_budget(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "5/week", "abc"])
def test_parse_alert_budget_names_the_flag(text):
    with pytest.raises(ConfigError, match="--alert-budget"):
        parse_alert_budget(text)


def test_budget_threshold_alerts_at_most_the_budget():
    rng = np.random.default_rng(0)
    s = rng.random(10_000).astype(np.float32)
    t = budget_threshold(s, 5.0)
    assert (s >= t).sum() == 50
    ties = np.repeat(np.float32(0.5), 100)
    assert (ties >= budget_threshold(ties, 50.0)).sum() == 0  # 5 of 100 cannot be picked out of a tie
    assert per_1k(300, "day", 60_000) == pytest.approx(5.0)
    with pytest.raises(ConfigError):
        budget_threshold(s, 1000.0)
