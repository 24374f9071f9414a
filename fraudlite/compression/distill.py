"""Knowledge distillation (Hinton et al. 2015) for the binary fraud score: a smaller student learns
from the teacher's temperature-softened probabilities and from the hard labels.

Loss per batch: ``alpha * T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T)) + (1 - alpha) * BCE_w(z_s, y)``
(``soft_loss="logit_mse"``: ``mean((z_s - z_t)^2)`` instead of the tempered BCE, the logit matching of
Ba & Caruana 2014, which keeps the ranking among very unlikely rows that AP also depends on) where ``BCE_w`` is the imbalance-weighted loss the teacher was trained with (fraud rows weighted by
``sqrt(n_neg / n_pos)``), so both terms agree on the operating point. Teacher logits are computed per
batch without gradients (no copy of the training matrix). The student keeps the teacher's
standardization stats. ``init="teacher"`` starts the student from the teacher structurally pruned to
the student's widths (same depth only), which converges faster and usually ends higher than random
initialization; ``"auto"`` uses it when the shapes allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.finetune import (
    ap_of,
    check_training,
    mlp_config,
    parse_hidden,
    sample_rows,
    stage_teacher,
)
from fraudlite.compression.soft_targets import distillation_loss
from fraudlite.compression.state import CompressedMLP, StageData, stage_record
from fraudlite.compression.structured import (
    apply_structured_pruning,
    compute_unit_importance,
    compute_unit_keep,
)
from fraudlite.errors import ConfigError

__all__ = ["DistillConfig", "distill", "distill_stage"]


_INITS = ("auto", "random", "teacher")
_SOFT_LOSSES = ("bce", "logit_mse")


@dataclass(frozen=True)
class DistillConfig:
    """Student architecture and distillation settings.

    Attributes:
        hidden: student hidden widths (searchable; may be empty: logistic regression).
        temperature: softening temperature T (> 0).
        alpha: weight of the soft-target term in [0, 1] (1 - alpha on the hard labels).
        epochs: maximum epochs (early stopping on validation AP).
        soft_loss: ``"bce"`` (tempered soft targets) or ``"logit_mse"`` (temperature unused).
        init: ``"auto"``, ``"random"`` or ``"teacher"`` (see module docs).
        calibration_rows: rows for the activation statistics of ``init="teacher"``.
        lr, weight_decay, batch_size, patience, dropout, seed: training settings.
        early_stopping: keep the best validation epoch (True) or train all ``epochs`` on the cosine
            schedule and keep the last weights (False: validation AP then stays unbiased for the search).
        kd_teacher: the stage's teacher: its input model (``"input"``) or the teacher of the whole run
            (``"source"``: the model compression started from, or the recipe's teacher ensemble).
    """

    hidden: tuple[int, ...] = (32, 16)
    temperature: float = 4.0
    alpha: float = 0.5
    epochs: int = 30
    soft_loss: str = "bce"
    init: str = "random"
    calibration_rows: int = 8192
    lr: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    patience: int = 5
    early_stopping: bool = True
    dropout: float = 0.0
    seed: int = 0
    kd_teacher: str = "input"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", parse_hidden(self.hidden))
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if int(self.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.soft_loss not in _SOFT_LOSSES:
            raise ConfigError(f"soft_loss must be one of {', '.join(_SOFT_LOSSES)}, got {self.soft_loss!r}")
        if self.init not in _INITS:
            raise ConfigError(f"init must be one of {', '.join(_INITS)}, got {self.init!r}")
        if int(self.calibration_rows) < 1:
            raise ConfigError(f"calibration_rows must be >= 1, got {self.calibration_rows}")
        check_training(self)


def _teacher_module(teacher: object):
    if isinstance(teacher, CompressedMLP):
        return teacher.to_model()
    return teacher


def _student(teacher_state: CompressedMLP, data: StageData, config: DistillConfig, pos_weight: float):
    import torch

    from fraudlite.models import FraudMLP, MLPConfig

    hidden = config.hidden
    can_init = len(hidden) == len(teacher_state.hidden) and all(
        s <= t for s, t in zip(hidden, teacher_state.hidden, strict=True)
    )
    if config.init == "teacher" and not can_init:
        raise ConfigError(
            f"init='teacher' needs a student of the teacher's depth and at most its widths "
            f"(teacher {teacher_state.hidden}, student {hidden})"
        )
    mlp_cfg = MLPConfig(hidden=hidden, dropout=config.dropout, seed=config.seed)
    if config.init in ("teacher", "auto") and can_init:
        calib = sample_rows(data.X_train, config.calibration_rows, config.seed)
        dense = teacher_state.copy()
        dense.masks = [None] * len(dense.layers)
        dense.codebooks = [None] * len(dense.layers)
        dense.quant = None
        keep = compute_unit_keep(compute_unit_importance(dense, calib), hidden)
        return apply_structured_pruning(dense, keep, calib).to_model(mlp_cfg), "teacher"
    torch.manual_seed(config.seed)
    student = FraudMLP(teacher_state.n_features, mlp_cfg, teacher_state.mean, teacher_state.std)
    prior = float(np.count_nonzero(data.y_train)) / len(data.y_train)
    odds = pos_weight * prior / max(1.0 - prior, 1e-12)
    with torch.no_grad():
        student.layers[-1].bias.fill_(math.log(max(odds, 1e-12)))
    return student, "random"


def distill(
    teacher: object,
    X: np.ndarray,
    y: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    config: DistillConfig | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Train a student ``FraudMLP`` of ``config.hidden`` from ``teacher`` (soft targets + hard labels).

    Args:
        teacher: a ``FraudMLP`` or a :class:`CompressedMLP` (not modified).
        X, y: training rows (raw features, 0/1 labels).
        X_valid, y_valid: validation rows (early stopping on AP).
        config: student architecture and settings.
        progress: one line per epoch.

    Returns:
        The student in eval mode (best validation epoch).

    Raises:
        DataError: on bad shapes or single-class labels.
    """
    from fraudlite.models import default_pos_weight, run_training

    config = config or DistillConfig()
    data = StageData(X, y, X_valid, y_valid)
    teacher_state = CompressedMLP.of(teacher)
    pos_weight = default_pos_weight(y)
    student, _ = _student(teacher_state, data, config, pos_weight)
    loss_fn = distillation_loss(_teacher_module(teacher), config, pos_weight)
    stop = config.early_stopping
    run_training(student, loss_fn, X, y, X_valid if stop else None, y_valid if stop else None,
                 mlp_config(config, config.epochs), progress=progress)  # fmt: skip
    return student.eval()


def distill_stage(
    state: CompressedMLP,
    data: StageData,
    config: DistillConfig | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: object = None,
) -> CompressedMLP:
    """The distillation stage: ``state`` (or an explicit ``teacher``, or with ``kd_teacher = "source"``
    ``data.teacher`` when known) teaches a fresh student.

    Masks, codebooks and quantization of the input state do not carry over (the student is dense);
    distillation belongs first in a recipe.
    """
    config = config or DistillConfig()
    if teacher is None:
        teacher = stage_teacher(state, config, data)
    teacher_state = CompressedMLP.of(teacher)
    ap_teacher = ap_of(teacher_state, data.X_valid, data.y_valid)
    student = distill(teacher, data.X_train, data.y_train, data.X_valid, data.y_valid, config, progress)
    out = CompressedMLP.from_model(student, stages=state.stages)
    ap_after = ap_of(out, data.X_valid, data.y_valid)
    return out.with_stage(
        stage_record("distill", config, state, out, valid_ap_before=ap_teacher, valid_ap_after=ap_after)
    )
