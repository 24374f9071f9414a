"""A wide compressed model (332 inputs: one-hot and hashed extra columns) ships and serves in a folded
form: the compact artifact decodes, every form is timed, and a directory that records a folded form
serves exactly the compressed weights' scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fraudlite.compression.compact import decode_compact, encode_compact
from fraudlite.compression.recipe import parse_recipe
from fraudlite.compression.served import choose_runtime, manifest_runtime, open_model, write_compressed_dir
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError
from fraudlite.features.extras import ExtraColumn
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import MANIFEST
from fraudlite.runtime.folded import NumpyFolded, OrtFolded

EXTRAS = (
    ExtraColumn("mcc", "categorical", vocabulary=tuple(f"{5000 + i}" for i in range(20))),
    ExtraColumn("channel", "categorical", vocabulary=("atm", "ecom", "moto", "pos")),
    ExtraColumn("country", "categorical", vocabulary=tuple(f"C{i:02d}" for i in range(26))),
    ExtraColumn("card_present", "bool"),
    ExtraColumn("device_score", "numeric", fill=0.2),
    ExtraColumn("merchant_id", "categorical", buckets=256),
)


def _rows(spec: FeatureSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.zeros((n, spec.n_features), np.float32)
    x[:, : spec.n_builtin_features] = np.abs(100 + 60 * rng.standard_normal((n, spec.n_builtin_features)))
    start = spec.n_builtin_features
    for c in spec.extra_columns:
        if c.encoding == "value":
            x[:, start : start + c.width] = rng.random((n, c.width)) < 0.5
        else:
            x[np.arange(n), start + rng.integers(0, c.width, n)] = 1
        start += c.width
    return x


@pytest.fixture(scope="module")
def wide_state():
    """A clustered-like wide state: 64x32, half the weights pruned, 16 shared values per layer and the
    stats centred (mean 0, the mean folded into the first bias), as the built-in recipe leaves them."""
    spec = FeatureSpec(extra_columns=EXTRAS)
    assert spec.n_features == 332
    rng = np.random.default_rng(0)
    x = _rows(spec, 4000, rng)
    layers, masks, codebooks = [], [], []
    for n_in, n_out in ((332, 64), (64, 32), (32, 1)):
        centroids = np.sort(rng.standard_normal(16) / np.sqrt(n_in)).astype(np.float32)
        idx = rng.integers(0, 16, (n_out, n_in)).astype(np.uint8)
        mask = rng.random((n_out, n_in)) < 0.5
        mask[:, 0] = True
        idx[~mask] = 0
        layers.append((np.where(mask, centroids[idx], 0).astype(np.float32), rng.normal(0, 0.1, n_out)))
        masks.append(mask)
        codebooks.append((centroids, idx))
    std = np.maximum(x.std(axis=0), 0.01).astype(np.float32)
    state = CompressedMLP(layers, np.zeros(332), std, masks=masks, codebooks=codebooks)
    return spec, state, x


def _write(tmp_path, spec, compact, runtime: dict):
    manifest = {"model_type": "mlp", "threshold": 0.5, "alert_threshold": 0.9, "runtime": runtime}
    return write_compressed_dir(tmp_path, compact, spec, manifest)


def test_a_wide_model_is_timed_in_every_form_and_serves_the_weights_scores(wide_state, tmp_path):
    spec, state, x = wide_state
    compact = encode_compact(state)
    shipped = decode_compact(compact)
    name, record = choose_runtime(shipped, x[:1024])
    assert {"ort-dense", "numpy-dense", "numpy-sparse", "ort-folded", "numpy-folded"} <= set(
        record["rows_per_s"]
    )
    md = _write(tmp_path / "model", spec, compact, manifest_runtime(record))
    served = open_model(md.path)
    assert served.runtime["form"] == name and served.spec.n_features == 332
    assert np.max(np.abs(served.score_raw(x) - shipped.predict_proba(x))) <= 1e-6


@pytest.mark.parametrize("form", [NumpyFolded, OrtFolded], ids=lambda f: f.name)
def test_a_recorded_folded_form_is_what_serves(form, wide_state, tmp_path):
    spec, state, x = wide_state
    compact = encode_compact(state)
    _, record = choose_runtime(decode_compact(compact), x[:256])
    md = _write(tmp_path / "model", spec, compact, {**manifest_runtime(record), "form": form.name})
    assert json.loads((md.path / MANIFEST).read_text())["runtime"]["form"] == form.name
    served = open_model(md.path)
    assert isinstance(served.form, form) and "recorded at compression" in served.runtime["why"]
    perturbed = np.repeat(x[:10], 20, axis=0)  # reason-code rows: columns at the training means
    perturbed[:, ::3] = state.mean[::3]
    for rows in (x, perturbed):
        assert np.max(np.abs(served.score_raw(rows) - state.predict_proba(rows))) <= 1e-6


def test_the_recipe_can_fix_a_folded_form():
    text = '[[stage]]\nname = "prune"\n\n[export]\nform = "{}"\n'
    for name in ("numpy-folded", "ort-folded"):
        assert parse_recipe(text.format(name), check_stages=False).export.form == name
    with pytest.raises(ConfigError, match="export.form"):
        parse_recipe(text.format("numpy-embedding"), check_stages=False)
