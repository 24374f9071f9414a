"""Input-group pruning: drop whole extra columns (all of a column's model inputs) the model does not need.

Why: a bank's extra columns are most of a wide model's inputs (a hashed ``merchant_id`` of 256 buckets
is 256 of 332), and the first layer's matmul over them is most of a call. Removing a column's block of
first-layer weights (a group mask: group-lasso pruning at the granularity users think in) makes the
runnable forms skip those inputs (:mod:`fraudlite.runtime.forms` reads only the columns some kept
weight uses), so the matmul shrinks with them. Measured on ``benchmarks/bench_wide.py``'s data: the
model trained without ``merchant_id`` had a *higher* validation AP (0.8187 vs 0.7955 with it: 256
sparse buckets overfit), which no weight-level stage could find.

How: each extra column's sensitivity is the validation AP lost when its inputs are masked out (its
inputs held at their training mean, which standardization makes exact), without fine-tuning. Columns
are dropped from the least sensitive on, while the losses of the drops add up to at most ``tolerance``
(each against the AP before it; a drop that raises AP spends nothing and earns nothing: measured, when
gains paid for later losses, all six columns of bench_wide went, device_score's 0.038 alone); then
the kept weights are fine-tuned with the masks held (knowledge distillation from the input model).
The search's budget judges the result like any stage's. A model without extra columns passes through
unchanged. The feature spec keeps the column (serving still accepts and validates the field); only the
model stops reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.finetune import ap_of, check_unclustered, finetune_masked, frozen_teacher
from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.errors import ConfigError

__all__ = ["InputDropConfig", "group_sensitivity", "drop_inputs_stage"]


@dataclass(frozen=True)
class InputDropConfig:
    """Input-group pruning of the extra columns.

    Attributes:
        tolerance: validation AP the dropped columns may lose together before fine-tuning (absolute).
        keep: extra columns never dropped.
        finetune_epochs: epochs of fine-tuning with the group masks held (0: none).
        lr, weight_decay, batch_size, patience, dropout, seed: fine-tuning settings.
        kd_alpha, kd_temperature, kd_teacher: distillation while fine-tuning (as ``PruneConfig``'s).
        early_stopping: stop fine-tuning on validation AP (off: a fixed schedule, see the recipe).
    """

    tolerance: float = 0.002
    keep: tuple[str, ...] = ()
    finetune_epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 3
    dropout: float = 0.0
    kd_alpha: float = 0.9
    kd_temperature: float = 1.0
    kd_teacher: str = "source"
    early_stopping: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= float(self.tolerance) <= 1:
            raise ConfigError(f"tolerance must be in [0, 1], got {self.tolerance!r}")
        if int(self.finetune_epochs) < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs!r}")
        object.__setattr__(self, "keep", tuple(str(k) for k in self.keep))


def _without(state: CompressedMLP, columns: np.ndarray) -> CompressedMLP:
    """``state`` with layer 0's weights of ``columns`` masked out (zeroed)."""
    out = state.copy()
    w0 = out.layers[0][0]
    mask = np.ones(w0.shape, bool) if out.masks[0] is None else np.array(out.masks[0], bool)
    mask[:, columns] = False
    out.masks[0] = mask
    out.layers[0] = (np.where(mask, w0, 0).astype(w0.dtype), out.layers[0][1])
    return out


def group_sensitivity(state: CompressedMLP, data: StageData) -> dict[str, float]:
    """Validation AP lost when each extra column's inputs are masked out alone (no fine-tuning)."""
    base = ap_of(state, data.X_valid, data.y_valid)
    return {
        name: base - ap_of(_without(state, cols), data.X_valid, data.y_valid)
        for name, cols in (data.groups or {}).items()
    }


def drop_inputs_stage(
    state: CompressedMLP,
    data: StageData,
    config: InputDropConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The input-group stage: mask out the extra columns that cost least, within ``tolerance``, then
    fine-tune. Records the dropped columns, every column's sensitivity and the inputs left."""
    config = config or InputDropConfig()
    check_unclustered(state, "input-group pruning")
    unknown = sorted(set(config.keep) - set(data.groups or {}))
    if unknown:
        raise ConfigError(
            f"keep: {unknown} are not extra columns of this model ({sorted(data.groups or {})})"
        )
    ap_before = ap_of(state, data.X_valid, data.y_valid)
    sensitivity = group_sensitivity(state, data)
    current, dropped, ap_now, spent = state.copy(), [], ap_before, 0.0  # the input stays as it was
    for name in sorted(sensitivity, key=lambda n: (sensitivity[n], n)):
        if name in config.keep:
            continue
        trial = _without(current, data.groups[name])
        ap_trial = ap_of(trial, data.X_valid, data.y_valid)
        loss = max(0.0, ap_now - ap_trial)  # a gain is not credit: it must not pay for a later loss
        if spent + loss <= float(config.tolerance) + 1e-12:
            current, dropped, ap_now, spent = trial, [*dropped, name], ap_trial, spent + loss
    if dropped:
        if progress:
            progress(f"input groups: dropping {', '.join(dropped)}; fine-tuning")
        teacher = frozen_teacher(state, config, data)
        current = finetune_masked(
            current, data, config, config.finetune_epochs, config.early_stopping, progress, teacher
        )
    current.stages = list(state.stages)
    used = int(np.count_nonzero(np.any(current.decoded_weight(0) != 0, axis=0)))
    ap_after = ap_of(current, data.X_valid, data.y_valid)
    record = stage_record(
        "drop_inputs", config, state, current, valid_ap_before=ap_before, valid_ap_after=ap_after,
        dropped=dropped, sensitivity={k: round(v, 6) for k, v in sensitivity.items()}, inputs_used=used,
    )  # fmt: skip
    return current.with_stage(record)


def _not_applicable(data: StageData) -> str | None:
    """Why the search passes the stage over (``recipe.stage_runner``: a stage function's optional
    ``not_applicable``), or None."""
    return None if data.groups else "the model has no extra columns"


drop_inputs_stage.not_applicable = _not_applicable
