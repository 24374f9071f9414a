"""Ternary and binary weights, fine-tuned with straight-through estimators (uniform 2..8-bit weights are
:mod:`fraudlite.compression.qat` with ``bits``).

- **Ternary** (Zhu et al. 2017, trained ternary quantization): per layer, weights above the threshold
  ``t * max|W|`` become ``+Wp``, below ``-t * max|W|`` become ``-Wn``, the rest 0; ``Wp`` and ``Wn`` are
  learned. The layer is a ``k = 3`` codebook ``[-Wn, 0, Wp]`` (what weight sharing already ships and
  serves), 2 bits a weight before entropy coding; its zeros are kept weights, not pruned ones.
- **Binary** (BinaryConnect / XNOR-Net weights): ``W_j = alpha_j * sign(W_j)`` with ``alpha_j = mean|W_j|``
  per output unit (the scale minimizing the row's squared error). The layer is the ``qmax = 1`` integer
  grid of QAT with codes +-1 (``quant[i]`` has the scales but no activation range: weight-only), ~1 bit a
  weight in the compact artifact.

Training keeps full-precision latent weights; the forward pass uses the quantized ones and gradients
pass straight through to the latent weights (scaled by ``Wp``/``Wn`` for ternary, as in TTQ; ``Wp``/``Wn``
get the summed gradient of their entries). The codes are computed by the same numpy functions while
training and at the end, so the final weights are the ones the last forward pass used (scales aside,
rounded to float16 with ``half_precision``). Sparsity is kept (pruned weights stay exactly 0); the
input must not be clustered or quantized yet. ``center_stats`` folds the feature mean into the first
bias first and rounds the std to float16 (exact up to rounding; the stats then cost ~half).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.cluster import apply_clustering, layer_arrays
from fraudlite.compression.finetune import (
    OriginalView,
    ap_of,
    check_training,
    check_unclustered,
    frozen_teacher,
    mask_hooks,
    train,
    training_model,
)
from fraudlite.compression.standardization import center_standardization
from fraudlite.compression.state import Codebook, CompressedMLP, StageData, stage_record
from fraudlite.errors import ConfigError

__all__ = [
    "TernaryConfig",
    "BinaryConfig",
    "ternary_codes",
    "ternary_codebook",
    "binary_scales",
    "ternary_stage",
    "binary_stage",
]


@dataclass(frozen=True)
class _LowBitConfig:
    """Settings shared by the ternary and binary stages.

    Attributes:
        epochs: straight-through fine-tuning epochs (0 = quantize the weights as they are).
        half_precision: round the scales and biases to float16 values (16 bits each in the artifact).
        center_stats: fold the feature mean into the first bias and round the std to float16 first.
        lr, weight_decay, batch_size, patience, early_stopping, dropout, seed: training settings.
        kd_teacher, kd_alpha, kd_temperature: knowledge distillation while training (``kd_teacher =
            "source"``: the run's teacher).
    """

    epochs: int = 4
    half_precision: bool = True
    center_stats: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    early_stopping: bool = True
    dropout: float = 0.0
    kd_teacher: str = "input"
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.epochs) < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        check_training(self)


@dataclass(frozen=True)
class TernaryConfig(_LowBitConfig):
    """Trained ternary quantization (TTQ). ``threshold``: the zero band's half width as a fraction of
    the layer's ``max|W|``, recomputed from the latent weights every step (TTQ's ``t``; measured best of
    0.05/0.1/0.2 on the default data's MLP, while the test fixture prefers ~0.3: a setting to search)."""

    threshold: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        super().__post_init__()


@dataclass(frozen=True)
class BinaryConfig(_LowBitConfig):
    """Binary weights with per-output-unit scales (no extra settings)."""


# ---------------------------------------------------------------------------- pure maths (numpy)


def _keep(w: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return np.ones(w.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def ternary_codes(w: np.ndarray, mask: np.ndarray | None, threshold: float) -> np.ndarray:
    """int8 codes in {-1, 0, 1}: ``sign(W)`` where ``|W| > threshold * max|W|`` over kept entries, else 0
    (pruned entries 0)."""
    w = np.asarray(w, dtype=np.float32)
    keep = _keep(w, mask)
    delta = np.float32(threshold) * (np.abs(w[keep]).max() if keep.any() else np.float32(0))
    codes = np.where(w > delta, 1, np.where(w < -delta, -1, 0)).astype(np.int8)
    return np.where(keep, codes, 0).astype(np.int8)


def _ternary_init(w: np.ndarray, codes: np.ndarray) -> tuple[float, float]:
    """Initial ``(Wp, Wn)``: the mean magnitude of the weights given each code (the least-squares fit)."""
    mag = np.abs(np.asarray(w, dtype=np.float64))
    pos, neg = codes > 0, codes < 0
    fallback = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    return (
        float(mag[pos].mean()) if pos.any() else fallback,
        float(mag[neg].mean()) if neg.any() else fallback,
    )


def ternary_codebook(codes: np.ndarray, wp: float, wn: float) -> Codebook:
    """The ``k <= 3`` codebook of a ternary layer: ascending centroids of the codes in use among
    ``[-|Wn|, 0, |Wp|]``, indices into them (a code-0 entry is index of 0, or index 0 if all are
    zero; pruned entries must carry code 0 and are then index 0 by the convention of the caller)."""
    values = np.float32([-abs(wn), 0.0, abs(wp)])
    used = np.unique(codes.astype(np.intp) + 1)
    centroids, inverse = np.unique(values[used], return_inverse=True)
    remap = np.zeros(3, dtype=np.intp)
    remap[used] = inverse.reshape(-1)
    return centroids.astype(np.float32) + np.float32(0), remap[codes.astype(np.intp) + 1].astype(np.uint8)


def binary_scales(w: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """float32 [out]: ``mean|W_j|`` over each row's kept entries (1 for a row without any non-zero)."""
    w = np.asarray(w, dtype=np.float32)
    keep = _keep(w, mask)
    total = np.where(keep, np.abs(w), np.float32(0)).sum(axis=1, dtype=np.float64)
    alpha = (total / np.maximum(keep.sum(axis=1), 1)).astype(np.float32)
    return np.where(alpha > 0, alpha, np.float32(1)).astype(np.float32)


def _half(a: np.ndarray, on: bool) -> np.ndarray:
    """float16-rounded (non-zero stays non-zero: a scale that would flush to 0 is kept as it is)."""
    a = np.asarray(a, dtype=np.float32)
    if not on:
        return a
    r = a.astype(np.float16).astype(np.float32)
    if not np.isfinite(r).all():
        raise ConfigError("a scale or bias overflows float16; disable half_precision")
    return np.where((r == 0) & (a != 0), a, r).astype(np.float32)


# ---------------------------------------------------------------------------- training (torch)


def _ternary_module(w: np.ndarray, mask: np.ndarray | None, threshold: float):
    import torch
    from torch import nn

    class TernaryWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            wp, wn = _ternary_init(w, ternary_codes(w, mask, threshold))
            self.wp = nn.Parameter(torch.tensor(wp, dtype=torch.float32))
            self.wn = nn.Parameter(torch.tensor(wn, dtype=torch.float32))
            self.register_buffer("keep", torch.from_numpy(_keep(w, mask).astype(np.float32)))

        def forward(self, latent: torch.Tensor) -> torch.Tensor:
            codes = ternary_codes(latent.detach().cpu().numpy(), mask, threshold)
            pos = torch.from_numpy((codes > 0).astype(np.float32))
            neg = torch.from_numpy((codes < 0).astype(np.float32))
            wp, wn = self.wp.abs(), self.wn.abs()
            through = wp.detach() * pos + wn.detach() * neg + (1 - pos - neg) * self.keep  # TTQ's scaling
            return wp * pos - wn * neg + (latent - latent.detach()) * through

    return TernaryWeight()


def _binary_module(w: np.ndarray, mask: np.ndarray | None):
    import torch
    from torch import nn

    class BinaryWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("keep", torch.from_numpy(_keep(w, mask).astype(np.float32)))

        def forward(self, latent: torch.Tensor) -> torch.Tensor:
            alpha = torch.from_numpy(binary_scales(latent.detach().cpu().numpy(), mask))[:, None]
            q = torch.where(latent >= 0, alpha, -alpha) * self.keep
            kept = latent * self.keep
            return kept + (q - kept).detach()

    return BinaryWeight()


def _ste_train(
    state: CompressedMLP,
    data: StageData,
    config: _LowBitConfig,
    make: Callable[[int], object],
    progress: Callable[[str], None] | None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list]:
    """Fine-tune with each layer's weight parametrized by ``make(i)``; returns the latent weights (pruned
    entries 0) with the biases, and the parametrization modules."""
    from torch.nn.utils import parametrize

    model = training_model(state, config)
    modules = [make(i) for i in range(len(state.layers))]
    for layer, module in zip(model.layers, modules, strict=True):
        parametrize.register_parametrization(layer, "weight", module)
    after_backward, after_step = mask_hooks(OriginalView(model), list(state.masks))
    params = [p for p in model.parameters() if p.requires_grad]
    train(model, data, config, config.epochs, early_stopping=True, parameters=params,
          after_backward=after_backward, after_step=after_step, progress=progress,
          teacher=frozen_teacher(state, config, data))  # fmt: skip
    return layer_arrays(model, state), modules


def _prepared(state: CompressedMLP, config: _LowBitConfig, what: str) -> CompressedMLP:
    check_unclustered(state, what)
    if not config.center_stats:
        return state
    return center_standardization(state, std_mantissa_bits=10 if config.half_precision else None)


def _ternary_state(
    source: CompressedMLP, latent: list, scales: list[tuple[float, float]], config: TernaryConfig
) -> CompressedMLP:
    out = source.copy()
    codebooks = []
    for (w, _b), mask, (wp, wn) in zip(latent, source.masks, scales, strict=True):
        wp, wn = (float(x) for x in _half(np.float32([abs(wp), abs(wn)]), config.half_precision))
        c, idx = ternary_codebook(ternary_codes(w, mask, config.threshold), wp, wn)
        if mask is not None:
            idx = np.where(mask, idx, 0).astype(np.uint8)
        codebooks.append((c, idx))
    out.layers = [(w, _half(b, config.half_precision)) for w, b in latent]
    return apply_clustering(out, codebooks)


def _binary_state(source: CompressedMLP, latent: list, config: BinaryConfig) -> CompressedMLP:
    out = source.copy()
    layers, quant = [], []
    for (w, b), mask in zip(latent, source.masks, strict=True):
        alpha = _half(binary_scales(w, mask), config.half_precision)
        signs = np.where(w >= 0, np.float32(1), np.float32(-1)) * _keep(w, mask)
        layers.append(
            ((signs * alpha[:, None]).astype(np.float32) + np.float32(0), _half(b, config.half_precision))
        )
        quant.append({"bits": 1, "scheme": "binary", "per_channel": True, "weight_scale": [float(a) for a in alpha],
                      "weight_zero_point": [0] * len(alpha), "weight_qmin": -1, "weight_qmax": 1})  # fmt: skip
    out.layers, out.quant = layers, quant
    out.validate()
    return out


def _record(name: str, config: object, state: CompressedMLP, out: CompressedMLP, data: StageData, **extra):
    return out.with_stage(
        stage_record(
            name,
            config,
            state,
            out,
            valid_ap_before=ap_of(state, data.X_valid, data.y_valid),
            valid_ap_after=ap_of(out, data.X_valid, data.y_valid),
            **extra,
        )  # fmt: skip
    )


def ternary_stage(
    state: CompressedMLP,
    data: StageData,
    config: TernaryConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """Ternary weights (TTQ): every layer becomes a ``[-Wn, 0, Wp]`` codebook, fine-tuned with a
    straight-through estimator.

    Returns:
        A new state (masks kept, one k <= 3 codebook per layer) with the stage record
        (``valid_ap_ptq``: AP of the ternarized input before fine-tuning, ``zero_fraction``: share of
        kept weights coded 0).

    Raises:
        ConfigError: when ``state`` is already clustered or quantized.
    """
    config = config or TernaryConfig()
    source = _prepared(state, config, "ternary quantization")
    init = [
        _ternary_init(w, ternary_codes(w, m, config.threshold))
        for (w, _b), m in zip(source.layers, source.masks, strict=True)
    ]
    ptq = _ternary_state(source, source.layers, init, config)
    latent, modules = _ste_train(
        source, data, config,
        lambda i: _ternary_module(source.layers[i][0], source.masks[i], config.threshold), progress,
    )  # fmt: skip
    scales = [(float(m.wp.detach()), float(m.wn.detach())) for m in modules]
    out = _ternary_state(source, latent, scales, config)
    out.stages = list(state.stages)
    kept = out.n_kept_weights()
    zeros = sum(
        int((w[m if m is not None else np.ones(w.shape, bool)] == 0).sum())
        for (w, _b), m in zip(out.layers, out.masks, strict=True)
    )
    return _record("ternary", config, state, out, data, valid_ap_ptq=ap_of(ptq, data.X_valid, data.y_valid),
                   zero_fraction=zeros / kept if kept else 0.0)  # fmt: skip


def binary_stage(
    state: CompressedMLP,
    data: StageData,
    config: BinaryConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """Binary weights ``alpha_j * sign(W)`` per output unit, fine-tuned with a straight-through estimator.

    Returns:
        A new state (masks kept; ``quant[i]``: the per-row scales of the +-1 grid, weight-only) with the
        stage record (``valid_ap_ptq``: AP of the binarized input before fine-tuning).

    Raises:
        ConfigError: when ``state`` is already clustered or quantized.
    """
    config = config or BinaryConfig()
    source = _prepared(state, config, "binary quantization")
    ptq = _binary_state(source, source.layers, config)
    latent, _ = _ste_train(
        source, data, config, lambda i: _binary_module(source.layers[i][0], source.masks[i]), progress
    )
    out = _binary_state(source, latent, config)
    out.stages = list(state.stages)
    return _record("binary", config, state, out, data, valid_ap_ptq=ap_of(ptq, data.X_valid, data.y_valid))
