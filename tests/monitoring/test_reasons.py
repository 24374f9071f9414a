"""Reason codes (``monitoring.reasons``): the Shapley sampling is right where the answer is known, batched
in one score call, deterministic per row; the reasons are the positive top contributions in readable
text; and on a real trained model the top reason is faithful (ablating it lowers the score more than
ablating a random feature on >= 90% of the test window's alerts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudlite.errors import ConfigError
from fraudlite.features.spec import FeatureSpec
from fraudlite.monitoring.reasons import (
    MAX_REASONS,
    Reason,
    explain_rows,
    reason_text,
    sample_permutations,
    shapley_values,
    top_reasons,
)


class Counting:
    """A score function that records every call's row count."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, rows):
        self.calls.append(len(rows))
        return self.fn(rows)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_additive_model_gets_its_exact_shapley_values_in_one_call():
    rng = np.random.default_rng(0)
    f = 7
    w = rng.normal(size=f)
    ref = rng.normal(size=f).astype(np.float32)
    X = rng.normal(size=(5, f)).astype(np.float32)
    score = Counting(lambda z: z.astype(np.float64) @ w)
    phi = shapley_values(score, X, ref, permutations=4)
    # additive: every permutation gives the same marginals, w_j (x_j - ref_j)
    np.testing.assert_allclose(phi, (X - ref) * w, atol=1e-5)
    assert score.calls == [1 + 5 + 5 * 4 * (f - 1)]


def test_contributions_add_up_to_the_score_change_with_interactions():
    rng = np.random.default_rng(1)
    f = 6
    w = rng.normal(size=f)
    ref = rng.normal(size=f).astype(np.float32)
    X = rng.normal(size=(8, f)).astype(np.float32)

    def score(z):
        z = z.astype(np.float64)
        return _sigmoid(z @ w + 2 * z[:, 0] * z[:, 1] - z[:, 2] * z[:, 3] * z[:, 4])

    phi = shapley_values(score, X, ref, permutations=6)
    np.testing.assert_allclose(phi.sum(axis=1), score(X) - score(ref[None]), atol=1e-9)


def test_pure_interaction_is_split_evenly_by_an_antithetic_pair():
    # f = x0 * x1 from reference 0: exact Shapley gives each half; one permutation alone gives all to one
    X = np.array([[2.0, 3.0, 5.0]], np.float32)
    phi = shapley_values(lambda z: z[:, 0].astype(np.float64) * z[:, 1], X, np.zeros(3, np.float32), 2)
    np.testing.assert_allclose(phi, [[3.0, 3.0, 0.0]], atol=1e-6)


def test_a_rows_values_do_not_depend_on_its_batch():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 5))
    ref = np.zeros(5, np.float32)
    X = rng.normal(size=(6, 5)).astype(np.float32)

    def score(z):
        z = z.astype(np.float64)
        return _sigmoid(np.einsum("ni,ij,nj->n", z, w, z))

    batch = shapley_values(score, X, ref, seed=3)
    alone = shapley_values(score, X[4:5], ref, seed=3)
    np.testing.assert_allclose(batch[4], alone[0], atol=1e-12)
    other_seed = shapley_values(score, X[4:5], ref, seed=4)
    assert not np.allclose(alone, other_seed), "the seed chooses the permutations"


def test_permutations_are_antithetic_pairs_of_valid_orders():
    perms = sample_permutations(9, 6, seed=0)
    assert perms.shape == (6, 9)
    for p in perms:
        assert sorted(p.tolist()) == list(range(9))
    for a, b in zip(perms[::2], perms[1::2], strict=True):
        assert b.tolist() == a[::-1].tolist()
    for bad in (0, 3, -2):
        with pytest.raises(ConfigError, match="even"):
            sample_permutations(9, bad)


def test_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="do not match"):
        shapley_values(lambda z: z.sum(1), np.zeros((2, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match="returned"):
        shapley_values(lambda z: z, np.zeros((2, 3), np.float32), np.zeros(3, np.float32))


def test_top_reasons_are_the_positive_ones_largest_first_at_least_one():
    names = ["amount", "is_night", "terminal_risk_7d", "customer_new_terminal", "is_weekend"]
    X = np.array([[412.5, 1, 0.12, 1, 0], [10, 0, 0, 0, 1], [20, 0, 0, 0, 0]], np.float64)
    ref = np.array([53.1, 0.1, 0.01, 0.2, 0.3])
    phi = np.array(
        [
            [0.30, 0.05, 0.40, 0.10, -0.2],  # four positive: the top three, largest first
            [-0.1, 0.02, -0.3, -0.1, -0.05],  # one positive
            [-0.1, -0.2, -0.3, -0.4, -0.05],  # none positive: the largest alone
        ]
    )
    out = top_reasons(phi, X, names, ref)
    assert [[r.feature for r in row] for row in out] == [
        ["terminal_risk_7d", "amount", "customer_new_terminal"],
        ["is_night"],
        ["is_weekend"],
    ]
    first = out[0][0]
    assert first == Reason(
        "terminal_risk_7d", 0.12, 0.4, "terminal fraud rate over 7 days 12% (typical 1.0%)"
    )
    assert first.to_dict() == {
        "feature": "terminal_risk_7d",
        "value": 0.12,
        "contribution": 0.4,
        "text": "terminal fraud rate over 7 days 12% (typical 1.0%)",
    }
    assert out[0][1].text == "amount 412.50 (typical 53.10)"
    assert out[0][2].text == "first use of this terminal"
    with pytest.raises(ConfigError):
        top_reasons(phi[:, :4], X, names, ref)


@pytest.mark.parametrize(
    ("name", "value", "reference", "text"),
    [
        ("customer_amount_ratio_30d", 5.2, 1.0, "amount 5.2x this card's 30-day mean (typical 1.0x)"),
        ("terminal_risk_7d", 0.12, 0.004, "terminal fraud rate over 7 days 12% (typical 0.4%)"),
        ("terminal_risk_1d", 0.0, 0.01, "terminal fraud rate over 1 day 0% (typical 1.0%)"),
        ("customer_nb_tx_1h", 3, 1.2, "3 transactions of this card in the last hour (typical 1.2)"),
        ("customer_nb_tx_30m", 2, 1.0, "2 transactions of this card in the last 30 minutes (typical 1)"),
        ("customer_nb_tx_7d", 12, 3.5, "12 transactions of this card over 7 days (typical 3.5)"),
        ("customer_avg_amount_1d", 100, 55.5, "this card's 1-day mean amount 100.00 (typical 55.50)"),
        ("terminal_nb_tx_30d", 40, 51.2, "40 transactions at this terminal over 30 days (typical 51.2)"),
        ("is_night", 1.0, 0.2, "night-time transaction"),
        ("is_night", 0.0, 0.2, "daytime transaction"),
        ("is_weekend", 1.0, 0.3, "weekend transaction"),
        ("customer_new_terminal", 1.0, 0.3, "first use of this terminal"),
        ("customer_new_terminal", 0.0, 0.3, "terminal used before by this card"),
        ("amount", 412.5, 53.1, "amount 412.50 (typical 53.10)"),
        ("log_amount", float(np.log1p(412.5)), float(np.log1p(53.1)), "amount 412.50 (typical 53.10)"),
        (
            "customer_log_seconds_since_prev",
            float(np.float32(np.log1p(300))),
            float(np.log1p(72_000)),
            "5 min since this card's previous transaction (typical 20.0 h)",
        ),
        (
            "customer_log_seconds_since_prev",  # a first transaction: the largest window, 30 days
            float(np.float32(np.log1p(30 * 86_400))),
            float(np.log1p(72_000)),
            "no earlier transaction of this card in 30 days (typical gap 20.0 h)",
        ),
        ("something_new", 3.3, 1.0, "something_new 3.3 (typical 1)"),
    ],
)
def test_reason_text(name, value, reference, text):
    assert reason_text(name, value, reference) == text


def test_every_spec_feature_has_its_own_text():
    spec = FeatureSpec()
    texts = [reason_text(n, 1.0, 0.5) for n in spec.names]
    generic = [n for n, t in zip(spec.names, texts, strict=True) if t == f"{n} 1 (typical 0.5)"]
    assert reason_text("unknown_feature", 1.0, 0.5) == "unknown_feature 1 (typical 0.5)"
    assert generic == [], f"features without a readable text: {generic}"


@pytest.fixture(scope="module")
def trained(train_small):
    from fraudlite.compression.served import open_model

    data, model = train_small("reasons", 3)
    return data, open_model(model)


def test_top_reason_is_faithful_on_a_trained_model(trained):
    """Setting the top reason's feature to its reference value lowers the score more than setting a
    random other feature does, on >= 90% of the alerts of the test window (after training)."""
    from fraudlite.data.transactions import load_transactions, parse_day
    from fraudlite.models.evaluation import features_for

    data, served = trained
    df = load_transactions(data, {}, require_label=True)
    X = features_for(served.spec, df).astype(np.float32)
    scores = served.score(X)
    day = df["ts"].to_numpy() // 86_400
    test = day >= parse_day("2026-03-01", "test")
    alerts = np.flatnonzero(test & (scores >= served.model_dir.alert_threshold))
    assert len(alerts) >= 10, f"only {len(alerts)} alerts in the test window"
    ref = served.normalization()[0]
    names = served.spec.names
    reasons = explain_rows(served.log_odds, X[alerts], ref, names)
    assert all(1 <= len(r) <= MAX_REASONS and r[0].contribution > 0 for r in reasons)
    top = np.array([names.index(r[0].feature) for r in reasons])
    rng = np.random.default_rng(0)
    rand = np.array([rng.choice([j for j in range(len(names)) if j != k]) for k in top])
    rows = np.arange(len(alerts))
    x_top, x_rand = X[alerts].copy(), X[alerts].copy()
    x_top[rows, top] = ref[top]
    x_rand[rows, rand] = ref[rand]
    base = served.log_odds(X[alerts])  # the score's log-odds: the same order of drops as the probability's
    drop_top = base - served.log_odds(x_top)
    drop_rand = base - served.log_odds(x_rand)
    fidelity = float((drop_top > drop_rand).mean())
    assert fidelity >= 0.9, pd.DataFrame({"top": top, "rand": rand, "d_top": drop_top, "d_rand": drop_rand})
    # the reasons' values are the rows' features
    for i, r in zip(alerts.tolist(), reasons, strict=True):
        for reason in r:
            assert reason.value == pytest.approx(float(X[i, names.index(reason.feature)]), abs=1e-5)
