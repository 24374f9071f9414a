"""Settings of the transaction simulator (``SimulatorConfig``) and their validation.

See ``fraudlite.data.simulator`` for what they shape; ``SimulatorConfig`` is importable from there.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
from dataclasses import dataclass, fields

from fraudlite.errors import ConfigError

__all__ = ["SimulatorConfig"]

_DAY = 86_400


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that shapes a simulated dataset. Rates are expected events per entity per day.

    Attributes:
        n_customers, n_terminals, n_days: population size and length of the simulated period.
        start_date: first day, ``YYYY-MM-DD`` (UTC).
        seed: non-negative random seed; the same config always gives the same data.
        drift_day: 0-based day from which the ``drift_night_small`` scenario starts (None: never).
        area_size: side of the square world; terminal_radius: a customer's neighbourhood radius.
        terminal_skew: >= 1; higher concentrates a customer's spending on fewer favourite terminals.
        mean_tx_per_day: mean transactions per customer per day (customers vary around it).
        weekend_factor: weekend rate relative to weekdays; night_share: share of legit tx at 00-06h.
        compromised_terminal_rate: compromises per terminal per day, each lasting
            compromised_terminal_days.
        compromised_card_rate: compromises per customer per day, each lasting compromised_card_days,
            during which compromised_card_share of the card's transactions are fraudulent.
        card_testing_rate, account_takeover_rate: events per customer per day.
        high_amount_share: share of legit transactions turned into high-amount fraud.
        far_distance: minimum distance from home of account-takeover terminals.
        drift_rate: drift events per customer per day from drift_day on.
        extra_attributes: add the columns of ``fraudlite.data.attributes`` (merchant category, channel,
            country, card present, device score, merchant), in which some fraud scenarios leave a trace.
    """

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 180
    start_date: str = "2026-01-01"
    seed: int = 42
    drift_day: int | None = None
    area_size: float = 100.0
    terminal_radius: float = 3.0
    terminal_skew: float = 3.0
    mean_tx_per_day: float = 2.0
    weekend_factor: float = 0.8
    night_share: float = 0.05
    compromised_terminal_rate: float = 1.1e-4
    compromised_terminal_days: int = 28
    compromised_card_rate: float = 4.5e-4
    compromised_card_days: int = 14
    compromised_card_share: float = 1 / 3
    card_testing_rate: float = 2.5e-4
    account_takeover_rate: float = 2.5e-4
    high_amount_share: float = 5e-4
    far_distance: float = 25.0
    drift_rate: float = 1.0e-3
    extra_attributes: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name not in ("start_date", "drift_day"):
                _check_field(f.name, f.type, getattr(self, f.name))
        _check_date(self.start_date)
        if self.drift_day is not None:
            _check_int("drift_day", self.drift_day, minimum=0)
            if self.drift_day >= self.n_days:
                raise ConfigError(f"drift_day must be < n_days ({self.n_days}), got {self.drift_day}")
        for name in ("area_size", "terminal_radius", "mean_tx_per_day", "weekend_factor"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.terminal_skew < 1:
            raise ConfigError(f"terminal_skew must be >= 1, got {self.terminal_skew!r}")
        for name in ("night_share", "compromised_card_share", "high_amount_share"):
            if getattr(self, name) > 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    @property
    def start_epoch(self) -> int:
        """UTC epoch seconds of ``start_date`` 00:00."""
        return (dt.date.fromisoformat(self.start_date) - dt.date(1970, 1, 1)).days * _DAY


def _check_field(name: str, annotation: object, value: object) -> None:
    """Integers (``int`` fields) must be >= 1 (seed >= 0); numbers must be finite and >= 0; flags bools."""
    if annotation in ("bool", bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif annotation in ("int", int):
        _check_int(name, value, minimum=0 if name == "seed" else 1)
    elif not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    elif value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


def _check_date(value: object) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ConfigError(f"start_date must be a YYYY-MM-DD string, got {value!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"start_date is not a valid date: {value!r}") from exc


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
