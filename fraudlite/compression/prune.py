"""Pruning: global magnitude pruning on a gradual polynomial schedule and per-layer sensitivity analysis;
structured pruning of hidden units lives in :mod:`fraudlite.compression.structured` (re-exported here).

Unstructured (Han et al. 2015, Zhu & Gupta 2017 / TF-MOT ``PolynomialDecay``): the sparsity after
mask update ``t`` of ``steps`` is ``s_f + (s_i - s_f) * (1 - t / steps) ** power``; updates are spread
over the first 75% of ``prune_epochs`` of training, then the network fine-tunes at the final masks with
early stopping on validation AP. Masks stay applied by two :func:`fraudlite.models.run_training` hooks
(:func:`mask_hooks`): gradients of pruned weights are zeroed after ``backward`` and the weights re-zeroed
after each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.finetune import (
    ap_of,
    check_training,
    check_unclustered,
    frozen_teacher,
    mask_hooks,
    train,
    training_model,
)
from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.compression.structured import (
    StructuredConfig,
    apply_structured_pruning,
    compute_unit_importance,
    compute_unit_keep,
    remove_dead_units,
    structured_prune_stage,
)
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


_SCHEDULES = ("polynomial", "one_shot")


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
        kd_alpha, kd_temperature, kd_teacher: fine-tune with knowledge distillation (weight of the soft
            term, 0 = labels only; see :mod:`fraudlite.compression.distill`) from the unpruned input
            (``kd_teacher = "input"``) or from the model compression started from (``"source"``).
        early_stopping: keep the epoch with the best validation AP (True) or train the whole schedule
            and keep the last weights (False: validation then stays an unbiased check for the search).
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
    early_stopping: bool = True
    dropout: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    kd_teacher: str = "input"
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
        check_training(self)


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
        train(model, data, config, config.prune_epochs, early_stopping=False, schedule="constant",
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

        train(model, data, config, config.prune_epochs, early_stopping=False, schedule="constant",
              after_backward=after_backward, after_step=step_hook, progress=progress, teacher=teacher)  # fmt: skip
        update(config.sparsity)  # in case rounding left the last update out
    train(model, data, config, config.finetune_epochs, early_stopping=True,
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
    check_unclustered(state, "pruning")
    model = training_model(state, config)
    ap_before = ap_of(state, data.X_valid, data.y_valid)
    masks = prune_gradual(model, data.X_train, data.y_train, data.X_valid, data.y_valid, config,
                          masks=list(state.masks), progress=progress,
                          teacher=frozen_teacher(state, config, data))  # fmt: skip
    masks = [None if m.all() else m for m in masks]
    out = CompressedMLP.from_model(model, masks=masks, stages=state.stages)
    if config.remove_dead_units:
        out = remove_dead_units(out)
    ap_after = ap_of(out, data.X_valid, data.y_valid)
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
    state = CompressedMLP.of(model)
    base = ap_of(state, X_valid, y_valid)
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
            ap = ap_of(trial, X_valid, y_valid)
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
