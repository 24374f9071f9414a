"""Settings of a retrain run (``RetrainConfig``, validated) and the days it uses (``RetrainWindows``).

See ``fraudlite.pipeline.retrain`` for how a run uses them; both are importable from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fraudlite.data.transactions import format_day
from fraudlite.errors import ConfigError
from fraudlite.features.extras import parse_extra_columns
from fraudlite.models.training import MODEL_TYPES, TrainConfig
from fraudlite.monitoring.budget import parse_alert_budget

__all__ = ["RetrainConfig", "RetrainWindows"]


@dataclass(frozen=True)
class RetrainConfig:
    """How a retrain run trains and decides.

    Attributes:
        train_days: days in the training window (validation/comparison part included).
        delay_days: label delay; the window ends this many days before ``now``.
        valid_days: trailing days of the window used for validation and for the comparison.
        tolerance: a challenger is rejected if its AP is lower than the champion's by more than this.
        max_ap_drop: compression guardrail: largest AP drop compression may cost.
        min_ap: guardrail: a challenger below this AP on the comparison window is never promoted.
        model_type, seed, max_epochs, alert_budget: passed to training (see ``fraudlite train``).
        extra_columns: ``--extra-columns`` of the first model; a registry with a champion keeps the
            champion's (fitted) extra columns, so the scorer can hot-swap to every successor.
        recipe: compression recipe file (TOML) or None for the built-in one.
        compress: False registers the trained model uncompressed (``--no-compress``).
        k: k of card precision@k.
    """

    train_days: int = 28
    delay_days: int = 7
    valid_days: int = 7
    tolerance: float = 0.005
    max_ap_drop: float = 0.005
    min_ap: float = 0.0
    model_type: str = "mlp"
    seed: int = 0
    max_epochs: int | None = None
    recipe: str | None = None
    k: int = 100
    compress: bool = True
    alert_budget: str | None = None
    extra_columns: str | None = None  # "--extra-columns" of a first model; later ones keep the champion's

    def __post_init__(self) -> None:
        for name in ("train_days", "delay_days", "valid_days", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.train_days <= self.valid_days:
            raise ConfigError(
                f"--train-days ({self.train_days}) must be longer than --valid-days ({self.valid_days}): "
                "the window needs days to fit on before the validation days"
            )
        for name, upper in (("tolerance", 1.0), ("max_ap_drop", 1.0), ("min_ap", 1.0)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= upper:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, {upper}], got {value!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"--model-type: expected one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}"
            )
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.alert_budget is not None:
            parse_alert_budget(self.alert_budget)
        parse_extra_columns(self.extra_columns)
        if self.recipe is not None and not Path(self.recipe).is_file():
            raise ConfigError(f"--recipe: no such file {self.recipe!r}")


@dataclass(frozen=True)
class RetrainWindows:
    """The days a run uses (UTC epoch days, inclusive)."""

    now: int
    train_start: int
    fit_end: int
    valid_start: int
    valid_end: int

    @classmethod
    def for_now(cls, now_day: int, config: RetrainConfig) -> RetrainWindows:
        last = now_day - config.delay_days
        return cls(
            now=now_day,
            train_start=last - config.train_days + 1,
            fit_end=last - config.valid_days,
            valid_start=last - config.valid_days + 1,
            valid_end=last,
        )

    def train_config(self, config: RetrainConfig) -> TrainConfig:
        return TrainConfig(
            train_start_day=self.train_start,
            train_end_day=self.valid_end,
            valid_days=self.valid_end - self.valid_start + 1,
            delay_days=config.delay_days,
            model_type=config.model_type,
            seed=config.seed,
            max_epochs=config.max_epochs,
            alert_budget=config.alert_budget,
        )

    def to_dict(self) -> dict:
        return {
            "now": format_day(self.now),
            "train_start": format_day(self.train_start),
            "train_end": format_day(self.fit_end),
            "valid_start": format_day(self.valid_start),
            "valid_end": format_day(self.valid_end),
            "eval_start": format_day(self.valid_start),
            "eval_end": format_day(self.valid_end),
        }
