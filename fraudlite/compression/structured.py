"""Structured pruning: remove whole hidden units, so the dense matrices physically shrink.

A hidden unit's importance is ``||W_next[:, j]|| * std(h_j)`` on calibration rows (the expected error
of replacing the unit by its mean), or ``||W_in[j]|| * ||W_next[:, j]||`` without data (see
:func:`compute_unit_importance` for the default, output-based measure). Removed units are folded into
the next layer's bias (``b_next += W_next[:, j] * mean(h_j)``), so units that are dead or constant
disappear exactly (:func:`remove_dead_units`, no data needed). The stage (:func:`structured_prune_stage`)
shrinks in rounds, fine-tuning after each. Everything here is also importable from
:mod:`fraudlite.compression.prune`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.finetune import (
    ap_of,
    check_training,
    check_unclustered,
    finetune_masked,
    frozen_teacher,
    parse_hidden,
    sample_rows,
)
from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.errors import ConfigError

__all__ = [
    "StructuredConfig",
    "compute_unit_importance",
    "compute_unit_keep",
    "apply_structured_pruning",
    "remove_dead_units",
    "structured_prune_stage",
]

_IMPORTANCE = ("output", "activation", "weight")


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
            object.__setattr__(self, "hidden", parse_hidden(self.hidden))
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
        check_training(self)


def _activations(state: CompressedMLP, X: np.ndarray) -> list[np.ndarray]:
    """Post-ReLU activations of every hidden layer on ``X`` (float32)."""
    h = state.standardize(X)
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
    state = CompressedMLP.of(model)
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
    state = CompressedMLP.of(model).copy()
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
    check_unclustered(state, "structured pruning")
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
    ap_before = ap_of(state, data.X_valid, data.y_valid)
    calib = sample_rows(data.X_train, config.calibration_rows, config.seed)
    current = state.copy()
    teacher = frozen_teacher(state, config)
    for widths in _schedule_widths(start, target, int(config.steps)):
        keep = compute_unit_keep(compute_unit_importance(current, calib, config.importance), widths)
        current = apply_structured_pruning(current, keep, calib)
        current = finetune_masked(current, data, config, config.epochs_per_step, False, progress, teacher)
    current = finetune_masked(current, data, config, config.finetune_epochs, True, progress, teacher)
    ap_after = ap_of(current, data.X_valid, data.y_valid)
    current.stages = list(state.stages)
    return current.with_stage(
        stage_record("structured", config, state, current, valid_ap_before=ap_before, valid_ap_after=ap_after)
    )
