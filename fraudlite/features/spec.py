"""FeatureSpec: the single definition of every model input, shared by offline and online computation.

Semantics (both implementations must follow them to the letter; a parity test holds them together):

* Time is UTC epoch seconds (integers); ``day = ts // 86400``; windows are calendar days.
* Amounts are handled as integer cents (``round(amount * 100)``) so window sums are exact on both sides.
* Transactions are processed in time order; ties keep input (stream) order. "Before" a transaction means
  earlier in that order; the transaction itself is included in its own customer windows.
* Customer window of ``w`` days: the customer's transactions on days ``day-w+1 .. day`` up to and
  including this one -> count and mean amount. ``customer_amount_ratio`` = amount / mean of the largest
  window.
* Velocity: 1 + the customer's earlier transactions with ``ts_prev > ts - velocity_seconds``, capped at
  ``velocity_cap``; ``customer_log_seconds_since_prev`` = log1p(seconds since the customer's previous
  transaction), or log1p(max window in seconds) for a first transaction.
* New terminal: a ``bloom_bits``-bit filter per customer over ``terminal_bit(terminal_id)``: 1 when no
  earlier transaction of the customer set this terminal's bit (false "seen" possible, never false "new").
* Terminal window of ``w`` days, shifted by ``delay_days`` (labels are trusted only once that old): the
  terminal's transactions on days ``day-delay-w+1 .. day-delay`` -> count, and fraud risk = frauds /
  count (0 when empty). Nothing younger than the delay is used, so labels never leak.

* Extra columns (``extra_columns``, ``fraudlite.features.extras``): a bank's own per-transaction
  attributes, encoded row by row (no state), appended after the built-in inputs.

Memory per entity online is fixed: customers keep ``max(customer_windows)`` day buckets, terminals keep
``max(terminal_windows) + delay_days`` day buckets.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.features.extras import ExtraColumn

__all__ = ["FeatureSpec", "terminal_bit", "SECONDS_PER_DAY"]

SECONDS_PER_DAY = 86_400


def terminal_bit(terminal_id: str, bits: int) -> int:
    """Stable (process-independent) bit position of a terminal id in a customer's bloom filter."""
    return zlib.crc32(terminal_id.encode("utf-8")) % bits


def _duration_name(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


@dataclass(frozen=True)
class FeatureSpec:
    """Which features exist and their parameters. ``names`` gives the model's input order."""

    customer_windows: tuple[int, ...] = (1, 7, 30)
    terminal_windows: tuple[int, ...] = (1, 7, 30)
    delay_days: int = 7
    velocity_seconds: int = 3600
    velocity_cap: int = 8
    bloom_bits: int = 64
    night_end_hour: int = 6
    version: int = field(default=1)
    extra_columns: tuple[ExtraColumn, ...] = ()

    def __post_init__(self) -> None:
        extras = tuple(
            c if isinstance(c, ExtraColumn) else ExtraColumn.from_dict(c) for c in self.extra_columns
        )
        object.__setattr__(self, "extra_columns", extras)
        if len({c.name for c in extras}) != len(extras):
            raise ConfigError("extra_columns: each name once")
        object.__setattr__(self, "customer_windows", tuple(int(w) for w in self.customer_windows))
        object.__setattr__(self, "terminal_windows", tuple(int(w) for w in self.terminal_windows))
        for name in ("customer_windows", "terminal_windows"):
            windows = getattr(self, name)
            if not windows or any(w < 1 for w in windows) or len(set(windows)) != len(windows):
                raise ConfigError(f"{name} must be distinct positive day counts, got {windows}")
        if self.delay_days < 1:
            # Terminal windows are whole days ending `delay` days back: 0 would let same-day (future) rows in.
            raise ConfigError(f"delay_days must be >= 1, got {self.delay_days}")
        if self.velocity_seconds < 1 or self.velocity_cap < 1:
            raise ConfigError("velocity_seconds and velocity_cap must be >= 1")
        if not 1 <= self.bloom_bits <= 64:
            raise ConfigError(f"bloom_bits must be in 1..64, got {self.bloom_bits}")
        if not 0 <= self.night_end_hour <= 24:
            raise ConfigError(f"night_end_hour must be in 0..24, got {self.night_end_hour}")

    @property
    def customer_ring_days(self) -> int:
        return max(self.customer_windows)

    @property
    def terminal_ring_days(self) -> int:
        return max(self.terminal_windows) + self.delay_days

    @property
    def names(self) -> list[str]:
        names = ["amount", "log_amount", "is_night", "is_weekend"]
        for w in self.customer_windows:
            names += [f"customer_nb_tx_{w}d", f"customer_avg_amount_{w}d"]
        names += [
            f"customer_amount_ratio_{self.customer_ring_days}d",
            f"customer_nb_tx_{_duration_name(self.velocity_seconds)}",
            "customer_log_seconds_since_prev",
            "customer_new_terminal",
        ]
        for w in self.terminal_windows:
            names += [f"terminal_nb_tx_{w}d", f"terminal_risk_{w}d"]
        for c in self.extra_columns:
            names += c.input_names
        return names

    @property
    def n_builtin_features(self) -> int:
        """The inputs computed from the six core columns (the extra columns' follow them)."""
        return 4 + 2 * len(self.customer_windows) + 4 + 2 * len(self.terminal_windows)

    @property
    def extra_names(self) -> list[str]:
        """The logical names of the extra columns (fields of a message, columns of a file)."""
        return [c.name for c in self.extra_columns]

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def extra_inputs(self) -> dict[str, np.ndarray]:
        """Extra column name -> the indices of its model inputs (they follow the built-in ones)."""
        out, start = {}, self.n_builtin_features
        for c in self.extra_columns:
            out[c.name] = np.arange(start, start + c.width)
            start += c.width
        return out

    @property
    def indicator_inputs(self) -> np.ndarray:
        """bool [n_features]: the extra columns' 0/1 indicator inputs (``ExtraColumn.indicators``), which
        training centres but does not scale (std 1)."""
        flags = [False] * self.n_builtin_features
        for c in self.extra_columns:
            flags += c.indicators
        return np.array(flags, dtype=bool)

    def to_dict(self, names: bool = True) -> dict:
        """The parameters, plus the derived ``names`` (a check when read back) unless ``names=False``."""
        d = asdict(self)
        d["extra_columns"] = [c.to_dict() for c in self.extra_columns]
        if not self.extra_columns:
            del d["extra_columns"]  # a spec without them reads as before (and hashes as before)
        if names:
            d["names"] = self.names
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        spec = cls(**known)
        if "names" in d and list(d["names"]) != spec.names:
            raise ConfigError("feature spec names do not match its parameters (written by another version?)")
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
