"""Every runnable form scores like a float64 reference, and the numpy forms never load onnxruntime."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import fraudlite.runtime as runtime
from fraudlite.errors import ConfigError
from fraudlite.runtime import forms as forms_module
from fraudlite.runtime.forms import Form, NumpyDense, NumpySparse, OrtDense, build_forms

ALL_FORMS = [OrtDense, NumpyDense, NumpySparse]


def _mlp(widths: list[int], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            (0.1 * rng.standard_normal(n_out)).astype(np.float32),
        )
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


def _reference(layers, mean, std, x, masks=None) -> np.ndarray:
    """float64 numpy: standardize, masked ReLU layers, sigmoid (computed stably in float64)."""
    h = np.asarray(x, np.float64)
    if mean is not None:
        h = (h - mean) / np.where(np.isfinite(std) & (std > 0), std, 1.0)
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w, np.float64) * (1 if masks is None or masks[i] is None else masks[i])
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    z = h[:, 0]
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


@pytest.mark.parametrize("form", ALL_FORMS, ids=lambda f: f.name)
def test_a_mean_far_above_its_std_costs_no_precision(form):
    """|mean| >> std (amounts ~500 with a spread of ~5): folding the standardization into layer 0 loses
    digits to float32 cancellation (1.25e-6 on the default model); every form standardizes first, as the
    weights' own inference does, and stays within the 1e-6 serving promises."""
    rng = np.random.default_rng(7)
    layers = _mlp([20, 32, 16, 1], rng)
    mean = rng.uniform(100, 1000, 20).astype(np.float32)
    std = rng.uniform(1, 10, 20).astype(np.float32)
    x = (mean + std * rng.standard_normal((2000, 20))).astype(np.float32)
    scores = form(layers, mean, std).score(x)
    assert np.max(np.abs(scores - _reference(layers, mean, std, x))) <= 1e-6


def _case(widths, density, seed=0):
    rng = np.random.default_rng(seed)
    layers = _mlp(widths, rng)
    mean = (3 * rng.standard_normal(widths[0])).astype(np.float32)
    std = rng.uniform(0.5, 3, widths[0]).astype(np.float32)
    masks = [rng.random(w.shape) < density for w, _ in layers] if density < 1 else None
    x = (mean + std * rng.standard_normal((300, widths[0]))).astype(np.float32)
    return layers, mean, std, masks, x


@pytest.mark.parametrize("form", ALL_FORMS, ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("widths", "density"),
    [([20, 24, 12, 1], 1.0), ([20, 24, 12, 1], 0.3), ([20, 1], 0.5), ([64, 128, 32, 1], 0.1)],
)
def test_every_form_matches_the_float64_reference(form, widths, density):
    layers, mean, std, masks, x = _case(widths, density)
    scores = form(layers, mean, std, masks).score(x)
    assert scores.dtype == np.float32 and scores.shape == (len(x),)
    np.testing.assert_allclose(scores, _reference(layers, mean, std, x, masks), rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ALL_FORMS, ids=lambda f: f.name)
def test_output_units_with_no_kept_weight_score_their_bias(form):
    layers, mean, std, masks, x = _case([20, 24, 12, 1], 0.3, seed=1)
    masks[0][[0, 5, 23]] = False  # hidden units of layer 0 with nothing kept: ReLU(bias)
    masks[1][:, :] = False
    masks[1][3, 4] = True  # one hidden unit of layer 1 keeps one weight, the others none
    scores = form(layers, mean, std, masks).score(x)
    np.testing.assert_allclose(scores, _reference(layers, mean, std, x, masks), rtol=0, atol=1e-6)
    masks[2][:] = False  # the output unit itself pruned away: sigmoid(b) for every row
    scores = form(layers, mean, std, masks).score(x)
    np.testing.assert_allclose(scores, np.full(len(x), 1 / (1 + np.exp(-layers[2][1][0]))), atol=1e-6)


@pytest.mark.parametrize("form", ALL_FORMS, ids=lambda f: f.name)
def test_sigmoid_is_stable_at_large_logits(form):
    """z = +-100, +-90: no overflow warning, probabilities 1 and ~0 within float32 rounding."""
    layers = [(np.array([[1.0]], np.float32), np.array([0.0], np.float32))]
    masks = [np.array([[True]])]
    x = np.array([[100.0], [-100.0], [90.0], [-90.0], [0.0]], np.float32)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        scores = form(layers, None, None, masks).score(x)
    np.testing.assert_allclose(scores, _reference(layers, None, None, x), rtol=0, atol=1e-6)
    assert scores[0] == 1.0 and 0 <= scores[1] < 1e-37 and scores[4] == 0.5  # numpy clips z at -88


@pytest.mark.parametrize("form", ALL_FORMS, ids=lambda f: f.name)
def test_large_inputs_go_through_in_chunks(form, monkeypatch):
    layers, mean, std, masks, x = _case([20, 24, 12, 1], 0.3, seed=2)
    whole = form(layers, mean, std, masks).score(x)
    monkeypatch.setattr(forms_module, "CHUNK_ROWS", 7)
    monkeypatch.setattr(forms_module, "_GATHER_ELEMENTS", 100)  # numpy-sparse: gathers in slices too
    np.testing.assert_allclose(form(layers, mean, std, masks).score(x), whole, rtol=0, atol=1e-7)


def test_build_forms_offers_numpy_sparse_only_when_a_mask_drops_weights():
    layers, mean, std, masks, _ = _case([20, 24, 12, 1], 0.3)
    assert list(build_forms(layers, None, None)) == ["ort-dense", "numpy-dense"]
    keep_all = [np.ones(w.shape, bool) for w, _ in layers]
    assert list(build_forms(layers, None, None, keep_all)) == ["ort-dense", "numpy-dense"]
    built = build_forms(layers, mean, std, [None, masks[1], None])  # some columns fold (test_folded)
    assert list(built) == ["ort-dense", "numpy-dense", "numpy-sparse", "numpy-folded"]
    assert all(isinstance(f, Form) and f.name == name for name, f in built.items())


def test_masks_must_match_the_layers():
    layers, mean, std, masks, _ = _case([20, 24, 12, 1], 0.3)
    with pytest.raises(ConfigError, match="masks for 3 layers"):
        NumpyDense(layers, mean, std, masks[:2])
    with pytest.raises(ConfigError, match="does not match"):
        NumpySparse(layers, mean, std, [masks[0].T, None, None])


def test_the_package_resolves_names_lazily():
    from fraudlite.runtime import OnnxScorer, session_options
    from fraudlite.runtime.session import OnnxScorer as direct

    assert OnnxScorer is direct and callable(session_options)
    assert set(runtime.__all__) <= set(dir(runtime))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        runtime.nope  # noqa: B018


NO_ORT = """
import sys
import numpy as np
import fraudlite.runtime
from fraudlite.runtime.forms import NumpyDense, NumpySparse
from fraudlite.runtime.choice import machine_fingerprint, measure_forms
from fraudlite.runtime import NumpyDense as lazy_dense, mlp_graph

layers = [(np.ones((4, 3), np.float32), np.zeros(4, np.float32)), (np.ones((1, 4), np.float32), np.zeros(1, np.float32))]
masks = [np.eye(4, 3, dtype=bool), None]
forms = {f.name: f for f in (NumpyDense(layers, np.zeros(3), np.ones(3)), NumpySparse(layers, None, None, masks))}
x = np.ones((5, 3), np.float32)
assert all(f.score(x).shape == (5,) for f in forms.values())
measure_forms(forms, x, (1, 2), rounds=1, min_seconds=0.0)
machine_fingerprint(), mlp_graph(layers)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "onnx", "torch", "pandas"))
print(loaded)
"""


def test_numpy_forms_never_import_onnxruntime():
    out = subprocess.run([sys.executable, "-c", NO_ORT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
