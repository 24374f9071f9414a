"""Global per-terminal day buckets of transaction and fraud counts (``TerminalTable``).

One table for all partitions, keyed by day, fed by transactions and by late labels (counted on their
transaction's day). Pure numpy + stdlib (+ msgspec for snapshots).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import msgspec
import numpy as np

from fraudlite.errors import ConfigError, DataError
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec, terminal_bit
from fraudlite.features.state_io import FORMAT, decode_snapshot, grow

__all__ = ["TerminalTable"]

_FREE = np.iinfo(np.int64).min  # day of an unused terminal bucket


class TerminalTable:
    """Global per-terminal day buckets of transaction and fraud counts.

    Buckets are keyed by day. Terminal features of a transaction on day ``d`` read days
    ``d - delay - w + 1 .. d - delay`` only, so the table may lag the scorer by up to ``delay_days``
    without changing a feature. Days older than (latest scored day - delay - max window - slack_days)
    are recycled and events for them dropped; events ahead of the scorer get new buckets (the ring
    grows rather than overwrite a day still needed).

    Args:
        spec: the feature definition.
        slack_days: how many days a partition may lag the furthest one scored through this table.
        capacity: initial number of terminal rows (grows by doubling).
    """

    def __init__(self, spec: FeatureSpec, slack_days: int = 4, capacity: int = 1024) -> None:
        if slack_days < 0:
            raise ConfigError(f"slack_days must be >= 0, got {slack_days}")
        self.spec = spec
        self.slack_days = slack_days
        self._wmax = max(spec.terminal_windows)
        slots = spec.terminal_ring_days + slack_days
        cap = max(int(capacity), 16)
        self._index: dict[str, int] = {}
        self._tx = np.zeros((cap, slots), dtype=np.uint32)
        self._fraud = np.zeros((cap, slots), dtype=np.uint32)
        self._bits = np.zeros(cap, dtype=np.int64)  # terminal_bit per row, for customer bloom filters
        self._slot_day = np.full(slots, _FREE, dtype=np.int64)
        self._day_slot: dict[int, int] = {}
        self._horizon = _FREE + 1  # days below this are no longer needed

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of the count arrays (the id dict is not included)."""
        return self._tx.nbytes + self._fraud.nbytes + self._slot_day.nbytes

    @property
    def days(self) -> list[int]:
        """Days currently held, ascending."""
        return sorted(self._day_slot)

    def rows(self, terminal_ids: Sequence[str], insert: bool = False) -> np.ndarray:
        """Rows of terminal ids (-1 when unknown and not inserted)."""
        index = self._index
        n = len(terminal_ids)
        rows = np.fromiter(map(index.get, terminal_ids, itertools.repeat(-1, n)), dtype=np.int64, count=n)
        if insert and (rows < 0).any():
            new = []
            for i in np.flatnonzero(rows < 0):
                t = str(terminal_ids[i])
                row = index.get(t)
                if row is None:
                    row = index[t] = len(index)
                    new.append((row, t))
                rows[i] = row
            if len(index) > len(self._tx):
                cap = len(self._tx)
                while cap < len(index):
                    cap *= 2
                self._tx = grow(self._tx, cap)
                self._fraud = grow(self._fraud, cap)
                self._bits = grow(self._bits, cap)
            for row, t in new:
                self._bits[row] = terminal_bit(t, self.spec.bloom_bits)
        return rows

    def bits(self, rows: np.ndarray, terminal_ids: Sequence[str]) -> np.ndarray:
        """``terminal_bit(id, spec.bloom_bits)`` per row: from the table when known, else computed."""
        bits = self._bits[np.maximum(rows, 0)]
        for i in np.flatnonzero(rows < 0):
            bits[i] = _bit(terminal_ids[i], self.spec.bloom_bits)
        return bits

    def advance(self, day: int) -> None:
        """Note that transactions of ``day`` are being scored (lets older buckets be recycled)."""
        horizon = int(day) - self.spec.delay_days - self._wmax + 1 - self.slack_days
        self._horizon = max(self._horizon, horizon)

    def _slot(self, day: int) -> int:
        """Bucket of ``day``, allocated on first use; -1 for a day older than the horizon."""
        slot = self._day_slot.get(day)
        if slot is not None:
            return slot
        if day < self._horizon:
            return -1
        free = np.flatnonzero(self._slot_day < self._horizon)
        if free.size:
            slot = int(free[0])
            old = int(self._slot_day[slot])
            if self._day_slot.get(old) == slot:
                del self._day_slot[old]
            self._tx[:, slot] = 0
            self._fraud[:, slot] = 0
        else:
            slot = self._tx.shape[1]
            self._tx = np.concatenate([self._tx, np.zeros_like(self._tx)], axis=1)
            self._fraud = np.concatenate([self._fraud, np.zeros_like(self._fraud)], axis=1)
            self._slot_day = np.concatenate([self._slot_day, np.full(slot, _FREE, dtype=np.int64)])
        self._slot_day[slot] = day
        self._day_slot[day] = slot
        return slot

    def _add_rows(self, kind: str, rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        ts = np.asarray(ts, dtype=np.int64)
        if len(ts) == 0:
            return
        uniq, inverse = np.unique(ts // SECONDS_PER_DAY, return_inverse=True)
        slot_of = np.array([self._slot(int(d)) for d in uniq], dtype=np.int64)
        slots = slot_of[inverse]
        keep = slots >= 0
        target = self._tx if kind == "tx" else self._fraud  # after _slot: it may have grown the ring
        np.add.at(target, (rows[keep], slots[keep]), values[keep].astype(np.uint32))

    def add_transactions(self, ts: np.ndarray, terminal_ids: Sequence[str]) -> None:
        """Count transactions (int64 epoch seconds) on their terminals' days."""
        rows = self.rows(terminal_ids, insert=True)
        self._add_rows("tx", rows, ts, np.ones(len(rows), dtype=np.uint32))

    def add_labels(self, ts_of_tx: np.ndarray, terminal_ids: Sequence[str], labels: np.ndarray) -> None:
        """Count frauds (labels 0/1) on the day of their transaction (``ts_of_tx``, epoch seconds).

        Raises:
            DataError: a label other than 0/1.
        """
        labels = np.asarray(labels).astype(np.int64)
        if ((labels != 0) & (labels != 1)).any():
            raise DataError("labels must be 0 or 1")
        rows = self.rows(terminal_ids, insert=True)
        self._add_rows("fraud", rows, ts_of_tx, labels)

    def features(self, day: int, rows: np.ndarray) -> np.ndarray:
        """Terminal features of transactions on ``day`` at terminal ``rows`` (-1 = unknown terminal).

        Returns:
            float64 (n, 2 * len(terminal_windows)): per window count and fraud risk, spec order.
        """
        spec = self.spec
        end = int(day) - spec.delay_days
        slots = np.array([self._day_slot.get(end - k, -1) for k in range(self._wmax)], dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), 2 * len(spec.terminal_windows)), dtype=np.float64)
        known = np.flatnonzero(rows >= 0)
        have = slots >= 0
        if known.size == 0 or not have.any():
            return out
        r = rows[known][:, None]
        tx = np.zeros((known.size, self._wmax), dtype=np.int64)
        fraud = np.zeros_like(tx)
        tx[:, have] = self._tx[r, slots[have]]
        fraud[:, have] = self._fraud[r, slots[have]]
        ctx, cfraud = np.cumsum(tx, axis=1), np.cumsum(fraud, axis=1)
        for j, w in enumerate(spec.terminal_windows):
            count = ctx[:, w - 1].astype(np.float64)
            frauds = cfraud[:, w - 1].astype(np.float64)
            out[known, 2 * j] = count
            out[known, 2 * j + 1] = np.divide(frauds, count, out=np.zeros_like(count), where=count > 0)
        return out

    def to_bytes(self) -> bytes:
        """The table as bytes (msgpack; no pickle)."""
        days = self.days
        slots = [self._day_slot[d] for d in days]
        n = len(self._index)
        return msgspec.msgpack.encode(
            {
                "kind": "fraudlite terminal table",
                "format": FORMAT,
                "spec": self.spec.to_dict(),
                "slack_days": self.slack_days,
                "horizon": self._horizon,
                "ids": list(self._index),
                "days": days,
                "tx": np.ascontiguousarray(self._tx[:n][:, slots]).tobytes(),
                "fraud": np.ascontiguousarray(self._fraud[:n][:, slots]).tobytes(),
            }
        )

    @classmethod
    def from_bytes(cls, spec: FeatureSpec, data: bytes) -> TerminalTable:
        """Rebuild a table written by ``to_bytes``.

        Raises:
            DataError: corrupt bytes or another spec.
        """
        d = decode_snapshot(data, "fraudlite terminal table", spec)
        try:
            ids, days = [str(t) for t in d["ids"]], [int(x) for x in d["days"]]
            shape = (len(ids), len(days))
            tx = np.frombuffer(d["tx"], dtype=np.uint32).reshape(shape)
            fraud = np.frombuffer(d["fraud"], dtype=np.uint32).reshape(shape)
            table = cls(spec, slack_days=int(d["slack_days"]), capacity=max(len(ids), 16))
            horizon = int(d["horizon"])
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise DataError(f"corrupt fraudlite terminal table: {e}") from None
        table.rows(ids, insert=True)
        for j, day in enumerate(days):
            slot = table._slot(day)
            table._tx[: len(ids), slot] = tx[:, j]
            table._fraud[: len(ids), slot] = fraud[:, j]
        table._horizon = horizon
        return table


@functools.lru_cache(maxsize=1 << 18)
def _bit(terminal_id: str, bits: int) -> int:
    return terminal_bit(terminal_id, bits)
