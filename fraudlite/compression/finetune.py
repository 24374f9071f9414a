"""Fine-tuning helpers shared by the compression techniques (pruning, structured pruning, weight sharing,
quantization-aware training, distillation).

* :func:`check_training`: checks of the fine-tuning settings every technique config carries.
* :func:`train`: one call of :func:`fraudlite.models.run_training` with a technique's settings, mixing in
  a teacher's soft targets (knowledge distillation) when ``kd_alpha > 0``; :func:`stage_teacher` picks
  that teacher, :func:`frozen_teacher` gives it as a frozen module and :func:`training_model` the
  trainable ``FraudMLP`` of a state.
* :func:`mask_hooks`: hooks that keep pruning masks applied while training.
* :func:`check_unclustered` (a stage-order guard) and :func:`ap_of` (validation AP of a state).
* :func:`parse_hidden` (the ``hidden`` widths of a config) and :func:`sample_rows` (seeded calibration rows).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fraudlite.compression.state import CompressedMLP, StageData
from fraudlite.errors import ConfigError

__all__ = [
    "check_training",
    "mask_hooks",
    "mlp_config",
    "train",
    "frozen_teacher",
    "stage_teacher",
    "training_model",
    "finetune_masked",
    "check_unclustered",
    "ap_of",
    "parse_hidden",
    "sample_rows",
    "OriginalView",
]


def check_training(cfg: object) -> None:
    """Shared checks of the fine-tuning settings every technique config carries."""
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not isinstance(getattr(cfg, "early_stopping", True), bool):
        raise ConfigError(f"early_stopping must be true or false, got {cfg.early_stopping!r}")
    if int(cfg.patience) < 1:
        raise ConfigError(f"patience must be >= 1, got {cfg.patience}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if int(cfg.seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if getattr(cfg, "kd_teacher", "input") not in ("input", "source"):
        raise ConfigError(f"kd_teacher must be 'input' or 'source', got {cfg.kd_teacher!r}")
    if not 0.0 <= getattr(cfg, "kd_alpha", 0.0) <= 1.0:
        raise ConfigError(f"kd_alpha must be in [0, 1], got {cfg.kd_alpha}")
    if not (math.isfinite(getattr(cfg, "kd_temperature", 1.0)) and getattr(cfg, "kd_temperature", 1.0) > 0):
        raise ConfigError(f"kd_temperature must be > 0, got {cfg.kd_temperature}")


def parse_hidden(value: object) -> tuple[int, ...]:
    """A config's ``hidden`` widths as a tuple of ints >= 1."""
    try:
        hidden = tuple(int(h) for h in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"hidden must be a sequence of layer widths, got {value!r}") from exc
    if any(h < 1 for h in hidden):
        raise ConfigError(f"hidden layer widths must be >= 1, got {hidden}")
    return hidden


def sample_rows(X: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """``min(rows, len(X))`` rows of ``X`` drawn without replacement (seeded), kept in their order."""
    rng = np.random.default_rng(seed)
    n = min(int(rows), len(X))
    return X[np.sort(rng.choice(len(X), n, replace=False))]


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


class OriginalView:
    """Presents each layer's parametrization ``original`` as ``.weight`` for :func:`mask_hooks` (masks
    then act on the trained tensor under a ``torch.nn.utils.parametrize`` parametrization)."""

    class _Layer:
        def __init__(self, layer: object) -> None:
            self.weight = layer.parametrizations.weight.original

    def __init__(self, model: object) -> None:
        self.layers = [self._Layer(layer) for layer in model.layers]


def mlp_config(cfg: object, epochs: int, schedule: str = "cosine"):
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


def train(
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
    early_stopping = early_stopping and bool(getattr(cfg, "early_stopping", True))
    if teacher is not None and cfg.kd_alpha > 0:
        from fraudlite.compression.soft_targets import SoftTargets, distillation_loss
        from fraudlite.models import default_pos_weight

        kd = SoftTargets(alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
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
        mlp_config(cfg, epochs, schedule),
        progress=progress,
        parameters=parameters,
        after_backward=after_backward,
        after_step=after_step,
    )


def stage_teacher(state: CompressedMLP, cfg: object, data: StageData | None = None) -> CompressedMLP:
    """A stage's teacher: its input model, or with ``cfg.kd_teacher == "source"`` the teacher of the whole
    run (``data.teacher``: the model compression started from, or the recipe's ensemble) when known."""
    source = data.teacher if data is not None else None
    return source if getattr(cfg, "kd_teacher", "input") == "source" and source is not None else state


def frozen_teacher(state: CompressedMLP, cfg: object, data: StageData | None = None):
    """:func:`stage_teacher` as a frozen torch module when ``cfg.kd_alpha > 0``, else None."""
    if cfg.kd_alpha <= 0:
        return None
    teacher = stage_teacher(state, cfg, data).to_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def training_model(state: CompressedMLP, cfg: object):
    from fraudlite.models import MLPConfig

    return state.to_model(MLPConfig(dropout=cfg.dropout, seed=int(cfg.seed)))


def check_unclustered(state: CompressedMLP, what: str) -> None:
    if any(cb is not None for cb in state.codebooks) or state.quant is not None:
        raise ConfigError(
            f"{what} must run before weight sharing and quantization (it would destroy the codebooks); "
            "reorder the stages"
        )


def ap_of(state: CompressedMLP, X: np.ndarray, y: np.ndarray) -> float:
    from fraudlite.models.metrics import average_precision

    return float(average_precision(y, state.logits(X)))


def finetune_masked(
    state: CompressedMLP,
    data: StageData,
    cfg: object,
    epochs: int,
    early_stopping: bool,
    progress: object,
    teacher: object = None,
) -> CompressedMLP:
    """``state`` trained ``epochs`` more with its masks held (pruned weights stay zero), from ``teacher``
    when given: the fine-tune after a stage removes units (structured) or inputs (drop_inputs)."""
    if int(epochs) < 1:
        return state
    model = training_model(state, cfg)
    masks = list(state.masks)
    after_backward, after_step = mask_hooks(model, masks)
    train(model, data, cfg, epochs, early_stopping=early_stopping, after_backward=after_backward,
          after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    return CompressedMLP.from_model(model, masks=masks, stages=state.stages)
