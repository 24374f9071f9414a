"""A teacher ensemble for distillation: the source model plus more models of its architecture, trained
on the same rows with other seeds, merged into one wide MLP whose logit is the mean of theirs.

An ensemble of independently seeded networks usually ranks better than its members (Lakshminarayanan
et al. 2017), and a student distilled from it keeps part of that gain (Hinton et al. 2015). Measured on
the default generated data: three seeds of the default MLP gain 0.005-0.011 AP over the trained model
on the validation window and the weeks after it, and on average the compressed students distilled from
them lose less AP on the test weeks than students of the single model, though not in every run (see
``DEFAULT_RECIPE_TOML`` and ``bench_compression_seeds``). On the small demo data the ensemble was not
better than the source.

The merged teacher is an ordinary :class:`CompressedMLP` (first layers stacked, hidden layers
block-diagonal, output weights averaged), exactly the mean of the members' logits, so every stage that
takes a teacher takes it unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudlite.compression.state import CompressedMLP, StageData
from fraudlite.errors import ConfigError

__all__ = ["TeacherSettings", "merge_members", "train_teacher_ensemble"]


@dataclass(frozen=True)
class TeacherSettings:
    """The recipe's ``[teacher]`` section.

    Attributes:
        members: models in the teacher, the source included (1 = the source alone).
        max_epochs: epoch limit of each extra member (early-stopped on validation AP, as
            ``fraudlite train`` trains).
    """

    members: int = 1
    max_epochs: int = 40

    def __post_init__(self) -> None:
        for name in ("members", "max_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                raise ConfigError(f"teacher.{name} must be an integer in 1..100, got {value!r}")


def merge_members(members: list[CompressedMLP]) -> CompressedMLP:
    """One MLP whose logit is the mean of the members' logits (pure; dense, no compression structure).

    Raises:
        ConfigError: no member, members of different depth or feature count, or different
            standardization (the merged model has one).
    """
    if not members:
        raise ConfigError("a teacher ensemble needs at least one member")
    first = members[0]
    for m in members[1:]:
        if len(m.layers) != len(first.layers) or m.n_features != first.n_features:
            raise ConfigError("ensemble members must have the same depth and features")
        if not (np.array_equal(m.mean, first.mean) and np.array_equal(m.std, first.std)):
            raise ConfigError("ensemble members must share their standardization stats")
    n, last = len(members), len(first.layers) - 1
    layers = []
    for i in range(len(first.layers)):
        weights = [m.layers[i][0] for m in members]
        biases = [m.layers[i][1] for m in members]
        if i == last:
            layers.append((np.hstack(weights) / np.float32(n), np.mean(biases, axis=0)))
        elif i == 0:
            layers.append((np.vstack(weights), np.concatenate(biases)))
        else:
            layers.append((_block_diagonal(weights), np.concatenate(biases)))
    return CompressedMLP(
        [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers], first.mean, first.std
    )


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), dtype=np.float32)
    r = c = 0
    for b in blocks:
        out[r : r + b.shape[0], c : c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


def train_teacher_ensemble(
    source: CompressedMLP,
    data: StageData,
    settings: TeacherSettings,
    progress: Callable[[str], None] | None = None,
) -> CompressedMLP:
    """The source plus ``settings.members - 1`` models of its hidden widths (seeds 1, 2, ...; the default
    ``MLPConfig`` otherwise, early-stopped on validation AP as ``fraudlite train`` trains), trained on
    ``data``'s rows with the source's standardization, merged by :func:`merge_members`."""
    from fraudlite.models import MLPConfig, train_mlp

    say = progress or (lambda line: None)
    members = [source]
    for seed in range(1, settings.members):
        t0 = time.perf_counter()
        config = MLPConfig(hidden=source.hidden, max_epochs=settings.max_epochs, seed=seed)
        model, history = train_mlp(
            data.X_train, data.y_train, data.X_valid, data.y_valid, config,
            progress=lambda line, seed=seed: say(f"teacher member {seed + 1}/{settings.members}: {line}"),
            stats=(source.mean, source.std),
        )  # fmt: skip
        members.append(CompressedMLP.from_model(model))
        best = max(
            (h["val_ap"] for h in history if math.isfinite(h.get("val_ap", math.nan))), default=math.nan
        )
        say(
            f"teacher member {seed + 1}/{settings.members}: valid AP {best:.4f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return merge_members(members)
