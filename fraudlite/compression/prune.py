"""Pruning: global magnitude pruning on a gradual polynomial schedule, per-layer sensitivity analysis,
and structured pruning of hidden units that physically removes them (smaller dense matrices).

Unstructured (Han et al. 2015, Zhu & Gupta 2017 / TF-MOT ``PolynomialDecay``): the sparsity after
mask update ``t`` of ``steps`` is ``s_f + (s_i - s_f) * (1 - t / steps) ** power``; updates are spread
over the first 75% of ``prune_epochs`` of training, then the network fine-tunes at the final masks with
early stopping on validation AP. Masks stay applied by two :func:`fraudlite.models.run_training` hooks:
gradients of pruned weights are zeroed after ``backward`` and the weights re-zeroed after each step.

Structured: a hidden unit's importance is ``||W_next[:, j]|| * std(h_j)`` on calibration rows (the
expected error of replacing the unit by its mean), or ``||W_in[j]|| * ||W_next[:, j]||`` without data.
Removed units are folded into the next layer's bias (``b_next += W_next[:, j] * mean(h_j)``), so units
that are dead or constant disappear exactly (:func:`remove_dead_units`, no data needed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.errors import ConfigError

__all__ = [
    "PruneConfig",
    "StructuredConfig",
    "sparsity_schedule",
    "compute_magnitude_masks",
    "apply_masks",
    "mask_hooks",
    "prune_gradual",
    "prune_stage",
    "sensitivity_analysis",
    "choose_per_layer_sparsity",
    "compute_unit_importance",
    "compute_unit_keep",
    "apply_structured_pruning",
    "remove_dead_units",
    "structured_prune_stage",
]

logger = logging.getLogger(__name__)

_SCHEDULES = ("polynomial", "one_shot")
_IMPORTANCE = ("output", "activation", "weight")


def _check_training(cfg: object) -> None:
    """Shared checks of the fine-tuning settings every technique config carries."""
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if int(cfg.patience) < 1:
        raise ConfigError(f"patience must be >= 1, got {cfg.patience}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if int(cfg.seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if not 0.0 <= getattr(cfg, "kd_alpha", 0.0) <= 1.0:
        raise ConfigError(f"kd_alpha must be in [0, 1], got {cfg.kd_alpha}")
    if not (math.isfinite(getattr(cfg, "kd_temperature", 1.0)) and getattr(cfg, "kd_temperature", 1.0) > 0):
        raise ConfigError(f"kd_temperature must be > 0, got {cfg.kd_temperature}")


@dataclass(frozen=True)
class PruneConfig:
    """Global unstructured magnitude pruning.

    Attributes:
        sparsity: final fraction of weights set to zero, over the layers not in ``per_layer``.
        schedule: ``"polynomial"`` (gradual, ``steps`` mask updates) or ``"one_shot"``.
        initial_sparsity: sparsity of the first update of the polynomial schedule.
        power: exponent of the polynomial decay (3 as in Zhu & Gupta).
        steps: mask updates of the polynomial schedule.
        prune_epochs: training epochs over which the updates are spread (0 with one_shot: prune, then
            only fine-tune).
        finetune_epochs: epochs at the final masks, early-stopped on validation AP (0 = none).
        per_layer: ``{layer index: sparsity}`` pruned layer by layer (e.g. from
            :func:`choose_per_layer_sparsity`); the other layers share one global threshold.
        lr, weight_decay, batch_size, patience, dropout, seed: fine-tuning settings.
        kd_alpha, kd_temperature: fine-tune with knowledge distillation from the unpruned model
            (weight of the soft term; 0 = labels only), see :mod:`fraudlite.compression.distill`.
        remove_dead_units: drop hidden units left without inputs or outputs (exact).
    """

    sparsity: float = 0.9
    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    power: float = 3.0
    steps: int = 16
    prune_epochs: int = 4
    finetune_epochs: int = 10
    per_layer: dict[int, float] | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 3
    dropout: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    remove_dead_units: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ConfigError(f"initial_sparsity must be in [0, sparsity], got {self.initial_sparsity}")
        if not (math.isfinite(self.power) and self.power > 0):
            raise ConfigError(f"power must be > 0, got {self.power}")
        if int(self.steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if int(self.prune_epochs) < 0 or int(self.finetune_epochs) < 0:
            raise ConfigError("prune_epochs and finetune_epochs must be >= 0")
        if self.schedule == "polynomial" and int(self.prune_epochs) < 1:
            raise ConfigError("the polynomial schedule needs prune_epochs >= 1")
        object.__setattr__(self, "per_layer", _per_layer(self.per_layer))
        _check_training(self)


@dataclass(frozen=True)
class StructuredConfig:
    """Structured pruning of hidden units (physically smaller layers).

    Attributes:
        hidden: target width of every hidden layer; None = ``keep_ratio`` of each current width.
        keep_ratio: fraction of units kept per hidden layer when ``hidden`` is None.
        steps: removal rounds (widths shrink geometrically), each followed by ``epochs_per_step``.
        epochs_per_step: fine-tuning epochs after each round (no early stopping).
        finetune_epochs: final fine-tuning epochs, early-stopped on validation AP.
        importance: ``"output"`` (default), ``"activation"`` (both need data) or ``"weight"``; see
            :func:`compute_unit_importance`.
        calibration_rows: training rows used for activation statistics.
        lr, weight_decay, batch_size, patience, dropout, seed: fine-tuning settings.
        kd_alpha, kd_temperature: knowledge distillation from the input model while fine-tuning.
    """

    hidden: tuple[int, ...] | None = None
    keep_ratio: float = 0.5
    steps: int = 4
    epochs_per_step: int = 1
    finetune_epochs: int = 10
    importance: str = "output"
    calibration_rows: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 3
    dropout: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden is not None:
            try:
                hidden = tuple(int(h) for h in self.hidden)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"hidden must be a sequence of widths, got {self.hidden!r}") from exc
            if any(h < 1 for h in hidden):
                raise ConfigError(f"hidden widths must be >= 1, got {hidden}")
            object.__setattr__(self, "hidden", hidden)
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if int(self.steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if int(self.epochs_per_step) < 0 or int(self.finetune_epochs) < 0:
            raise ConfigError("epochs_per_step and finetune_epochs must be >= 0")
        if self.importance not in _IMPORTANCE:
            raise ConfigError(f"importance must be one of {', '.join(_IMPORTANCE)}, got {self.importance!r}")
        if int(self.calibration_rows) < 1:
            raise ConfigError(f"calibration_rows must be >= 1, got {self.calibration_rows}")
        _check_training(self)


def _per_layer(value: object) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"per_layer must be a table {{layer index: sparsity}}, got {value!r}")
    out = {}
    for key, s in value.items():
        try:
            i = int(key)
            s = float(s)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"per_layer: bad entry {key!r} = {s!r}") from exc
        if i < 0 or not 0.0 <= s < 1.0:
            raise ConfigError(f"per_layer: layer {key!r} needs an index >= 0 and a sparsity in [0, 1)")
        out[i] = s
    return out


# ---------------------------------------------------------------------------- pure mask maths


def sparsity_schedule(config: PruneConfig) -> list[float]:
    """Target sparsity of each mask update (the last equals ``config.sparsity``)."""
    if config.schedule == "one_shot":
        return [config.sparsity]
    s_i, s_f, n = config.initial_sparsity, config.sparsity, int(config.steps)
    return [s_f + (s_i - s_f) * (1.0 - t / n) ** config.power for t in range(1, n + 1)]


def _weights(obj: object) -> list[np.ndarray]:
    """Weight matrices of a CompressedMLP, a FraudMLP or a ``[(W, b)]`` list, as numpy."""
    if isinstance(obj, CompressedMLP):
        return [w for w, _ in obj.layers]
    if hasattr(obj, "layers") and hasattr(obj, "normalization"):
        return [layer.weight.detach().cpu().numpy() for layer in obj.layers]
    return [np.asarray(w, dtype=np.float32) for w, _ in obj]


def compute_magnitude_masks(
    layers: object, sparsity: float, per_layer: dict[int, float] | None = None
) -> list[np.ndarray]:
    """Keep-masks that zero the smallest-magnitude weights.

    Layers in ``per_layer`` are pruned each to its own sparsity; the others share one global threshold
    so that ``sparsity`` of their weights is pruned. Ties break by position (deterministic), and every
    layer keeps at least its largest weight.

    Args:
        layers: a :class:`CompressedMLP`, a ``FraudMLP`` or ``[(W, b), ...]``.
        sparsity: global fraction to prune, in [0, 1).
        per_layer: ``{layer index: sparsity}`` overrides.

    Returns:
        One bool array per layer, shaped like its W (True = kept).

    Raises:
        ConfigError: on a sparsity outside [0, 1) or a per-layer index out of range.
    """
    ws = [np.abs(w) for w in _weights(layers)]
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    per_layer = _per_layer(per_layer) or {}
    bad = [i for i in per_layer if i >= len(ws)]
    if bad:
        raise ConfigError(f"per_layer: layer index {bad[0]} out of range (the model has {len(ws)} layers)")
    masks: list[np.ndarray | None] = [None] * len(ws)
    for i, s in per_layer.items():
        masks[i] = _prune_smallest([ws[i]], s)[0]
    shared = [i for i in range(len(ws)) if i not in per_layer]
    if shared:
        for i, m in zip(shared, _prune_smallest([ws[i] for i in shared], sparsity), strict=True):
            masks[i] = m
    for w, m in zip(ws, masks, strict=True):
        if not m.any():
            m.flat[int(np.argmax(w))] = True
    return masks  # type: ignore[return-value]


def _prune_smallest(ws: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    flat = np.concatenate([w.ravel() for w in ws])
    n_prune = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:n_prune]] = False
    out, start = [], 0
    for w in ws:
        out.append(keep[start : start + w.size].reshape(w.shape))
        start += w.size
    return out


def apply_masks(model: object, masks: Sequence[np.ndarray | None]) -> None:
    """Zero the pruned weights of a ``FraudMLP`` in place (masks as from :func:`compute_magnitude_masks`)."""
    import torch

    with torch.no_grad():
        for layer, m in zip(model.layers, masks, strict=True):
            if m is not None:
                layer.weight.mul_(torch.as_tensor(np.asarray(m, dtype=bool)).to(layer.weight.dtype))


def mask_hooks(model: object, masks: list[np.ndarray | None]) -> tuple[Callable, Callable]:
    """``(after_backward, after_step)`` hooks for :func:`fraudlite.models.run_training` that keep the
    masks applied. The hooks read ``masks`` (a list) at call time, so replacing its items re-masks."""
    import torch

    cache: dict[int, tuple[int, torch.Tensor]] = {}

    def tensor(i: int) -> torch.Tensor | None:
        m = masks[i]
        if m is None:
            return None
        hit = cache.get(i)
        if hit is None or hit[0] != id(m):
            hit = (id(m), torch.as_tensor(np.asarray(m, dtype=bool)).to(torch.float32))
            cache[i] = hit
        return hit[1]

    def after_backward(module: object) -> None:
        for i, layer in enumerate(model.layers):
            t = tensor(i)
            if t is not None and layer.weight.grad is not None:
                layer.weight.grad.mul_(t)

    def after_step(module: object) -> None:
        with torch.no_grad():
            for i, layer in enumerate(model.layers):
                t = tensor(i)
                if t is not None:
                    layer.weight.mul_(t)

    return after_backward, after_step


# ---------------------------------------------------------------------------- training helpers


def _mlp_config(cfg: object, epochs: int, schedule: str = "cosine"):
    from fraudlite.models import MLPConfig

    return MLPConfig(
        dropout=cfg.dropout,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=int(cfg.batch_size),
        max_epochs=max(1, int(epochs)),
        patience=int(cfg.patience),
        schedule=schedule,
        seed=int(cfg.seed),
    )


def _loss(y: np.ndarray):
    from fraudlite.models import MLPConfig, classification_loss, default_pos_weight

    return classification_loss(MLPConfig(), default_pos_weight(y))


def _train(
    model: object,
    data: StageData,
    cfg: object,
    epochs: int,
    *,
    early_stopping: bool,
    schedule: str = "cosine",
    after_backward: Callable | None = None,
    after_step: Callable | None = None,
    parameters: object = None,
    progress: Callable[[str], None] | None = None,
    teacher: object = None,
) -> list[dict]:
    """One call of the shared training loop; ``epochs == 0`` does nothing. With a ``teacher`` and
    ``cfg.kd_alpha > 0`` the loss mixes in the teacher's soft targets."""
    from fraudlite.models import run_training

    if int(epochs) < 1:
        return []
    if teacher is not None and cfg.kd_alpha > 0:
        from fraudlite.compression.distill import DistillConfig, distillation_loss
        from fraudlite.models import default_pos_weight

        kd = DistillConfig(alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
        loss = distillation_loss(teacher, kd, default_pos_weight(data.y_train))
    else:
        loss = _loss(data.y_train)
    return run_training(
        model,
        loss,
        data.X_train,
        data.y_train,
        data.X_valid if early_stopping else None,
        data.y_valid if early_stopping else None,
        _mlp_config(cfg, epochs, schedule),
        progress=progress,
        parameters=parameters,
        after_backward=after_backward,
        after_step=after_step,
    )


def _teacher(state: CompressedMLP, cfg: object):
    """The input model as a frozen teacher when ``cfg.kd_alpha > 0``, else None."""
    if cfg.kd_alpha <= 0:
        return None
    teacher = state.to_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _model(state: CompressedMLP, cfg: object):
    from fraudlite.models import MLPConfig

    return state.to_model(MLPConfig(dropout=cfg.dropout, seed=int(cfg.seed)))


def _check_unclustered(state: CompressedMLP, what: str) -> None:
    if any(cb is not None for cb in state.codebooks) or state.quant is not None:
        raise ConfigError(
            f"{what} must run before weight sharing and quantization (it would destroy the codebooks); "
            "reorder the stages"
        )


def _ap(state: CompressedMLP, X: np.ndarray, y: np.ndarray) -> float:
    from fraudlite.models.metrics import average_precision

    return float(average_precision(y, state.logits(X)))


# ---------------------------------------------------------------------------- unstructured pruning


def prune_gradual(
    model: object,
    X: np.ndarray,
    y: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    config: PruneConfig | None = None,
    masks: list[np.ndarray | None] | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: object = None,
) -> list[np.ndarray]:
    """Prune a ``FraudMLP`` in place on the schedule, fine-tuning between and after the mask updates.

    Args:
        model: the ``FraudMLP`` (trained).
        X, y: training rows (raw features, 0/1 labels).
        X_valid, y_valid: validation rows for early stopping of the final fine-tuning.
        config: the schedule and fine-tuning settings.
        masks: existing masks to start from (pruned weights never come back).
        progress: one line per epoch.
        teacher: a module giving soft targets when ``config.kd_alpha > 0`` (default: none).

    Returns:
        The final keep-masks (the model's pruned weights are exactly 0).
    """
    config = config or PruneConfig()
    data = StageData(X, y, X_valid, y_valid)
    targets = sparsity_schedule(config)
    current: list[np.ndarray | None] = list(masks) if masks is not None else [None] * len(model.layers)
    apply_masks(model, current)
    after_backward, after_step = mask_hooks(model, current)

    def update(sparsity: float) -> None:
        new = compute_magnitude_masks(model, sparsity, config.per_layer)
        for i, m in enumerate(new):
            current[i] = m if current[i] is None else (m & current[i])
        apply_masks(model, current)

    if config.schedule == "one_shot" or int(config.prune_epochs) == 0:
        update(config.sparsity)
        _train(model, data, config, config.prune_epochs, early_stopping=False, schedule="constant",
               after_backward=after_backward, after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    else:
        steps_per_epoch = max(1, math.ceil(len(X) / int(config.batch_size)))
        span = 0.75 * int(config.prune_epochs) * steps_per_epoch
        update_at = {1 + int(t * span / len(targets)): s for t, s in enumerate(targets)}
        counter = [0]

        def step_hook(module: object) -> None:
            counter[0] += 1
            after_step(module)  # first re-zero, so momentum cannot revive a pruned weight into the ranking
            if counter[0] in update_at:
                update(update_at[counter[0]])

        _train(model, data, config, config.prune_epochs, early_stopping=False, schedule="constant",
               after_backward=after_backward, after_step=step_hook, progress=progress, teacher=teacher)  # fmt: skip
        update(config.sparsity)  # in case rounding left the last update out
    _train(model, data, config, config.finetune_epochs, early_stopping=True,
           after_backward=after_backward, after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    apply_masks(model, current)
    return [np.asarray(m, dtype=bool) for m in current]  # type: ignore[arg-type]


def prune_stage(
    state: CompressedMLP,
    data: StageData,
    config: PruneConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The pruning stage: gradual magnitude pruning of ``state`` (+ exact removal of dead units).

    Returns:
        A new :class:`CompressedMLP` with masks (stage record appended).

    Raises:
        ConfigError: when ``state`` already has codebooks or quantization parameters.
    """
    config = config or PruneConfig()
    _check_unclustered(state, "pruning")
    model = _model(state, config)
    ap_before = _ap(state, data.X_valid, data.y_valid)
    masks = prune_gradual(model, data.X_train, data.y_train, data.X_valid, data.y_valid, config,
                          masks=list(state.masks), progress=progress, teacher=_teacher(state, config))  # fmt: skip
    masks = [None if m.all() else m for m in masks]
    out = CompressedMLP.from_model(model, masks=masks, stages=state.stages)
    if config.remove_dead_units:
        out = remove_dead_units(out)
    ap_after = _ap(out, data.X_valid, data.y_valid)
    return out.with_stage(
        stage_record("prune", config, state, out, valid_ap_before=ap_before, valid_ap_after=ap_after)
    )


# ---------------------------------------------------------------------------- sensitivity


def sensitivity_analysis(
    model: object,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95),
) -> list[dict]:
    """Validation AP with one layer at a time magnitude-pruned to each sparsity (no fine-tuning).

    Args:
        model: a :class:`CompressedMLP` or a ``FraudMLP``.
        X_valid, y_valid: validation rows.
        sparsities: sparsities to try per layer.

    Returns:
        Rows ``{"layer", "n_weights", "sparsity", "ap", "ap_drop"}`` (``ap_drop`` vs the unpruned model).
    """
    state = model if isinstance(model, CompressedMLP) else CompressedMLP.from_model(model)
    base = _ap(state, X_valid, y_valid)
    rows = []
    for i, (w, _b) in enumerate(state.layers):
        for s in sparsities:
            trial = state.copy()
            keep = _prune_smallest([np.abs(w)], float(s))[0]
            if state.masks[i] is not None:
                keep &= state.masks[i]
            if not keep.any():
                keep.flat[int(np.argmax(np.abs(w)))] = True
            trial.layers[i] = (np.where(keep, w, np.float32(0)), trial.layers[i][1])
            ap = _ap(trial, X_valid, y_valid)
            rows.append(
                {"layer": i, "n_weights": int(w.size), "sparsity": float(s), "ap": ap, "ap_drop": base - ap}
            )
    return rows


def choose_per_layer_sparsity(table: list[dict], max_drop: float) -> dict[int, float]:
    """Per layer, the highest tried sparsity whose one-shot AP drop is <= ``max_drop`` (0 if none)."""
    out: dict[int, float] = {}
    for row in table:
        layer = int(row["layer"])
        out.setdefault(layer, 0.0)
        if row["ap_drop"] <= max_drop and row["sparsity"] > out[layer]:
            out[layer] = float(row["sparsity"])
    return out


# ---------------------------------------------------------------------------- structured pruning


def _activations(state: CompressedMLP, X: np.ndarray) -> list[np.ndarray]:
    """Post-ReLU activations of every hidden layer on ``X`` (float32)."""
    std = np.where(np.isfinite(state.std) & (state.std > 0), state.std, np.float32(1))
    h = (np.asarray(X, dtype=np.float32) - state.mean) / std
    out = []
    for w, b in state.layers[:-1]:
        h = np.maximum(h @ w.T + b, 0)
        out.append(h)
    return out


def compute_unit_importance(
    model: object, X: np.ndarray | None = None, method: str | None = None
) -> list[np.ndarray]:
    """Importance of every hidden unit (one float64 array per hidden layer); dead or constant units score 0.

    Methods:
        ``"output"`` (default with ``X``): mean squared change of the model's logits on ``X`` when the
        unit is replaced by its mean activation (what :func:`apply_structured_pruning` does), measured
        unit by unit through the rest of the network.
        ``"activation"``: ``||W_next[:, j]|| * std(h_j)``, the RMS change of the next layer's input.
        ``"weight"`` (default without ``X``): ``||W_in[j]|| * ||W_next[:, j]||``.
    """
    state = model if isinstance(model, CompressedMLP) else CompressedMLP.from_model(model)
    method = method or ("output" if X is not None else "weight")
    if method not in _IMPORTANCE:
        raise ConfigError(f"importance must be one of {', '.join(_IMPORTANCE)}, got {method!r}")
    if method != "weight" and X is None:
        raise ConfigError(f"importance {method!r} needs calibration rows")
    n_hidden = len(state.layers) - 1
    out_norms = [np.linalg.norm(state.layers[i + 1][0].astype(np.float64), axis=0) for i in range(n_hidden)]
    if method == "weight":
        return [
            np.linalg.norm(state.layers[i][0].astype(np.float64), axis=1) * out_norms[i]
            for i in range(n_hidden)
        ]
    acts = [a.astype(np.float64) for a in _activations(state, X)]
    if method == "activation":
        return [a.std(axis=0) * n for a, n in zip(acts, out_norms, strict=True)]
    z = _forward_from(state, n_hidden - 1, acts[-1]) if n_hidden else None
    result = []
    for i, a in enumerate(acts):
        mean = a.mean(axis=0)
        scores = np.zeros(a.shape[1])
        w_next, b_next = (x.astype(np.float64) for x in state.layers[i + 1])
        pre = a @ w_next.T + b_next  # next layer's pre-activation
        for j in range(a.shape[1]):
            delta = np.outer(mean[j] - a[:, j], w_next[:, j])
            z_j = _forward_from(state, i, None, pre + delta)
            scores[j] = float(np.mean((z_j - z) ** 2))
        result.append(scores)
    return result


def _forward_from(
    state: CompressedMLP, i: int, h: np.ndarray | None, pre: np.ndarray | None = None
) -> np.ndarray:
    """Logits (float64) from hidden layer ``i``'s output ``h``, or from layer ``i + 1``'s pre-activation."""
    if pre is None:
        w, b = state.layers[i + 1]
        pre = h @ w.T.astype(np.float64) + b
    for w, b in state.layers[i + 2 :]:
        pre = np.maximum(pre, 0) @ w.T.astype(np.float64) + b
    return pre.reshape(-1)


def compute_unit_keep(importance: list[np.ndarray], widths: Sequence[int]) -> list[np.ndarray]:
    """Indices (ascending) of the ``widths[l]`` most important units of each hidden layer."""
    if len(widths) != len(importance):
        raise ConfigError(f"need one width per hidden layer ({len(importance)}), got {len(widths)}")
    keep = []
    for imp, n in zip(importance, widths, strict=True):
        n = max(1, min(int(n), len(imp)))
        keep.append(np.sort(np.argsort(-imp, kind="stable")[:n]))
    return keep


def apply_structured_pruning(model: object, keep: list[np.ndarray], X: np.ndarray | None = None) -> object:
    """Physically remove the hidden units not in ``keep``; each removed unit's mean output (on ``X``;
    its constant output when it has no inputs; else 0) is folded into the next layer's bias.

    Args:
        model: a ``FraudMLP`` or a :class:`CompressedMLP` (masks, codebooks and per-unit quantization
            parameters are sliced along).
        keep: per hidden layer, the unit indices to keep.
        X: rows to compute mean activations on (optional).

    Returns:
        The same kind of object, with smaller layers.
    """
    is_state = isinstance(model, CompressedMLP)
    state = (model if is_state else CompressedMLP.from_model(model)).copy()
    if len(keep) != len(state.layers) - 1:
        raise ConfigError(f"need one keep list per hidden layer ({len(state.layers) - 1}), got {len(keep)}")
    for i, idx in enumerate(keep):
        # activations are recomputed per layer: earlier removals change the later layers' inputs
        idx = np.asarray(idx, dtype=np.intp)
        w, b = state.layers[i]
        if len(idx) == w.shape[0]:
            continue
        if len(idx) == 0:
            raise ConfigError(f"hidden layer {i} must keep at least one unit")
        if X is not None:
            mean_act = _activations(state, X)[i].astype(np.float64).mean(axis=0)
        else:
            mean_act = np.where(~w.any(axis=1), np.maximum(b, 0), 0.0).astype(np.float64)
        removed = np.setdiff1d(np.arange(w.shape[0]), idx)
        w_next, b_next = state.layers[i + 1]
        b_next = (
            b_next.astype(np.float64) + w_next[:, removed].astype(np.float64) @ mean_act[removed]
        ).astype(np.float32)
        state.layers[i] = (w[idx].copy(), b[idx].copy())
        state.layers[i + 1] = (w_next[:, idx].copy(), b_next)
        _slice_structure(state, i, rows=idx)
        _slice_structure(state, i + 1, cols=idx)
    state.validate()
    if is_state:
        return state
    return state.to_model(model.config)


def _slice_structure(
    state: CompressedMLP, i: int, rows: np.ndarray | None = None, cols: np.ndarray | None = None
) -> None:
    def cut(a: np.ndarray) -> np.ndarray:
        a = a[rows] if rows is not None else a
        return (a[:, cols] if cols is not None else a).copy()

    if state.masks[i] is not None:
        state.masks[i] = cut(state.masks[i])
    if state.codebooks[i] is not None:
        c, ind = state.codebooks[i]
        state.codebooks[i] = (c, cut(ind))
    if state.quant is not None and rows is not None:
        q = dict(state.quant[i])
        for key in ("weight_scale", "weight_zero_point"):
            if key in q and len(q[key]) > 1:
                q[key] = [q[key][j] for j in rows.tolist()]
        state.quant[i] = q


def remove_dead_units(state: CompressedMLP) -> CompressedMLP:
    """Remove hidden units with no incoming or no outgoing weight, exactly (eval-mode outputs equal up
    to float rounding): a unit without inputs outputs ``relu(b_j)``, folded into the next bias."""
    state = state.copy()
    while True:
        keep = []
        for i in range(len(state.layers) - 1):
            w = state.layers[i][0]
            w_next = state.layers[i + 1][0]
            alive = w.any(axis=1) & w_next.any(axis=0)
            if not alive.any():  # keep one unit so the layer still exists
                alive[int(np.argmax(np.abs(w_next).sum(axis=0) + np.abs(w).sum(axis=1)))] = True
            keep.append(np.flatnonzero(alive))
        if all(len(k) == state.layers[i][0].shape[0] for i, k in enumerate(keep)):
            return state
        state = apply_structured_pruning(state, keep)


def _schedule_widths(start: Sequence[int], end: Sequence[int], steps: int) -> list[list[int]]:
    out = []
    for t in range(1, steps + 1):
        out.append([max(e, int(round(s * (e / s) ** (t / steps)))) for s, e in zip(start, end, strict=True)])
    return out


def structured_prune_stage(
    state: CompressedMLP,
    data: StageData,
    config: StructuredConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The structured stage: shrink hidden layers to the target widths in ``steps`` rounds, each
    removing the least important units (mean folded into the next bias) and fine-tuning; existing
    masks are kept applied.

    Raises:
        ConfigError: wrong number of target widths, a target wider than the layer, or a clustered state.
    """
    config = config or StructuredConfig()
    _check_unclustered(state, "structured pruning")
    start = list(state.hidden)
    target = (
        list(config.hidden)
        if config.hidden is not None
        else [max(1, round(h * config.keep_ratio)) for h in start]
    )
    if len(target) != len(start):
        raise ConfigError(f"hidden: the model has {len(start)} hidden layers, got {len(target)} widths")
    if any(t > s for t, s in zip(target, start, strict=True)):
        raise ConfigError(f"hidden: target widths {tuple(target)} exceed the current widths {tuple(start)}")
    ap_before = _ap(state, data.X_valid, data.y_valid)
    rng = np.random.default_rng(config.seed)
    n_cal = min(int(config.calibration_rows), len(data.X_train))
    calib = data.X_train[np.sort(rng.choice(len(data.X_train), n_cal, replace=False))]
    current = state.copy()
    teacher = _teacher(state, config)
    for widths in _schedule_widths(start, target, int(config.steps)):
        keep = compute_unit_keep(compute_unit_importance(current, calib, config.importance), widths)
        current = apply_structured_pruning(current, keep, calib)
        current = _finetune_masked(current, data, config, config.epochs_per_step, False, progress, teacher)
    current = _finetune_masked(current, data, config, config.finetune_epochs, True, progress, teacher)
    ap_after = _ap(current, data.X_valid, data.y_valid)
    current.stages = list(state.stages)
    return current.with_stage(
        stage_record("structured", config, state, current, valid_ap_before=ap_before, valid_ap_after=ap_after)
    )


def _finetune_masked(
    state: CompressedMLP,
    data: StageData,
    cfg: object,
    epochs: int,
    early_stopping: bool,
    progress: object,
    teacher: object = None,
) -> CompressedMLP:
    if int(epochs) < 1:
        return state
    model = _model(state, cfg)
    masks = list(state.masks)
    after_backward, after_step = mask_hooks(model, masks)
    _train(model, data, cfg, epochs, early_stopping=early_stopping, after_backward=after_backward,
           after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    return CompressedMLP.from_model(model, masks=masks, stages=state.stages)
