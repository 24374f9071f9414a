"""The folded forms score like the other forms on a wide model with one-hot blocks, fold only the columns
where that is exact, and are offered, timed and chosen like every other form."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from fraudlite.errors import ConfigError
from fraudlite.runtime import folded as folded_module
from fraudlite.runtime.choice import choose_form, measure_forms
from fraudlite.runtime.folded import FOLD_RATIO, NumpyFolded, OrtFolded, foldable
from fraudlite.runtime.forms import FORMS, NumpyDense, OrtDense, build_forms

BLOCKS = [(20, 21), (41, 5), (46, 27), (76, 256)]  # mcc, channel, country, 256 hashed merchant buckets
N_FEATURES = 332  # 20 built-in + the blocks + card_present (73), device_score and its indicator (74, 75)


def _mlp(widths: list[int], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            (0.1 * rng.standard_normal(n_out)).astype(np.float32),
        )
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


def _wide_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows like the features of a wide spec: amount-like built-ins (means far above their spread),
    exactly one 1 per block (skewed: a dominant country), a bool and a numeric extra."""
    x = np.zeros((n, N_FEATURES), np.float32)
    x[:, :20] = np.abs(100 + 60 * rng.standard_normal((n, 20)))
    x[:, 73] = rng.random(n) < 0.6
    x[:, 74] = rng.random(n)
    x[:, 75] = rng.random(n) < 0.3
    for start, width in BLOCKS:
        p = 1 / np.arange(1, width + 1) ** 1.1
        if width == 27:
            p[0] = 30 * p.sum()  # one value in ~97% of the rows: mean / std ~ 5.5, kept explicit
        x[np.arange(n), start + rng.choice(width, n, p=p / p.sum())] = 1
    return x


def _reference(layers, mean, std, x, masks=None) -> np.ndarray:
    h = np.asarray(x, np.float64)
    if mean is not None:
        h = (h - mean) / np.where(np.isfinite(std) & (std > 0), std, 1.0)
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w, np.float64) * (1 if masks is None or masks[i] is None else masks[i])
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return 1 / (1 + np.exp(-h[:, 0]))


@pytest.fixture(scope="module")
def wide():
    """A wide model with the training stats of its rows (mean and std of every column), the rows, and
    reason-code style perturbations of them (columns switched to the training means: not one-hot)."""
    rng = np.random.default_rng(0)
    x = _wide_rows(4000, rng)
    mean, std = x.mean(axis=0), x.std(axis=0)
    layers = _mlp([N_FEATURES, 64, 32, 1], rng)
    masks = [rng.random(w.shape) < 0.5 for w, _ in layers]
    perturbed = np.repeat(x[:40], 8, axis=0)
    switch = rng.random(perturbed.shape) < 0.5
    perturbed[switch] = np.broadcast_to(mean, perturbed.shape)[switch]
    return layers, mean.astype(np.float32), std.astype(np.float32), masks, x, perturbed


def test_on_a_wide_model_numpy_folded_scores_like_the_other_forms(wide):
    layers, mean, std, masks, x, perturbed = wide
    fold = foldable(N_FEATURES, mean, std)
    assert not fold[:20].any() and fold[20:41].all() and fold[76:].all()  # built-ins explicit, blocks folded
    assert fold[46:73].sum() == 26  # the dominant country (mean ~0.97) stays explicit
    form = NumpyFolded(layers, mean, std, masks)
    for rows in (x, perturbed, x[:1]):
        scores = form.score(rows)
        assert scores.dtype == np.float32 and scores.shape == (len(rows),)
        np.testing.assert_allclose(scores, _reference(layers, mean, std, rows, masks), rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            scores, NumpyDense(layers, mean, std, masks).score(rows), rtol=0, atol=1e-6
        )
        np.testing.assert_allclose(scores, OrtDense(layers, mean, std, masks).score(rows), rtol=0, atol=1e-6)
    logit = NumpyDense(layers, mean, std, masks).logit(perturbed)
    np.testing.assert_allclose(form.logit(perturbed), logit, rtol=0, atol=2e-5 * (1 + np.abs(logit).max()))


@pytest.mark.parametrize("form", [NumpyFolded, OrtFolded], ids=lambda f: f.name)
def test_a_clustered_model_folds_every_column(form, wide):
    """The clustering stage moves the mean into the first bias (stats of mean 0): every column folds,
    ort-folded applies, and both folded forms score as the explicit forms do."""
    layers, _, std, masks, x, perturbed = wide
    mean = np.zeros(N_FEATURES, np.float32)
    assert foldable(N_FEATURES, mean, std).all()
    for rows in (x, perturbed):
        scores = form(layers, mean, std, masks).score(rows)
        np.testing.assert_allclose(scores, _reference(layers, mean, std, rows, masks), rtol=0, atol=1e-6)
        np.testing.assert_allclose(scores, OrtDense(layers, mean, std, masks).score(rows), rtol=0, atol=1e-6)


def test_a_mean_far_above_its_std_is_standardized_explicitly():
    """|mean| >> std (amounts ~500 with a spread of ~5): folding would lose digits to cancellation; the
    column stays explicit and the scores stay within the 1e-6 serving promises."""
    rng = np.random.default_rng(7)
    layers = _mlp([20, 32, 16, 1], rng)
    mean = rng.uniform(100, 1000, 20).astype(np.float32)
    std = rng.uniform(1, 10, 20).astype(np.float32)
    mean[:5], std[:5] = 0.3, 0.5  # these fold
    assert foldable(20, mean, std).tolist() == [True] * 5 + [False] * 15
    x = (mean + std * rng.standard_normal((2000, 20))).astype(np.float32)
    scores = NumpyFolded(layers, mean, std).score(x)
    assert np.max(np.abs(scores - _reference(layers, mean, std, x))) <= 1e-6
    with pytest.raises(ConfigError, match="every column foldable"):
        OrtFolded(layers, mean, std)


def test_the_fold_criterion():
    mean = np.array([0, 1, -1, 1.01, 5, 0.2], np.float32)
    std = np.array([1, 1, 1, 1, 0, 0.4], np.float32)  # std 0 counts as 1
    assert foldable(6, mean, std).tolist() == [True, True, True, False, False, True]
    assert FOLD_RATIO == 1.0
    assert foldable(3, None, None).all()


@pytest.mark.parametrize("widths", [[40, 1], [40, 6, 1], [40, 16, 8, 4, 1]])
def test_every_depth_and_the_chunks(widths, monkeypatch):
    rng = np.random.default_rng(3)
    layers = _mlp(widths, rng)
    mean = np.where(rng.random(40) < 0.5, 0.0, 50.0).astype(np.float32)
    std = rng.uniform(0.5, 3, 40).astype(np.float32)
    x = (mean + std * rng.standard_normal((300, 40))).astype(np.float32)
    whole = NumpyFolded(layers, mean, std).score(x)
    np.testing.assert_allclose(whole, _reference(layers, mean, std, x), rtol=0, atol=1e-6)
    monkeypatch.setattr(folded_module, "_CHUNK_ROWS", 7)
    np.testing.assert_allclose(NumpyFolded(layers, mean, std).score(x), whole, rtol=0, atol=5e-7)


def test_sigmoid_is_stable_at_large_logits():
    layers = [(np.array([[1.0]], np.float32), np.array([0.0], np.float32))]
    x = np.array([[100.0], [-100.0], [0.0]], np.float32)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        scores = NumpyFolded(layers, np.zeros(1), np.ones(1)).score(x)
    assert scores[0] == 1.0 and 0 <= scores[1] < 1e-37 and scores[2] == 0.5


def test_build_forms_offers_the_folded_forms_where_they_apply(wide):
    layers, mean, std, masks, _, _ = wide
    assert not {"numpy-folded", "ort-folded"} & set(build_forms(layers, None, None, masks))  # nothing to fold
    partly = build_forms(layers, mean, std, masks)
    assert "numpy-folded" in partly and "ort-folded" not in partly
    built = build_forms(layers, np.zeros(N_FEATURES), std, masks)
    assert list(built) == ["ort-dense", "numpy-dense", "numpy-sparse", "ort-folded", "numpy-folded"]
    assert all(FORMS[name] is type(form) for name, form in built.items())  # what open_model builds by name


def test_the_chooser_times_and_can_pick_them(wide):
    layers, _, std, masks, x, _ = wide
    forms = build_forms(layers, np.zeros(N_FEATURES), std, masks)
    rates = measure_forms(forms, x, batch_sizes=(1, 256), rounds=2, min_seconds=0.005)
    assert set(rates) == set(forms) and all(r > 0 for by in rates.values() for r in by.values())
    name, _ = choose_form(rates, {n: f.needs_onnxruntime for n, f in forms.items()})
    assert name in forms
    given = {
        "ort-dense": {1: 1e5, 256: 1e6},
        "numpy-dense": {1: 5e4, 256: 5e5},
        "numpy-folded": {1: 2e5, 256: 2e6},
    }
    assert choose_form(given)[0] == "numpy-folded"
    given["ort-folded"] = {1: 4e5, 256: 4e6}  # 1.25 us and 64 us per call faster: worth onnxruntime
    assert choose_form(given, {"ort-folded": True, "ort-dense": True})[0] == "ort-folded"


NO_ORT = """
import sys
import numpy as np
from fraudlite.runtime.folded import NumpyFolded
from fraudlite.runtime.forms import build_forms
layers = [(np.ones((4, 3), np.float32), np.zeros(4, np.float32)), (np.ones((1, 4), np.float32), np.zeros(1, np.float32))]
assert NumpyFolded(layers, np.zeros(3), np.ones(3)).score(np.ones((5, 3), np.float32)).shape == (5,)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "onnx", "torch", "pandas")))
"""


def test_numpy_folded_never_imports_onnxruntime():
    out = subprocess.run([sys.executable, "-c", NO_ORT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
