"""Ternary and binary weights: the pure maths, structure kept after pruning, stage order, configs, and the
served model of each low-bit form (ternary, binary, 4-bit) scoring what its state scores."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.lowbit import (
    BinaryConfig,
    TernaryConfig,
    binary_scales,
    binary_stage,
    ternary_codebook,
    ternary_codes,
    ternary_stage,
)
from fraudlite.compression.qat import QATConfig, qat_stage, weight_qmax
from fraudlite.compression.state import StageData
from fraudlite.errors import ConfigError

FAST = {"batch_size": 1024}


def test_ternary_codes_and_codebook():
    w = np.float32([[1.0, -0.5, 0.05, 0.0], [-0.2, 0.3, -1.0, 0.1]])
    mask = np.ones(w.shape, bool)
    mask[0, 1] = False  # pruned: code 0 whatever its value was
    codes = ternary_codes(w, mask, 0.25)  # threshold 0.25 * max|W| = 0.25
    assert codes.tolist() == [[1, 0, 0, 0], [0, 1, -1, 0]]
    c, idx = ternary_codebook(codes, 0.75, 0.5)
    assert c.tolist() == [-0.5, 0.0, 0.75] and c[idx].tolist() == [[0.75, 0, 0, 0], [0, 0.75, -0.5, 0]]
    c, idx = ternary_codebook(np.int8([[1, 0]]), 0.75, 0.5)  # unused codes drop out of the codebook
    assert c.tolist() == [0.0, 0.75] and idx.tolist() == [[1, 0]]


def test_binary_scales_are_the_mean_magnitude_of_kept_weights():
    w = np.float32([[1.0, -3.0, 100.0], [0.0, 0.0, 0.0]])
    mask = np.array([[True, True, False], [True, True, True]])
    assert binary_scales(w, mask).tolist() == [2.0, 1.0]  # an all-zero row gets scale 1


def _pruned(base_state, stage_data):
    from fraudlite.compression.prune import PruneConfig, prune_stage

    cfg = PruneConfig(sparsity=0.7, schedule="one_shot", prune_epochs=0, finetune_epochs=0, **FAST)
    return prune_stage(base_state, stage_data, cfg)


def test_low_bit_stages_keep_pruning_and_their_value_sets(base_state, stage_data):
    pruned = _pruned(base_state, stage_data)
    ternary = ternary_stage(pruned, stage_data, TernaryConfig(threshold=0.3, epochs=1, **FAST))
    binary = binary_stage(pruned, stage_data, BinaryConfig(epochs=1, **FAST))
    three_bit = qat_stage(pruned, stage_data, QATConfig(bits=3, epochs=1, **FAST))
    for out in (ternary, binary, three_bit):
        out.validate()
        assert [s["name"] for s in out.stages][:-1] == ["prune"]
        assert out.sparsity() == pytest.approx(pruned.sparsity())
        for (w, _), m, m0 in zip(out.layers, out.masks, pruned.masks, strict=True):
            assert np.array_equal(m, m0) and np.all(w[~m] == 0)
    for i, ((w, _), m) in enumerate(zip(ternary.layers, ternary.masks, strict=True)):
        c = ternary.codebooks[i][0]
        assert len(c) <= 3 and c[0] < 0 < c[-1] and len(np.unique(w[m])) <= 3
        assert np.all(c.astype(np.float16).astype(np.float32) == c)  # half precision scales
    assert 0 < ternary.stages[-1]["zero_fraction"] < 1
    for (w, _), m, q in zip(binary.layers, binary.masks, binary.quant, strict=True):
        alpha = np.float32(q["weight_scale"])[:, None]
        assert q["weight_qmax"] == 1 and "input_scale" not in q  # weight-only
        assert np.all(np.abs(w[m]) == np.broadcast_to(alpha, w.shape)[m])
    for w, _ in three_bit.layers:
        assert len(np.unique(w[0])) <= 2 * weight_qmax(3) + 1


def test_low_bit_stages_run_before_sharing_and_quantization(base_state, stage_data):
    quantized = qat_stage(base_state, stage_data, QATConfig(epochs=0))
    with pytest.raises(ConfigError, match="reorder"):
        ternary_stage(quantized, stage_data, TernaryConfig(epochs=0))
    with pytest.raises(ConfigError, match="reorder"):
        binary_stage(quantized, stage_data, BinaryConfig(epochs=0))


@pytest.mark.parametrize(
    "make", [lambda: TernaryConfig(threshold=0), lambda: TernaryConfig(threshold=1.0),
             lambda: BinaryConfig(epochs=-1), lambda: BinaryConfig(lr=0)],
)  # fmt: skip
def test_low_bit_configs_reject_bad_settings(make):
    with pytest.raises(ConfigError):
        make()


def test_served_model_scores_low_bit_states(make_state, tmp_path):
    """Each low-bit form ships as its compact artifact and serves the decoded (dequantized) weights."""
    from fraudlite.compression.compact import encode_compact
    from fraudlite.compression.served import (
        choose_runtime,
        manifest_runtime,
        open_model,
        write_compressed_dir,
    )
    from fraudlite.features.spec import FeatureSpec

    spec = FeatureSpec()
    state = make_state(hidden=(16, 8), n_features=spec.n_features, sparsity=0.3)
    rng = np.random.default_rng(0)
    X = (state.mean + state.std * rng.standard_normal((600, spec.n_features))).astype(np.float32)
    y = (state.logits(X) > np.quantile(state.logits(X), 0.9)).astype(np.float32)
    data = StageData(X[:400], y[:400], X[400:], y[400:])
    forms = {
        "ternary": ternary_stage(state, data, TernaryConfig(epochs=0)),
        "binary": binary_stage(state, data, BinaryConfig(epochs=0)),
        "4-bit": qat_stage(state, data, QATConfig(bits=4, epochs=0)),
    }
    for name, out in forms.items():
        _, runtime = choose_runtime(out)
        manifest = {"threshold": 0.5, "model_type": "mlp", "runtime": manifest_runtime(runtime)}
        served = open_model(write_compressed_dir(tmp_path / name, encode_compact(out), spec, manifest))
        np.testing.assert_allclose(served.score_raw(X[400:]), out.predict_proba(X[400:]), atol=1e-6)
