"""Vectorized (batch) feature computation over a whole history of transactions.

Pure numpy: sorts once per entity and answers every window with ``searchsorted`` on composite
(entity, time) keys plus cumulative sums, so the cost is O(n log n) with no Python loop per row.

``compute_features`` is three blocks plus the extra columns: ``row_block`` (each row alone),
``customer_block`` (a row's values depend only on its customer's rows, ordered by (time, input
position)) and ``terminal_block`` (only on its terminal's rows and labels). So a block run on any subset
that holds whole customers (or terminals) gives those rows exactly the values of a run over everything:
the out-of-core path (``data.out_of_core``) runs these very kernels on spill partitions of whole customers
and of whole terminals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fraudlite.features.extras import encode_extras
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec, terminal_bit

__all__ = [
    "TransactionArrays",
    "compute_features",
    "amount_to_cents",
    "row_block",
    "customer_block",
    "terminal_block",
    "block_names",
]


def amount_to_cents(amount) -> np.ndarray:
    """Amounts -> int64 cents, rounded half away from zero like the online path (``round(a * 100)``)."""
    return np.rint(np.asarray(amount, dtype=np.float64) * 100.0).astype(np.int64)


@dataclass(frozen=True)
class TransactionArrays:
    """Columnar transactions in stream order. Entity ids are integer codes (any dense or sparse ints).

    Attributes:
        ts: int64 UTC epoch seconds.
        customer: int64 customer codes.
        terminal: int64 terminal codes.
        terminal_bit: int64 ``terminal_bit(terminal_id, spec.bloom_bits)`` per row.
        amount_cents: int64 amounts in cents.
        label: int8 0/1 labels, or None when unknown (terminal risk is then 0).
        extras: extra column name -> canonical values (``features.extras.canonical_values``).
    """

    ts: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    terminal_bit: np.ndarray
    amount_cents: np.ndarray
    label: np.ndarray | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_columns(
        cls,
        spec: FeatureSpec,
        ts: np.ndarray,
        customer_id: np.ndarray,
        terminal_id: np.ndarray,
        amount: np.ndarray,
        label: np.ndarray | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> TransactionArrays:
        """Build from raw columns: epoch seconds, string (or any) ids, float amounts, 0/1 labels and the
        extra columns' canonical values."""
        _, customer = np.unique(np.asarray(customer_id), return_inverse=True)
        terminals, terminal = np.unique(np.asarray(terminal_id).astype(str), return_inverse=True)
        bits = np.array([terminal_bit(t, spec.bloom_bits) for t in terminals], dtype=np.int64)
        return cls(
            ts=np.asarray(ts, dtype=np.int64),
            customer=customer.astype(np.int64),
            terminal=terminal.astype(np.int64),
            terminal_bit=bits[terminal],
            amount_cents=amount_to_cents(amount),
            label=None if label is None else np.asarray(label, dtype=np.int8),
            extras=dict(extras or {}),
        )


def _window_counts(entity: np.ndarray, time: np.ndarray, lower: np.ndarray, upper: np.ndarray, side: str):
    """For each row, the sorted-order index range [lo, hi) of the same entity's rows with time in bounds.

    ``entity``/``time`` must already be sorted by (entity, time); ``lower`` is inclusive (side='left')
    or exclusive (side='right'), ``upper`` inclusive. Times must be >= 0; bounds below 0 mean
    "before everything" (clipped to -1 so they never reach into the previous entity's keys).
    """
    span = int(max(time.max(), upper.max()) + 2)
    key = entity * span + time
    lo = np.searchsorted(key, entity * span + np.maximum(lower, -1), side=side)
    hi = np.searchsorted(key, entity * span + np.maximum(upper, -1), side="right")
    return lo, hi


def block_names(spec: FeatureSpec) -> tuple[list[str], list[str], list[str]]:
    """The names each block computes, in ``spec.names`` order: (row, customer, terminal)."""
    names, n_customer = spec.names, 4 + 2 * len(spec.customer_windows) + 4
    return names[:4], names[4:n_customer], names[n_customer : spec.n_builtin_features]


def row_block(spec: FeatureSpec, tx: TransactionArrays) -> dict[str, np.ndarray]:
    """The features of each row alone: amount, log amount, night, weekend (float64)."""
    out: dict[str, np.ndarray] = {}
    amount = tx.amount_cents / 100.0
    out["amount"] = amount
    out["log_amount"] = np.log1p(amount)
    hour = (tx.ts % SECONDS_PER_DAY) // 3600
    out["is_night"] = (hour < spec.night_end_hour).astype(np.float64)
    # 1970-01-01 was a Thursday: weekday (Mon=0) = (day + 3) % 7.
    out["is_weekend"] = (((tx.ts // SECONDS_PER_DAY) + 3) % 7 >= 5).astype(np.float64)
    return out


def customer_block(
    spec: FeatureSpec, tx: TransactionArrays, position: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The per-customer window features (float64, rows in ``tx`` order).

    Args:
        spec: the feature definition.
        tx: transactions holding whole customers (all rows of each customer present).
        position: each row's position in the whole input, which breaks ties in time (default: ``tx``'s
            own order), so a subset in any order gives its rows the values of the whole input.
    """
    out: dict[str, np.ndarray] = {}
    tie = np.arange(len(tx)) if position is None else np.asarray(position)
    order = np.lexsort((tie, tx.ts, tx.customer))
    cust = _dense(tx.customer[order])
    ts = tx.ts[order]
    t0 = ts.min()
    t = ts - t0
    day = ts // SECONDS_PER_DAY
    d = day - day.min()
    cents = tx.amount_cents[order]
    csum = np.concatenate([[0], np.cumsum(cents)])
    idx = np.arange(len(order))
    # Index of this row within its customer's sorted rows: windows end at the row itself, not at the
    # last row of its day, so later same-day transactions never leak backwards.
    first_of_cust = np.searchsorted(cust, cust, side="left")

    def put(name: str, values: np.ndarray) -> None:
        col = np.empty(len(order), dtype=np.float64)
        col[order] = values
        out[name] = col

    avg_largest = None
    for w in spec.customer_windows:
        lo, _ = _window_counts(cust, d, d - w + 1, d, side="left")
        lo = np.maximum(lo, first_of_cust)
        count = idx - lo + 1
        avg = (csum[idx + 1] - csum[lo]) / count / 100.0
        put(f"customer_nb_tx_{w}d", count)
        put(f"customer_avg_amount_{w}d", avg)
        if w == spec.customer_ring_days:
            avg_largest = avg
    amount = cents / 100.0
    ratio = np.divide(amount, avg_largest, out=np.ones_like(amount), where=avg_largest > 0)
    put(f"customer_amount_ratio_{spec.customer_ring_days}d", ratio)

    lo, _ = _window_counts(cust, t, t - spec.velocity_seconds, t, side="right")
    lo = np.maximum(lo, first_of_cust)
    put(spec.names[4 + 2 * len(spec.customer_windows) + 1], np.minimum(idx - lo + 1, spec.velocity_cap))

    has_prev = idx > first_of_cust
    gap = np.full(len(order), float(spec.customer_ring_days * SECONDS_PER_DAY))
    gap[has_prev] = (t[1:] - t[:-1])[has_prev[1:]]
    put("customer_log_seconds_since_prev", np.log1p(gap))

    bloom_key = cust * spec.bloom_bits + tx.terminal_bit[order]
    _, first = np.unique(bloom_key, return_index=True)
    new_terminal = np.zeros(len(order))
    new_terminal[first] = 1.0
    put("customer_new_terminal", new_terminal)
    return out


def terminal_block(spec: FeatureSpec, tx: TransactionArrays) -> dict[str, np.ndarray]:
    """The per-terminal window features (float64, rows in ``tx`` order); ``tx`` holds whole terminals.
    A row's values depend only on its day and its terminal's days and labels, not on ties' order."""
    out: dict[str, np.ndarray] = {}
    order = np.lexsort((tx.ts, tx.terminal))
    term = _dense(tx.terminal[order])
    day = tx.ts[order] // SECONDS_PER_DAY
    d = day - day.min()
    label = np.zeros(len(order), dtype=np.int64) if tx.label is None else tx.label[order].astype(np.int64)
    fsum = np.concatenate([[0], np.cumsum(label)])
    end = d - spec.delay_days
    for w in spec.terminal_windows:
        lo, hi = _window_counts(term, d, end - w + 1, end, side="left")
        count = (hi - lo).astype(np.float64)
        frauds = (fsum[hi] - fsum[lo]).astype(np.float64)
        risk = np.divide(frauds, count, out=np.zeros_like(count), where=count > 0)
        for name, values in ((f"terminal_nb_tx_{w}d", count), (f"terminal_risk_{w}d", risk)):
            col = np.empty(len(order), dtype=np.float64)
            col[order] = values
            out[name] = col
    return out


def _dense(sorted_codes: np.ndarray) -> np.ndarray:
    """Sorted entity codes -> 0..k-1 (keeps composite keys small)."""
    change = np.concatenate([[0], (sorted_codes[1:] != sorted_codes[:-1]).astype(np.int64)])
    return np.cumsum(change)


def compute_features(spec: FeatureSpec, tx: TransactionArrays) -> np.ndarray:
    """Every feature of ``spec`` for every transaction.

    Args:
        spec: the feature definition.
        tx: transactions in stream order (ties in time are broken by this order).

    Returns:
        float32 array of shape (len(tx), spec.n_features), rows in input order, columns in ``spec.names``.
    """
    n = len(tx)
    if n == 0:
        return np.zeros((0, spec.n_features), dtype=np.float32)
    out = row_block(spec, tx)
    out.update(customer_block(spec, tx))
    out.update(terminal_block(spec, tx))
    builtin = np.stack([out[name] for name in spec.names[: spec.n_builtin_features]], axis=1)
    if not spec.extra_columns:
        return builtin.astype(np.float32)
    extras = encode_extras(spec.extra_columns, tx.extras, n)
    return np.concatenate([builtin, extras], axis=1).astype(np.float32)
