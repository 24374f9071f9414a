"""Int8 quantization-aware training: calibration, scales, grids, structure preserved."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.cluster import apply_clustering, compute_codebooks
from fraudlite.compression.qat import (
    QATConfig,
    activation_range,
    compute_quant_params,
    compute_weight_scales,
    fake_quant_logits,
    qat_stage,
    snap_to_grid,
)
from fraudlite.errors import ConfigError

FAST = {"batch_size": 1024}


def test_activation_ranges_contain_zero_and_clip_outliers():
    v = np.r_[np.random.default_rng(0).standard_normal(100_000), 1000.0].astype(np.float32)
    lo, hi = activation_range(v, "minmax")
    assert hi == 1000.0 and lo < 0
    p_lo, p_hi = activation_range(v, "percentile", 99.9)
    assert p_hi < 10 and p_lo > -10
    m_lo, m_hi = activation_range(v, "mse")
    assert m_hi < 1000.0
    assert activation_range(np.abs(v), "minmax")[0] == 0.0


def test_weight_scales_and_grid():
    w = np.array([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0], [0.01, 0.02, -0.03]], np.float32)
    s = compute_weight_scales(w, per_channel=True)
    assert s.shape == (3,) and s[1] == 1.0 and s[0] == pytest.approx(1.27 / 127)
    q = snap_to_grid(w, s)
    ints = q / s[:, None]
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-4)
    assert np.all(q[w == 0] == 0) and np.abs(ints).max() <= 127
    assert len(set(compute_weight_scales(w, per_channel=False))) == 1


def test_quant_params_are_json_ready(base_state, stage_data):
    import json

    q = compute_quant_params(base_state, stage_data.X_train[:2048], QATConfig(calibration="minmax"))
    assert len(q) == 3
    json.dumps(q)
    assert [len(layer["weight_scale"]) for layer in q] == [64, 32, 1]
    assert all(0 <= layer["input_zero_point"] <= 255 and layer["input_scale"] > 0 for layer in q)
    assert q[1]["input_zero_point"] == 0  # ReLU outputs: the range starts at 0


def test_qat_preserves_sparsity_and_clusters(base_state, stage_data):
    from fraudlite.compression.prune import compute_magnitude_masks

    masks = compute_magnitude_masks(base_state, 0.8)
    pruned = base_state.copy()
    pruned.layers = [
        (np.where(m, w, np.float32(0)), b) for (w, b), m in zip(pruned.layers, masks, strict=True)
    ]
    pruned.masks = masks
    clustered = apply_clustering(pruned, compute_codebooks(pruned))
    out = qat_stage(clustered, stage_data, QATConfig(epochs=1, **FAST))
    out.validate()
    assert out.quant is not None and out.stages[-1]["name"] == "qat"
    for i, ((w, _), m) in enumerate(zip(out.layers, out.masks, strict=True)):
        assert np.array_equal(m, masks[i]) and np.all(w[~m] == 0)
        c = out.codebooks[i][0]
        assert len(c) <= len(clustered.codebooks[i][0])
        q = out.quant[i]
        assert not q["per_channel"] and len(set(q["weight_scale"])) == 1
        ints = c / np.float32(q["weight_scale"][0])
        np.testing.assert_allclose(ints, np.round(ints), atol=1e-3)
        # bit-exact: int8 codes times the float32 scale give the centroids back
        codes = np.round(ints).astype(np.int8)
        np.testing.assert_array_equal(codes.astype(np.float32) * np.float32(q["weight_scale"][0]), c)


def test_qat_on_dense_layers_snaps_per_channel(base_state, stage_data):
    out = qat_stage(base_state, stage_data, QATConfig(epochs=0, calibration="mse"))
    for (w, _), q in zip(out.layers, out.quant, strict=True):
        s = np.asarray(q["weight_scale"], np.float32)[:, None]
        assert q["per_channel"]
        codes = np.round(w / s)
        assert np.abs(codes).max() <= 127
        np.testing.assert_array_equal(codes.astype(np.float32) * s, w)
    X = stage_data.X_valid
    sim = fake_quant_logits(out, X)
    # activation quantization of heavy-tailed standardized features costs a little, not much
    assert np.median(np.abs(sim - out.logits(X))) < 0.15
    record = out.stages[-1]
    assert record["valid_ap_ptq"] == record["valid_ap_after"] >= record["valid_ap_before"] - 0.02


@pytest.mark.parametrize("bits", [2, 4])
def test_low_bit_qat_snaps_to_its_grid(base_state, stage_data, bits):
    """``bits`` < 8: codes within ``+-qmax``, the grid declared in ``quant``, MSE ranges (clipping some
    weights: finer steps than ``max|W| / qmax``)."""
    from fraudlite.compression.qat import weight_qmax

    out = qat_stage(base_state, stage_data, QATConfig(bits=bits, epochs=1, **FAST))
    qmax = weight_qmax(bits)
    for (w, _), q in zip(out.layers, out.quant, strict=True):
        assert q["bits"] == bits and q["weight_qmax"] == qmax == -q["weight_qmin"]
        s = np.asarray(q["weight_scale"], np.float32)[:, None]
        codes = np.round(w / s)
        assert np.abs(codes).max() <= qmax and len(np.unique(codes)) <= 2 * qmax + 1
        np.testing.assert_array_equal(codes.astype(np.float32) * s, w)
    first = np.asarray(out.quant[0]["weight_scale"], np.float32)
    assert np.any(first < np.abs(base_state.layers[0][0]).max(axis=1) / qmax * 0.99)


def test_mse_scales_round_with_less_error_than_max_scales():
    w = np.random.default_rng(0).standard_normal((16, 200)).astype(np.float32)
    for bits in (2, 3, 4, 8):
        errors = {}
        for method in ("max", "mse"):
            scale = compute_weight_scales(w, True, bits, method)
            errors[method] = float(((snap_to_grid(w, scale, 2 ** (bits - 1) - 1) - w) ** 2).sum())
        assert errors["mse"] <= errors["max"]
        if bits <= 3:
            assert errors["mse"] < 0.8 * errors["max"]
    assert QATConfig().range_method == "max" and QATConfig(bits=4).range_method == "mse"


@pytest.mark.parametrize(
    "kwargs",
    [{"calibration": "kl"}, {"percentile": 40}, {"epochs": -1}, {"batch_size": 0}, {"bits": 1}, {"bits": 9},
     {"bits": True}, {"weight_range": "minmax"}],
)  # fmt: skip
def test_qat_config_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        QATConfig(**kwargs)
