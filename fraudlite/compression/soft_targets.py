"""The distillation loss (Hinton et al. 2015): soft targets of a teacher mixed with the hard labels.

Shared by the distillation stage and by every fine-tuning stage that learns from a teacher, so it sits
below both (``finetune`` and ``distill`` import it; it imports neither).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError

__all__ = ["SoftTargets", "compute_soft_targets", "distillation_loss"]


@dataclass(frozen=True)
class SoftTargets:
    """The loss settings of :func:`distillation_loss` when no ``DistillConfig`` is at hand."""

    alpha: float
    temperature: float
    soft_loss: str = "bce"


def compute_soft_targets(teacher: object, X: np.ndarray, temperature: float = 4.0) -> np.ndarray:
    """The teacher's softened probabilities ``sigmoid(z_t / T)`` float32 [N] (pure; eval mode).

    Args:
        teacher: a ``FraudMLP`` or a :class:`CompressedMLP`.
        X: raw features [N, F].
        temperature: T > 0.
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if isinstance(teacher, CompressedMLP):
        z = teacher.logits(X)
    else:
        from fraudlite.models import predict_logits

        z = predict_logits(teacher, X)
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64) / temperature))).astype(np.float32)


def distillation_loss(teacher: object, config: object, pos_weight: float) -> Callable:
    """``loss_fn(batch_x, batch_y, student_logits)`` for :func:`fraudlite.models.run_training`.

    ``config`` carries ``temperature``, ``alpha`` and optionally ``soft_loss`` (a ``DistillConfig`` or
    :class:`SoftTargets`)."""
    import torch
    import torch.nn.functional as F

    T, alpha = float(config.temperature), float(config.alpha)
    mse = getattr(config, "soft_loss", "bce") == "logit_mse"
    pw = torch.tensor(float(pos_weight), dtype=torch.float32)
    teacher.eval()

    def loss_fn(batch_x: torch.Tensor, batch_y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        hard = F.binary_cross_entropy_with_logits(logits, batch_y, pos_weight=pw)
        if alpha == 0.0:
            return hard
        with torch.no_grad():
            teacher_logits = teacher(batch_x)
        if mse:
            soft = F.mse_loss(logits, teacher_logits)
        else:
            soft = F.binary_cross_entropy_with_logits(logits / T, torch.sigmoid(teacher_logits / T)) * (T * T)
        return alpha * soft + (1.0 - alpha) * hard

    return loss_fn
