"""sklearn baselines and their hand-written ONNX converters (parity with predict_proba)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from fraudlite.errors import ConfigError, DataError
from fraudlite.models import BASELINE_KINDS, baseline_to_onnx, train_baseline
from fraudlite.runtime import OnnxScorer


def _data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] = np.exp(rng.normal(3, 1, n))  # raw amount scale
    X[:, 1] = rng.poisson(3, n)
    logit = -8.7 + 2 * np.log(X[:, 0]) - X[:, 1] + 4 * (X[:, 2] * X[:, 3] > 0.5)
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)


@pytest.fixture(autouse=True)
def _one_thread():
    """sklearn's OpenMP predict is 10-50x slower with spinning threads on busy shared cores."""
    with threadpool_limits(limits=1):
        yield


def _onnx_scores(model, X: np.ndarray) -> np.ndarray:
    return OnnxScorer(baseline_to_onnx(model).SerializeToString()).score(X)


@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_baseline_learns_and_onnx_matches_sklearn(kind):
    X, y = _data()
    model = train_baseline(kind, X[:4000], y[:4000], X[4000:], y[4000:], seed=0)
    expected = model.predict_proba(X[4000:])[:, 1]
    assert roc_auc_score(y[4000:], expected) > 0.8
    for batch in (1, 1000):
        scores = _onnx_scores(model, X[4000 : 4000 + batch])
        assert scores.dtype == np.float32 and scores.shape == (batch,)
        assert np.max(np.abs(scores - expected[:batch])) < 1e-5


def test_hgb_threshold_between_adjacent_float32_values():
    """sklearn splits at the float64 midpoint of two adjacent float32 values; rounding it to the
    nearest float32 (a tie, to even = the upper value) would send the upper value the wrong way."""
    low = np.nextafter(np.float32(1.0), np.float32(2.0))  # odd last mantissa bit
    high = np.nextafter(low, np.float32(2.0))  # even: the midpoint rounds up to it
    assert np.float32((np.float64(low) + np.float64(high)) / 2) == high
    X = np.repeat(np.array([[low], [high]], dtype=np.float32), 50, axis=0)
    y = np.repeat(np.array([0, 1], dtype=np.int8), 50)
    model = train_baseline("hgb", X, y, seed=0)
    expected = model.predict_proba(X[[0, -1]])[:, 1]
    assert expected[1] - expected[0] > 0.5
    assert np.max(np.abs(_onnx_scores(model, X[[0, -1]]) - expected)) < 1e-5


def test_hgb_missing_values_follow_sklearn():
    X, y = _data()
    X[::7, 0] = np.nan  # learnt missing-value direction
    model = train_baseline("hgb", X[:4000], y[:4000], seed=0)
    test = X[4000:].copy()
    test[::5, 1] = np.nan  # never missing in training: sklearn's default direction
    assert np.max(np.abs(_onnx_scores(model, test) - model.predict_proba(test)[:, 1])) < 1e-5


def test_hgb_is_deterministic_under_the_seed():
    X, y = _data()
    a = train_baseline("hgb", X[:4000], y[:4000], X[4000:], y[4000:], seed=3)
    b = train_baseline("hgb", X[:4000], y[:4000], X[4000:], y[4000:], seed=3)
    assert np.array_equal(a.predict_proba(X)[:, 1], b.predict_proba(X)[:, 1])


def test_logreg_graph_is_the_contract():
    X, y = _data()
    proto = baseline_to_onnx(train_baseline("logreg", X, y))
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["score"]


def test_bad_requests():
    X, y = _data(500)
    with pytest.raises(ConfigError, match="svm"):
        train_baseline("svm", X, y)
    with pytest.raises(DataError):
        train_baseline("logreg", X, np.zeros_like(y))
    with pytest.raises(DataError):
        train_baseline("logreg", X, y[:-1])
    with pytest.raises(ConfigError, match="RandomForestClassifier"):
        baseline_to_onnx(RandomForestClassifier(n_estimators=2).fit(X, y))
    categorical = HistGradientBoostingClassifier(max_iter=3, categorical_features=[1]).fit(X, y)
    with pytest.raises(ConfigError, match="categorical"):
        baseline_to_onnx(categorical)
