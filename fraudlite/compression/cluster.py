"""Weight sharing (Han et al. 2016): per-layer 1-D k-means of the surviving weights, then fine-tuning
of the centroids, sparsity kept.

- :func:`compute_codebook` (:mod:`fraudlite.compression.kmeans`, re-exported here): Lloyd's k-means on
  the kept weights of one layer, linear initialization, centroids ascending, pruned entries excluded.
- Fine-tuning: each clustered layer's weight becomes a function of its centroids,
  ``W = centroids[indices] * mask`` (a ``torch.nn.utils.parametrize`` parametrization), so the gradient
  of a centroid is the sum of the gradients of the weights it represents and only centroids (and
  biases) train. Sparsity and the cluster assignment never change.
- ``half_precision`` (default on) rounds centroids, biases and the standardization stats to
  float16-representable float32 values after fine-tuning, so an encoder may store them in 16 bits
  losslessly; the effect on scores is ~1e-3 relative. ``mantissa_bits`` below 10 keeps fewer
  mantissa bits (the compact encoder drops the zero ones): the std exactly (folded into layer 0 before
  clustering), centroids and biases after fine-tuning (measured on the default data: 4 bits moved AP by
  < 0.001 and saved ~60 B of ~450).
- ``pow2_stats`` (default on) first reparametrizes the standardization exactly
  (:func:`pow2_standardization`): mean 0 and each std a power of two, the difference folded into
  layer 0 (column scaling keeps its zeros). An encoder then needs a flag and a small exponent per
  feature instead of two floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fraudlite.compression.compact import round_to_float16
from fraudlite.compression.finetune import (
    ap_of,
    check_training,
    frozen_teacher,
    mask_hooks,
    train,
    training_model,
)
from fraudlite.compression.kmeans import INITS, check_k, compute_codebook
from fraudlite.compression.standardization import center_standardization, pow2_standardization
from fraudlite.compression.state import Codebook, CompressedMLP, StageData, stage_record
from fraudlite.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "compute_codebook",
    "compute_codebooks",
    "fisher_diagonal",
    "apply_clustering",
    "clustered_parametrization",
    "parametrize_codebooks",
    "unclustered_masks",
    "layer_arrays",
    "finetune_centroids",
    "round_half",
    "cluster_sensitivity",
    "choose_per_layer_k",
    "pow2_standardization",
    "center_standardization",
    "cluster_stage",
]


_WEIGHTINGS = ("none", "fisher")
_AUTO_KS = (2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ClusterConfig:
    """Per-layer weight sharing.

    Attributes:
        k: clusters per layer (16 -> 4-bit indices); at most 256.
        per_layer_k: ``{layer index: k}`` overrides.
        auto_k_max_drop: when set, every layer not in ``per_layer_k`` gets the smallest power of two
            in 2..256 whose k-means-only validation AP drop (one layer at a time, see
            :func:`cluster_sensitivity`) is <= this; ``k`` is then ignored.
        init: ``"linear"`` (over [min, max], default) or ``"density"`` (quantiles).
        weighting: ``"none"`` or ``"fisher"`` (importance-weighted centroids, see :func:`fisher_diagonal`;
            plain k-means only: with ``ste_epochs > 0`` the clustering-aware training fits the centroids).
        max_iter: Lloyd iterations.
        finetune_epochs: centroid fine-tuning epochs, early-stopped on validation AP (0 = none).
        train_biases: fine-tune biases together with the centroids.
        half_precision: round centroids, biases and stats to float16-representable values.
        mantissa_bits: mantissa bits those float16 values keep (10 = all; the std only with
            ``center_stats``, where its rounding is folded into layer 0 exactly).
        pow2_stats: reparametrize the stats to mean 0 and power-of-two std before clustering.
        ste_epochs: epochs of clustering-aware training before the final assignment
            (:mod:`fraudlite.compression.cluster_ste`; 0 = plain k-means).
        ste_refit_steps: optimizer steps between centroid re-fits during that training.
        center_stats: fold the mean into the first bias (mean 0, weights unchanged) when ``pow2_stats``
            is off.
        lr, weight_decay, batch_size, patience, dropout, seed: fine-tuning settings.
        kd_alpha, kd_temperature, kd_teacher: knowledge distillation while fine-tuning, from the
            unclustered input (``kd_teacher = "input"``) or the model compression started from (``"source"``).
        early_stopping: keep the best validation epoch of the fine-tuning, or (False) the last one.
    """

    k: int = 16
    per_layer_k: dict[int, int] | None = None
    auto_k_max_drop: float | None = None
    init: str = "linear"
    weighting: str = "none"
    max_iter: int = 100
    finetune_epochs: int = 5
    train_biases: bool = True
    half_precision: bool = True
    mantissa_bits: int = 10
    pow2_stats: bool = True
    center_stats: bool = True
    ste_epochs: int = 0
    ste_refit_steps: int = 20
    lr: float = 3e-4
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    early_stopping: bool = True
    dropout: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    kd_teacher: str = "input"
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k, "k")
        if self.per_layer_k is not None:
            object.__setattr__(self, "per_layer_k", _per_layer_k(self.per_layer_k))
        if self.auto_k_max_drop is not None and not (
            math.isfinite(self.auto_k_max_drop) and 0 <= self.auto_k_max_drop < 1
        ):
            raise ConfigError(f"auto_k_max_drop must be in [0, 1) or None, got {self.auto_k_max_drop}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.weighting not in _WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {', '.join(_WEIGHTINGS)}, got {self.weighting!r}")
        if int(self.max_iter) < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if int(self.ste_epochs) < 0 or int(self.ste_refit_steps) < 1:
            raise ConfigError("ste_epochs must be >= 0 and ste_refit_steps >= 1")
        if int(self.finetune_epochs) < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not 0 <= int(self.mantissa_bits) <= 10:
            raise ConfigError(f"mantissa_bits must be in 0..10, got {self.mantissa_bits}")
        check_training(self)

    def k_for(self, layer: int) -> int:
        return (self.per_layer_k or {}).get(layer, self.k)


def _per_layer_k(value: object) -> dict[int, int]:
    if not isinstance(value, dict):
        raise ConfigError(f"per_layer_k must be a table {{layer index: k}}, got {value!r}")
    parsed = {}
    for key, k in value.items():
        try:
            i = int(key)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"per_layer_k: bad layer index {key!r}") from exc
        if i < 0:
            raise ConfigError(f"per_layer_k: bad layer index {key!r}")
        parsed[i] = check_k(k, f"per_layer_k[{key}]")
    return parsed


# ---------------------------------------------------------------------------- codebooks


def compute_codebooks(
    state: CompressedMLP, config: ClusterConfig | None = None, importance: list[np.ndarray] | None = None
) -> list[Codebook]:
    """A codebook per layer of ``state`` (masks respected), per :class:`ClusterConfig`, optionally
    importance-weighted (one array per layer)."""
    config = config or ClusterConfig()
    importance = importance or [None] * len(state.layers)
    return [
        compute_codebook(w, m, config.k_for(i), config.init, config.max_iter, imp)
        for i, ((w, _b), m, imp) in enumerate(zip(state.layers, state.masks, importance, strict=True))
    ]


def fisher_diagonal(
    state: CompressedMLP,
    X: np.ndarray,
    y: np.ndarray,
    rows: int = 32_768,
    batch_size: int = 64,
    seed: int = 0,
) -> list[np.ndarray]:
    """Empirical Fisher diagonal of every weight: mean over mini-batches of the squared gradient of
    the imbalance-weighted loss (a cheap stand-in for the Hessian diagonal). Deterministic.

    Args:
        state: the model.
        X, y: training rows; ``rows`` of them are sampled (fraud rows always included).
        rows, batch_size: sample size and mini-batch size.
        seed: sampling seed.

    Returns:
        float64 arrays shaped like each W.
    """
    import torch

    from fraudlite.models import MLPConfig, classification_loss, default_pos_weight

    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y > 0)
    neg = np.flatnonzero(y <= 0)
    n_neg = max(0, min(len(neg), rows - len(pos)))
    idx = np.sort(np.concatenate([pos[: rows // 2], rng.choice(neg, n_neg, replace=False)]))
    idx = idx[rng.permutation(len(idx))]
    model = state.to_model(MLPConfig(dropout=0.0)).eval()
    loss_fn = classification_loss(MLPConfig(), default_pos_weight(y))
    acc = [np.zeros(w.shape) for w, _ in state.layers]
    n_batches = 0
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        xb = torch.from_numpy(np.ascontiguousarray(X[b], dtype=np.float32))
        yb = torch.from_numpy(np.asarray(y[b], dtype=np.float32))
        model.zero_grad(set_to_none=True)
        loss_fn(xb, yb, model(xb)).backward()
        for a, layer in zip(acc, model.layers, strict=True):
            a += layer.weight.grad.detach().double().numpy() ** 2
        n_batches += 1
    return [a / max(n_batches, 1) for a in acc]


def apply_clustering(state: CompressedMLP, codebooks: Sequence[Codebook | None]) -> CompressedMLP:
    """A copy of ``state`` whose weights are ``centroids[indices]`` (0 at pruned entries).

    Also accepts a ``FraudMLP`` (returned as a clustered ``FraudMLP``, weights replaced in place).
    """
    if not isinstance(state, CompressedMLP):
        import torch

        snap = apply_clustering(CompressedMLP.from_model(state), codebooks)
        with torch.no_grad():
            for layer, (w, _b) in zip(state.layers, snap.layers, strict=True):
                layer.weight.copy_(torch.from_numpy(w))
        return state
    out = state.copy()
    if len(codebooks) != len(out.layers):
        raise ConfigError(f"need one codebook (or None) per layer ({len(out.layers)}), got {len(codebooks)}")
    out.codebooks = [
        None if cb is None else (np.asarray(cb[0], np.float32), np.asarray(cb[1], np.uint8))
        for cb in codebooks
    ]
    out.layers = [(out.decoded_weight(i), b) for i, (_w, b) in enumerate(out.layers)]
    out.validate()
    return out


# ---------------------------------------------------------------------------- centroid fine-tuning


def clustered_parametrization(indices: np.ndarray, mask: np.ndarray | None, centroids: np.ndarray):
    """A ``torch.nn.utils.parametrize`` module mapping centroids [k] to ``W = centroids[indices] * mask``
    (its ``right_inverse`` yields ``centroids``: register with ``unsafe=True``)."""
    import torch
    from torch import nn

    class SharedWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))
            keep = np.ones(indices.shape, dtype=bool) if mask is None else mask
            self.register_buffer("keep", torch.from_numpy(keep.astype(np.float32)))
            self._init = torch.from_numpy(np.asarray(centroids, dtype=np.float32).copy())

        def forward(self, c: torch.Tensor) -> torch.Tensor:
            return c[self.indices] * self.keep

        def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
            return self._init.clone()

    return SharedWeights()


def parametrize_codebooks(model: object, state: CompressedMLP) -> None:
    """Make each clustered layer's weight of ``model`` (a training copy of ``state``) a function of its
    centroids (:func:`clustered_parametrization`); unclustered layers are left alone."""
    from torch.nn.utils import parametrize

    for layer, cb, m in zip(model.layers, state.codebooks, state.masks, strict=True):
        if cb is not None:
            parametrize.register_parametrization(
                layer, "weight", clustered_parametrization(cb[1], m, cb[0]), unsafe=True
            )


def unclustered_masks(state: CompressedMLP) -> list[np.ndarray | None]:
    """The masks of the unclustered layers (None for clustered ones, whose parametrization keeps zeros)."""
    return [m if cb is None else None for m, cb in zip(state.masks, state.codebooks, strict=True)]


def layer_arrays(model: object, state: CompressedMLP) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer of ``model`` (a training copy of ``state``), float32 copies of the trained tensor and
    the bias. The trained tensor is a parametrization's ``original`` (a clustered layer's centroids) or
    the plain weight; an unclustered layer's pruned entries are zeroed."""
    from torch.nn.utils import parametrize

    def numpy(t: object) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    out = []
    for layer, m, cb in zip(model.layers, state.masks, state.codebooks, strict=True):
        is_param = parametrize.is_parametrized(layer, "weight")
        w = numpy(layer.parametrizations.weight.original if is_param else layer.weight)
        if cb is None and m is not None:
            w = np.where(m, w, np.float32(0))
        out.append((w, numpy(layer.bias)))
    return out


def finetune_centroids(
    state: CompressedMLP,
    data: StageData,
    config: ClusterConfig | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: object = None,
) -> CompressedMLP:
    """Train the centroids (and biases) of a clustered ``state``; masks and indices stay fixed.
    ``teacher`` (a module) gives soft targets when ``config.kd_alpha > 0``.

    Returns:
        A new state whose weights equal ``centroids[indices]`` exactly.
    """
    config = config or ClusterConfig()
    if int(config.finetune_epochs) < 1:
        return state.copy()
    model = training_model(state, config)
    parametrize_codebooks(model, state)
    for layer in model.layers:
        layer.bias.requires_grad_(bool(config.train_biases))
    # unclustered layers train as plain (masked) weights
    after_backward, after_step = mask_hooks(model, unclustered_masks(state))
    params = [p for p in model.parameters() if p.requires_grad]
    train(model, data, config, config.finetune_epochs, early_stopping=True, parameters=params,
          after_backward=after_backward, after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    trained = layer_arrays(model, state)
    codebooks = [
        None if cb is None else (t, cb[1]) for (t, _b), cb in zip(trained, state.codebooks, strict=True)
    ]
    out = state.copy()
    out.layers = [
        (t if cb is None else w, b)
        for (t, b), (w, _b), cb in zip(trained, out.layers, state.codebooks, strict=True)
    ]
    return apply_clustering(out, _sorted(codebooks, out.masks))


def _sorted(
    codebooks: list[Codebook | None], masks: list[np.ndarray | None] | None = None
) -> list[Codebook | None]:
    """Keep centroids ascending after training (remap indices; pruned entries keep index 0)."""
    out: list[Codebook | None] = []
    for cb, mask in zip(codebooks, masks or [None] * len(codebooks), strict=True):
        if cb is None:
            out.append(None)
            continue
        c, idx = cb
        order = np.argsort(c, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        new = rank[idx.astype(np.intp)].astype(np.uint8)
        if mask is not None:
            new[~mask] = 0
        out.append((c[order].copy(), new))
    return out


def round_half(state: CompressedMLP, mantissa_bits: int = 10) -> CompressedMLP:
    """Round centroids (or unclustered weights) and biases to float16 values with ``mantissa_bits``
    mantissa bits, mean and std to float16 (masks kept; merged duplicate centroids are kept as they are).

    Raises:
        ConfigError: when a value overflows float16.
    """
    out = state.copy()
    out.mean, out.std = round_to_float16(out.mean), round_to_float16(out.std)
    if (out.std <= 0).any():
        raise ConfigError("a standardization std rounds to 0 in float16; disable half_precision")

    def rnd(a: np.ndarray) -> np.ndarray:
        return round_to_float16(a, mantissa_bits)

    codebooks = [None if cb is None else (rnd(cb[0]), cb[1]) for cb in out.codebooks]
    layers = []
    for (w, b), cb in zip(out.layers, codebooks, strict=True):
        layers.append((w if cb is not None else rnd(w), rnd(b)))
    out.layers = layers
    if any(cb is not None for cb in codebooks):
        return apply_clustering(out, codebooks)
    out.validate()
    return out


def cluster_sensitivity(
    state: CompressedMLP,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    ks: Sequence[int] = (4, 8, 16, 32, 64),
    init: str = "linear",
) -> list[dict]:
    """Validation AP with one layer at a time clustered to each ``k`` (k-means only, no fine-tuning).

    Returns:
        Rows ``{"layer", "n_weights", "k", "ap", "ap_drop"}`` (``ap_drop`` vs the unclustered model).
    """
    base = ap_of(state, X_valid, y_valid)
    rows = []
    for i, ((w, _b), m) in enumerate(zip(state.layers, state.masks, strict=True)):
        for k in ks:
            codebooks: list[Codebook | None] = [None] * len(state.layers)
            codebooks[i] = compute_codebook(w, m, int(k), init)
            ap = ap_of(apply_clustering(state, codebooks), X_valid, y_valid)
            rows.append({"layer": i, "n_weights": int(w.size), "k": int(k), "ap": ap, "ap_drop": base - ap})
    return rows


def choose_per_layer_k(table: list[dict], max_drop: float) -> dict[int, int]:
    """Per layer, the smallest tried ``k`` whose k-means AP drop is <= ``max_drop`` (else the largest)."""
    out: dict[int, int] = {}
    for layer in sorted({int(r["layer"]) for r in table}):
        rows = sorted((r for r in table if int(r["layer"]) == layer), key=lambda r: r["k"])
        fits = [r["k"] for r in rows if r["ap_drop"] <= max_drop]
        out[layer] = int(fits[0] if fits else rows[-1]["k"])
    return out


def cluster_stage(
    state: CompressedMLP,
    data: StageData,
    config: ClusterConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The weight-sharing stage: k-means per layer, centroid fine-tuning, optional half precision.

    Raises:
        ConfigError: when ``state`` is already quantized.
    """
    config = config or ClusterConfig()
    if state.quant is not None:
        raise ConfigError("weight sharing must run before quantization; reorder the stages")
    ap_before = ap_of(state, data.X_valid, data.y_valid)
    source = state
    if config.pow2_stats and state.codebooks[0] is None:
        source = pow2_standardization(state)
    elif config.center_stats:
        bits = int(config.mantissa_bits) if config.half_precision and state.codebooks[0] is None else None
        source = center_standardization(state, std_mantissa_bits=bits)
    chosen = None
    if config.auto_k_max_drop is not None:
        table = cluster_sensitivity(source, data.X_valid, data.y_valid, _AUTO_KS, config.init)
        chosen = {**choose_per_layer_k(table, config.auto_k_max_drop), **(config.per_layer_k or {})}
        config = replace(config, per_layer_k=chosen)
    if int(config.ste_epochs) > 0:
        from fraudlite.compression.cluster_ste import apply_ste_training

        teacher = frozen_teacher(state, config, data)
        source, codebooks = apply_ste_training(source, data, config, progress, teacher)
        clustered = apply_clustering(source, codebooks)
    else:
        importance = (
            fisher_diagonal(source, data.X_train, data.y_train, seed=config.seed)
            if config.weighting == "fisher"
            else None
        )
        clustered = apply_clustering(source, compute_codebooks(source, config, importance))
    ap_kmeans = ap_of(clustered, data.X_valid, data.y_valid)
    tuned = finetune_centroids(clustered, data, config, progress, teacher=frozen_teacher(state, config, data))
    ap_tuned = ap_of(tuned, data.X_valid, data.y_valid)
    if ap_tuned < ap_kmeans:  # early stopping keeps the best epoch, but never worse than plain k-means
        tuned = clustered
    out = round_half(tuned, int(config.mantissa_bits)) if config.half_precision else tuned
    ap_after = ap_of(out, data.X_valid, data.y_valid)
    out.stages = list(state.stages)
    return out.with_stage(
        stage_record(
            "cluster",
            config,
            state,
            out,
            valid_ap_before=ap_before,
            valid_ap_kmeans=ap_kmeans,
            valid_ap_after=ap_after,
            bits=out.cluster_bits(),
            chosen_k=None if chosen is None else {str(i): k for i, k in sorted(chosen.items())},
        )
    )
