"""The training reference (fixed bins, one byte per bin) and PSI over a sliding window of counts."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.errors import ConfigError
from fraudlite.monitoring.drift import DriftWindow, psi
from fraudlite.monitoring.reference import BINS, Reference


def _data(n: int = 20_000, seed: int = 0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(5 + shift, 2, n), rng.exponential(30, n), rng.random(n) < 0.2])
    scores = rng.beta(0.3, 20, n)
    return X.astype(np.float32), scores.astype(np.float32)


def test_reference_round_trips_through_its_text_within_a_byte_per_bin():
    X, s = _data()
    mean, std = X.mean(0), X.std(0)
    ref = Reference.fit(X, mean, std, s)
    text = ref.encode()
    assert len(text) <= 4 * (6 + (3 + 1) * BINS) // 3 + 4  # base64 of 6 + one byte per bin
    back = Reference.decode(text)
    assert back.features.shape == (3, BINS) and back.score.shape == (BINS,)
    np.testing.assert_allclose(back.features, ref.features, atol=1 / 255)
    np.testing.assert_allclose(back.score, ref.score, atol=1 / 255)
    # a normal feature fills the standard-normal deciles evenly
    np.testing.assert_allclose(ref.features[0], 0.1, atol=0.02)
    # a 20% boolean lands in two bins only
    assert (ref.features[2] > 0).sum() == 2 and abs(ref.features[2].max() - 0.8) < 0.02


@pytest.mark.parametrize(
    "text", ["not base64!", "QUJD", Reference(np.ones((2, BINS)) / BINS, np.ones(BINS) / BINS).encode()[:-4]]
)
def test_a_broken_reference_is_refused(text):
    with pytest.raises(ConfigError, match="reference"):
        Reference.decode(text)


def test_psi_is_zero_for_the_same_shares_and_grows_with_a_shift():
    X, s = _data()
    mean, std = X.mean(0), X.std(0)
    ref = Reference.fit(X, mean, std, s)
    same = DriftWindow(ref, mean, std, window_rows=10_000, chunk_rows=1_000)
    Xs, ss = _data(seed=1)
    same.update(Xs[:10_000], ss[:10_000])
    stable, score_psi = same.psi()
    assert stable.max() < 0.01 and score_psi < 0.01
    shifted = DriftWindow(ref, mean, std, window_rows=10_000, chunk_rows=1_000)
    Xd, sd = _data(seed=2, shift=1.0)  # half a standard deviation
    shifted.update(Xd[:10_000], sd[:10_000])
    moved, _ = shifted.psi()
    assert moved[0] > 0.2 and moved[1] < 0.01 and moved[2] < 0.01


def test_the_window_slides_over_whole_chunks():
    X, s = _data()
    mean, std = X.mean(0), X.std(0)
    w = DriftWindow(Reference.fit(X, mean, std, s), mean, std, window_rows=4_000, chunk_rows=1_000)
    assert w.psi() is None
    Xd, sd = _data(seed=3, shift=2.0)
    for i in range(0, 5_000, 500):  # drifted traffic first ...
        w.update(Xd[i : i + 500], sd[i : i + 500])
    assert w.psi()[0][0] > 0.5
    Xs, ss = _data(seed=4)
    for i in range(0, 8_000, 500):  # ... then the window forgets it
        w.update(Xs[i : i + 500], ss[i : i + 500])
    assert 4_000 <= w.rows < 5_000
    assert w.psi()[0][0] < 0.02


def test_psi_floors_empty_bins():
    ref = np.array([0.5, 0.5, 0.0])
    assert np.isfinite(psi(ref, np.array([0.0, 0.5, 0.5])))
    assert psi(ref, ref) == 0.0


def test_a_window_refuses_a_reference_of_other_features():
    X, s = _data()
    ref = Reference.fit(X, X.mean(0), X.std(0), s)
    with pytest.raises(ConfigError, match="3 features"):
        DriftWindow(ref, np.zeros(4), np.ones(4))
