"""Quantization-aware training (int8 down to 2-bit weights) that preserves sparsity and clusters.

Scheme (at 8 bits what ONNX Runtime's QDQ / QLinearMatMul expect): weights symmetric ``bits``-bit
integers in ``[-qmax, qmax]``, ``qmax = 2**(bits - 1) - 1`` (127 at 8 bits, 7 at 4, 1 at 2: ternary
codes with per-channel scales), zero point 0, per output unit (``per_channel``) or per tensor. The
scale of a row is ``max|W_j| / qmax`` (``weight_range = "max"``) or the clipping range minimizing the
row's squared rounding error (``"mse"``; ``"auto"``, the default, takes ``max`` at 8 bits and ``mse``
below, where clipping the few largest weights buys finer steps for the many small ones). Activations
(the input of every
layer: the standardized features, then the ReLU outputs) asymmetric uint8, per tensor, with ranges
calibrated on training rows (``minmax``, ``percentile`` or ``mse``: the clipping range minimizing the
quantization error on a grid of candidates).

Training fake-quantizes both (straight-through estimator) on top of the existing structure:

- a clustered layer trains its centroids (``W = centroids[indices] * mask``); its weight scale is per
  tensor (``max|centroids| / qmax``, or the MSE range of the centroids), so that quantizing keeps one
  shared codebook: the final centroids are snapped to that grid (``c = s * q``) and the layer still has
  <= k distinct values;
- an unclustered layer trains its masked weights with per-channel (or per-tensor) scales; the final
  weights are snapped to ``s_j * clip(round(W / s_j), -qmax, qmax)``.

Zero stays zero (zero point 0), so sparsity is kept exactly. After the stage, every layer's float
weights are exactly representable by its int8 values and scales: an exporter that quantizes with
``quant[i]`` reproduces them bit for bit. Weight scales are recomputed from the current weights at
every step (by the same numpy function for ``mse``) and, at the end, are the ones the weights are
snapped with; activation ranges stay fixed at their calibrated values (activations stay uint8 at every
weight width). The better of post-training quantization and QAT (validation AP of the quantization-
simulated model) is kept. The compact artifact stores each weight as its integer (``bits`` wide before
entropy coding).

``quant[i]`` (JSON-ready): ``weight_scale`` (list, one per output unit), ``weight_zero_point`` (zeros),
``weight_qmin``/``weight_qmax`` (``-qmax``/``qmax``), ``per_channel``, ``input_scale``,
``input_zero_point`` (uint8), ``input_min``/``input_max`` (the calibrated range), ``bits``,
``calibration``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.cluster import (
    _sorted,
    apply_clustering,
    layer_arrays,
    parametrize_codebooks,
    unclustered_masks,
)
from fraudlite.compression.finetune import (
    OriginalView,
    ap_of,
    check_training,
    frozen_teacher,
    mask_hooks,
    sample_rows,
    train,
    training_model,
)
from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.compression.structured import _activations
from fraudlite.errors import ConfigError

__all__ = [
    "QATConfig",
    "activation_range",
    "compute_weight_scales",
    "weight_qmax",
    "compute_quant_params",
    "snap_to_grid",
    "fake_quant_logits",
    "qat_stage",
]


_CALIBRATIONS = ("minmax", "percentile", "mse")
_WEIGHT_RANGES = ("auto", "max", "mse")
QMAX_W = 127  # the int8 grid (bits = 8)


def weight_qmax(bits: int) -> int:
    """The largest integer of the symmetric ``bits``-bit weight grid, ``2**(bits - 1) - 1``."""
    return (1 << (int(bits) - 1)) - 1


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training of ``bits``-bit weights (uint8 activations).

    Attributes:
        bits: weight width, 2..8 (8: int8, what ONNX Runtime's int8 kernels take).
        weight_range: ``"max"``, ``"mse"`` or ``"auto"`` (``max`` at 8 bits, ``mse`` below): how a
            weight scale is chosen (module docs).
        per_channel: per-output-unit weight scales for unclustered layers (clustered layers always
            use one scale, which keeps their codebook).
        calibration: ``"minmax"``, ``"percentile"`` or ``"mse"`` for the activation ranges.
        percentile: upper percentile (and ``100 - percentile`` lower) of the ``percentile`` method.
        calibration_rows: training rows used to calibrate.
        epochs: QAT epochs, early-stopped on validation AP of the fake-quantized model (0 = only
            calibrate and snap the weights: post-training quantization).
        half_precision_biases: round the trained biases to float16-representable values.
        lr, weight_decay, batch_size, patience, dropout, seed: training settings.
        kd_alpha, kd_temperature: knowledge distillation from the float model while training.
    """

    bits: int = 8
    weight_range: str = "auto"
    per_channel: bool = True
    calibration: str = "percentile"
    percentile: float = 99.99
    calibration_rows: int = 16384
    epochs: int = 3
    half_precision_biases: bool = True
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    dropout: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in 2..8, got {self.bits!r}")
        if self.weight_range not in _WEIGHT_RANGES:
            raise ConfigError(
                f"weight_range must be one of {', '.join(_WEIGHT_RANGES)}, got {self.weight_range!r}"
            )
        if self.calibration not in _CALIBRATIONS:
            raise ConfigError(
                f"calibration must be one of {', '.join(_CALIBRATIONS)}, got {self.calibration!r}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if int(self.calibration_rows) < 1:
            raise ConfigError(f"calibration_rows must be >= 1, got {self.calibration_rows}")
        if int(self.epochs) < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        check_training(self)

    @property
    def qmax(self) -> int:
        return weight_qmax(self.bits)

    @property
    def range_method(self) -> str:
        """``weight_range`` with ``auto`` resolved: ``max`` at 8 bits, ``mse`` below."""
        if self.weight_range != "auto":
            return self.weight_range
        return "max" if self.bits == 8 else "mse"


# ---------------------------------------------------------------------------- pure maths


def _uint8_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return scale, zp


def _fake_uint8(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    q = np.clip(np.round(x / scale) + zp, 0, 255)
    return ((q - zp) * scale).astype(np.float32)


def activation_range(
    values: np.ndarray, method: str = "percentile", percentile: float = 99.99
) -> tuple[float, float]:
    """Calibrated ``(min, max)`` of one activation tensor (always containing 0).

    Args:
        values: observed activations (any shape).
        method: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        percentile: for ``"percentile"``.
    """
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        return 0.0, 0.0
    lo, hi = float(min(v.min(), 0.0)), float(max(v.max(), 0.0))
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        plo, phi = np.percentile(v, [100.0 - percentile, percentile])
        return float(min(plo, 0.0)), float(max(phi, 0.0))
    if method != "mse":
        raise ConfigError(f"calibration must be one of {', '.join(_CALIBRATIONS)}, got {method!r}")
    sample = v if v.size <= 200_000 else v[np.random.default_rng(0).choice(v.size, 200_000, replace=False)]
    best, best_err = (lo, hi), math.inf
    for frac in np.linspace(0.05, 1.0, 40):
        c_lo, c_hi = lo * frac, hi * frac
        scale, zp = _uint8_params(c_lo, c_hi)
        err = float(np.mean((_fake_uint8(sample, scale, zp) - sample) ** 2))
        if err < best_err:
            best, best_err = (c_lo, c_hi), err
    return best


_MSE_FRACTIONS = np.linspace(1.0, 0.1, 46, dtype=np.float32)  # clipping ranges tried, widest first


def compute_weight_scales(w: np.ndarray, per_channel: bool, bits: int = 8, method: str = "max") -> np.ndarray:
    """Symmetric scales float32 [out] of the ``bits``-bit grid, per row or one repeated (1 for all-zero rows).

    ``method = "max"``: ``max|W_j| / qmax``; ``"mse"``: of the clipping ranges ``f * max|W_j|`` (f from
    1 down to 0.1) the one whose grid rounds the row (or tensor) with the least squared error.
    """
    w = np.asarray(w, dtype=np.float32)
    qmax = np.float32(weight_qmax(bits))
    rows = w if per_channel else w.reshape(1, -1)
    m = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows), np.float32)
    scale = (m / qmax).astype(np.float32)
    if method == "mse" and rows.size:
        cand = (_MSE_FRACTIONS[:, None] * m[None, :] / qmax).astype(np.float32)  # [C, rows]
        safe = np.where(cand > 0, cand, np.float32(1))[:, :, None]
        err = ((np.clip(np.round(rows / safe), -qmax, qmax) * safe - rows) ** 2).sum(axis=2)
        scale = cand[np.argmin(err, axis=0), np.arange(len(rows))]  # argmin: the widest of equal ones
    elif method != "max":
        raise ConfigError(f"weight range method must be max or mse, got {method!r}")
    if not per_channel:
        scale = np.full(w.shape[0], scale[0] if scale.size else 0.0, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def snap_to_grid(values: np.ndarray, scale: np.ndarray | float, qmax: int = QMAX_W) -> np.ndarray:
    """``scale * clip(round(values / scale), -qmax, qmax)`` in float32 (rows scaled by ``scale[j]``)."""
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == 1 and np.ndim(values) == 2:
        s = s[:, None]
    q = np.clip(np.round(np.asarray(values, dtype=np.float32) / s), -qmax, qmax).astype(np.float32)
    return (q * s).astype(np.float32) + np.float32(0)  # + 0: no -0.0, so the compact codec stores integers


def _codebook_scale(centroids: np.ndarray, weights: np.ndarray, config: QATConfig) -> np.float32:
    """The one symmetric scale of a clustered layer: ``max|centroids| / qmax`` (1 when all are 0), or
    with ``mse`` the range that rounds the layer's weights (``weights``, the decoded ``W``: what the
    fake quantization sees while training) with least error."""
    if config.range_method == "mse":
        return compute_weight_scales(np.reshape(weights, (1, -1)), False, config.bits, "mse")[0]
    return np.float32(max(float(np.abs(centroids).max()) / config.qmax, 0.0) or 1.0)


def compute_quant_params(
    state: CompressedMLP, X_calib: np.ndarray, config: QATConfig | None = None
) -> list[dict]:
    """Per-layer int8 parameters of ``state`` (see module docs), activations calibrated on ``X_calib``."""
    config = config or QATConfig()
    inputs = [state.standardize(X_calib), *_activations(state, X_calib)]
    out = []
    for (w, _b), cb, x in zip(state.layers, state.codebooks, inputs, strict=True):
        per_channel = bool(config.per_channel) and cb is None
        if cb is not None:
            scales = np.full(w.shape[0], _codebook_scale(cb[0], w, config), dtype=np.float32)
        else:
            scales = compute_weight_scales(w, per_channel, config.bits, config.range_method)
        lo, hi = activation_range(x, config.calibration, config.percentile)
        in_scale, in_zp = _uint8_params(lo, hi)
        out.append(
            {
                "bits": int(config.bits),
                "per_channel": per_channel,
                "weight_scale": [float(s) for s in scales],
                "weight_zero_point": [0] * w.shape[0],
                "weight_qmin": -config.qmax,
                "weight_qmax": config.qmax,
                "input_scale": in_scale,
                "input_zero_point": in_zp,
                "input_min": float(lo),
                "input_max": float(hi),
                "calibration": config.calibration,
            }
        )
    return out


def fake_quant_logits(state: CompressedMLP, X: np.ndarray, quant: list[dict] | None = None) -> np.ndarray:
    """Logits of the quantization-simulated model (weights as stored, activations fake-quantized where
    ``quant`` has their range: weight-only schemes such as binary weights have none), numpy."""
    quant = quant if quant is not None else state.quant
    if quant is None:
        return state.logits(X)
    h = state.standardize(X)
    for i, ((w, b), q) in enumerate(zip(state.layers, quant, strict=True)):
        if "input_scale" in q:
            h = _fake_uint8(h, q["input_scale"], q["input_zero_point"])
        h = h @ w.T + b
        if i < len(state.layers) - 1:
            h = np.maximum(h, 0)
    return h.reshape(-1).astype(np.float32)


# ---------------------------------------------------------------------------- torch fake quantization


def _weight_fake_quant(per_channel: bool, config: QATConfig):
    import torch
    from torch import nn

    qmax, method = config.qmax, config.range_method

    class WeightFakeQuant(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                if method == "mse":  # the numpy function the final weights are snapped with
                    wn = w.detach().cpu().numpy().reshape(w.shape[0], -1)
                    scale = torch.from_numpy(compute_weight_scales(wn, per_channel, config.bits, "mse"))
                else:
                    m = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.shape[0])
                    scale = torch.where(m > 0, m / qmax, torch.ones_like(m)).to(torch.float32)
            zp = torch.zeros(w.shape[0], dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -qmax, qmax)

    return WeightFakeQuant()


def _prepare(model: object, state: CompressedMLP, quant: list[dict], config: QATConfig) -> list:
    """Parametrize weights (shared and/or fake-quantized) and hook activation fake-quantization."""
    import torch
    from torch.nn.utils import parametrize

    parametrize_codebooks(model, state)  # the shared weights first, fake quantization on top
    handles = []
    for layer, q in zip(model.layers, quant, strict=True):
        parametrize.register_parametrization(
            layer, "weight", _weight_fake_quant(bool(q["per_channel"]), config)
        )
        scale, zp = float(q["input_scale"]), int(q["input_zero_point"])

        def pre_hook(module: object, args: tuple, scale: float = scale, zp: int = zp) -> tuple:
            return (torch.fake_quantize_per_tensor_affine(args[0], scale, zp, 0, 255),)

        handles.append(layer.register_forward_pre_hook(pre_hook))
    return handles


def _finalize(
    model: object, state: CompressedMLP, config: QATConfig
) -> tuple[CompressedMLP, list[np.ndarray]]:
    """Read the trained weights back and snap them to their ``bits``-bit grids (structure kept).

    Returns:
        The state and, per layer, the float32 weight scales [out] used for snapping (exact grids).
    """
    out = state.copy()
    layers, codebooks, scales = [], [], []
    for i, (original, b) in enumerate(layer_arrays(model, state)):
        if config.half_precision_biases:
            b = b.astype(np.float16).astype(np.float32)
        cb = state.codebooks[i]
        if cb is not None:
            decoded = original[cb[1].astype(np.intp)]
            if state.masks[i] is not None:
                decoded = np.where(state.masks[i], decoded, np.float32(0))
            scale = _codebook_scale(original, decoded, config)
            codebooks.append((snap_to_grid(original, scale, config.qmax), cb[1]))
            layers.append((out.layers[i][0], b))
            scales.append(np.full(out.layers[i][0].shape[0], scale, dtype=np.float32))
        else:
            scale = compute_weight_scales(
                original, bool(config.per_channel), config.bits, config.range_method
            )
            codebooks.append(None)
            layers.append((snap_to_grid(original, scale, config.qmax), b))
            scales.append(scale)
    out.layers = layers
    if any(cb is not None for cb in codebooks):
        out = apply_clustering(out, _merge_duplicates(_sorted(codebooks, out.masks)))
    return out, scales


def _merge_duplicates(codebooks: list) -> list:
    """Centroids that snapped to the same grid value become one entry (indices remapped)."""
    out = []
    for cb in codebooks:
        if cb is None:
            out.append(None)
            continue
        c, idx = cb
        uniq, inverse = np.unique(c, return_inverse=True)
        out.append((uniq.astype(np.float32), inverse[idx.astype(np.intp)].astype(np.uint8)))
    return out


def qat_stage(
    state: CompressedMLP,
    data: StageData,
    config: QATConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The quantization stage: calibrate, fine-tune with fake quantization, snap weights to their grids.

    Returns:
        A new state with ``quant`` set (weight scales: the exact grids the final weights sit on;
        activation ranges as calibrated before training) and the stage record (``valid_ap_ptq``: AP
        of post-training quantization before QAT, ``valid_ap_after``: of the final simulated model).
    """
    config = config or QATConfig()
    calib = sample_rows(data.X_train, config.calibration_rows, config.seed)
    ap_before = ap_of(state, data.X_valid, data.y_valid)
    quant = compute_quant_params(state, calib, config)
    from fraudlite.models.metrics import average_precision

    def sim_ap(s: CompressedMLP, q: list[dict]) -> float:
        return float(average_precision(data.y_valid, fake_quant_logits(s, data.X_valid, q)))

    ptq_model = training_model(state, config)
    _prepare(ptq_model, state, quant, config)
    ptq, ptq_scales = _finalize(ptq_model, state, config)
    ap_ptq = sim_ap(ptq, quant)
    best, best_scales = ptq, ptq_scales
    if int(config.epochs) > 0:
        model = training_model(state, config)
        _prepare(model, state, quant, config)
        # masks of unclustered layers act on the parametrization's original weight
        after_backward, after_step = mask_hooks(OriginalView(model), unclustered_masks(state))
        params = [p for p in model.parameters() if p.requires_grad]
        train(model, data, config, config.epochs, early_stopping=True, parameters=params,
              after_backward=after_backward, after_step=after_step, progress=progress,
              teacher=frozen_teacher(state, config))  # fmt: skip
        trained, trained_scales = _finalize(model, state, config)
        if sim_ap(trained, quant) >= ap_ptq:
            best, best_scales = trained, trained_scales
    final_quant = [dict(q) for q in quant]  # the activation ranges trained with
    for q, scale in zip(final_quant, best_scales, strict=True):  # the exact grids the weights sit on
        q["weight_scale"] = [float(x) for x in scale]
        q["weight_zero_point"] = [0] * len(scale)
    best.quant = final_quant
    best.stages = list(state.stages)
    ap_after = sim_ap(best, final_quant)
    return best.with_stage(
        stage_record(
            "qat",
            config,
            state,
            best,
            valid_ap_before=ap_before,
            valid_ap_ptq=ap_ptq,
            valid_ap_after=ap_after,
            valid_ap_float=ap_of(best, data.X_valid, data.y_valid),
        )
    )
