"""Per-customer window state of one input partition (``CustomerState``).

Fixed memory per customer in preallocated numpy arrays that grow by doubling: a ring of
``spec.customer_ring_days`` day buckets (int32 cent sums, uint16 counts), the last ``velocity_cap - 1``
timestamps (uint32), a uint64 bloom filter of terminal bits and a uint64 key. Rows are found by
customer key (``fraudlite.features.customer_index``). Pure numpy + stdlib (+ msgspec for snapshots).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from fraudlite.errors import DataError
from fraudlite.features.customer_index import KeyIndex, customer_keys
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudlite.features.state_io import FORMAT, decode_snapshot, grow

__all__ = ["CustomerState"]

_I32_MIN, _I32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max
_U16_MAX = np.iinfo(np.uint16).max
_TS_MAX = 2**32 - 2  # timestamps are stored as uint32 ts + 1 (0 = empty)


class CustomerState:
    """Per-customer window state of one partition (see the module docstring for the layout).

    Args:
        spec: the feature definition.
        capacity: initial number of customer rows (grows by doubling).
    """

    def __init__(self, spec: FeatureSpec, capacity: int = 1024) -> None:
        self.spec = spec
        self._w = spec.customer_ring_days
        self._k = max(spec.velocity_cap - 1, 1)
        self._n = 0
        cap = max(int(capacity), 16)
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._day_cents = np.zeros((cap, self._w), dtype=np.int32)
        self._day_counts = np.zeros((cap, self._w), dtype=np.uint16)
        self._recent = np.zeros((cap, self._k), dtype=np.uint32)
        self._bloom = np.zeros(cap, dtype=np.uint64)
        self._index = KeyIndex(1 << max(5, (2 * cap - 1).bit_length()))
        # _age[h, i] = (h - i) % W: how many days bucket i's day lies before a day in bucket h; row h
        # also lists the buckets of days h, h-1, ..., h-W+1.
        self._age = (np.arange(self._w)[:, None] - np.arange(self._w)[None, :]) % self._w

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays and the id index (allocated capacity, not just used rows)."""
        arrays = (self._keys, self._day_cents, self._day_counts, self._recent, self._bloom)
        return sum(a.nbytes for a in arrays) + self._index.nbytes

    def _reserve(self, n: int) -> bool:
        """Room for ``n`` customers; True when the index was rebuilt (probe positions changed)."""
        cap = self.capacity
        if n > cap:
            while cap < n:
                cap *= 2
            self._keys = grow(self._keys, cap)
            self._day_cents = grow(self._day_cents, cap)
            self._day_counts = grow(self._day_counts, cap)
            self._recent = grow(self._recent, cap)
            self._bloom = grow(self._bloom, cap)
        size = len(self._index.slots)
        if 2 * n <= size:
            return False
        while 2 * n > size:
            size *= 2
        self._index.rebuild(self._keys[: self._n], size)
        return True

    def rows(self, keys: np.ndarray, insert: bool = True) -> np.ndarray:
        """Rows of customer ``keys`` (``customer_keys``); new customers get fresh rows (or -1)."""
        keys = np.asarray(keys, dtype=np.uint64)
        rows, empty_at = self._index.find(keys, self._keys)
        missing = np.flatnonzero(rows < 0)
        if not insert or missing.size == 0:
            return rows
        uniq, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # number new rows by first appearance
        new_rows = np.empty(len(uniq), dtype=np.int64)
        new_rows[order] = np.arange(self._n, self._n + len(uniq))
        if self._reserve(self._n + len(uniq)):
            _, starts = self._index.find(uniq, self._keys)
        else:
            starts = empty_at[missing][first]
        self._keys[new_rows] = uniq
        self._index.place(new_rows, starts)
        self._n += len(uniq)
        rows[missing] = new_rows[inverse]
        return rows

    def update(self, keys: np.ndarray, ts: np.ndarray, cents: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Apply a batch (in stream order) and return its customer features.

        Args:
            keys: uint64 customer keys (``customer_keys``).
            ts: int64 epoch seconds.
            cents: int64 amounts in cents.
            bits: int64 terminal bloom bits (``terminal_bit(id, spec.bloom_bits)``).

        Returns:
            float64 (n, 2 * len(customer_windows) + 4): per window count and mean amount, amount ratio,
            velocity, log1p seconds since previous, new terminal -- the order of ``spec.names``.

        Raises:
            DataError: a timestamp outside 1970..2106.
        """
        n = len(keys)
        out = np.empty((n, 2 * len(self.spec.customer_windows) + 4), dtype=np.float64)
        if n == 0:
            return out
        ts = np.asarray(ts, dtype=np.int64)
        cents = np.asarray(cents, dtype=np.int64)
        bits = np.asarray(bits, dtype=np.int64)
        if ts.min() < 0 or ts.max() > _TS_MAX:
            raise DataError(f"timestamps must be epoch seconds in 0..{_TS_MAX}, got {ts.min()}..{ts.max()}")
        rows = self.rows(keys)
        # Occurrence rank of each customer inside the batch: round r holds every customer's r-th row,
        # so a round touches distinct customers and is pure fancy indexing.
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        starts = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
        pos = np.arange(n)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = pos - np.maximum.accumulate(np.where(starts, pos, 0))
        if not rank.any():
            self._round(pos, rows, ts, cents, bits, out)
            return out
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        for r in range(len(bounds) - 1):
            idx = by_rank[bounds[r] : bounds[r + 1]]
            self._round(idx, rows[idx], ts[idx], cents[idx], bits[idx], out)
        return out

    def _round(
        self, idx: np.ndarray, r: np.ndarray, t: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray
    ) -> None:
        """One row per distinct customer ``r``: read and update its state, write features to ``out[idx]``."""
        spec, w_all = self.spec, self._w
        m = len(idx)
        recent = self._recent[r]
        has_prev = recent[:, 0] > 0
        last = recent[:, 0].astype(np.int64) - 1
        t = np.where(has_prev, np.maximum(t, last), t)  # a late event counts at the last timestamp
        day = t // SECONDS_PER_DAY
        last_day = np.where(has_prev, last // SECONDS_PER_DAY, day)

        # Day buckets: bucket i holds day last_day - ((last_day - i) % W); clear those now out of range.
        cents = self._day_cents[r]
        counts = self._day_counts[r]
        stale = (day - last_day)[:, None] + self._age[last_day % w_all] >= w_all
        cents[stale] = 0
        counts[stale] = 0
        here = day % w_all
        mr = np.arange(m)
        cents[mr, here] = np.clip(cents[mr, here].astype(np.int64) + a, _I32_MIN, _I32_MAX)
        counts[mr, here] = np.minimum(counts[mr, here].astype(np.int64) + 1, _U16_MAX)
        self._day_cents[r] = cents
        self._day_counts[r] = counts
        by_age = self._age[here]  # column k = bucket of day - k
        csum = np.cumsum(np.take_along_axis(cents, by_age, axis=1), axis=1, dtype=np.int64)
        ccount = np.cumsum(np.take_along_axis(counts, by_age, axis=1), axis=1, dtype=np.int64)
        col = 0
        avg_largest = np.zeros(m)
        for w in spec.customer_windows:
            count = ccount[:, w - 1]
            avg = csum[:, w - 1] / count / 100.0
            out[idx, col] = count
            out[idx, col + 1] = avg
            col += 2
            if w == w_all:
                avg_largest = avg
        amount = a / 100.0
        out[idx, col] = np.divide(amount, avg_largest, out=np.ones(m), where=avg_largest > 0)

        prev = recent.astype(np.int64) - 1
        in_window = (recent > 0) & (prev > (t - spec.velocity_seconds)[:, None])
        velocity = 1 + in_window[:, : spec.velocity_cap - 1].sum(axis=1)
        out[idx, col + 1] = np.minimum(velocity, spec.velocity_cap)
        gap = np.where(has_prev, t - last, w_all * SECONDS_PER_DAY).astype(np.float64)
        out[idx, col + 2] = np.log1p(gap)
        if self._k > 1:
            self._recent[r, 1:] = recent[:, :-1]
        self._recent[r, 0] = (t + 1).astype(np.uint32)

        mask = np.left_shift(np.uint64(1), b.astype(np.uint64))
        bloom = self._bloom[r]
        out[idx, col + 3] = (bloom & mask) == 0
        self._bloom[r] = bloom | mask

    # -- snapshots -----------------------------------------------------------------------------------

    def _encode(self, rows: np.ndarray) -> bytes:
        return msgspec.msgpack.encode(
            {
                "kind": "fraudlite customer state",
                "format": FORMAT,
                "spec": self.spec.to_dict(),
                "n": len(rows),
                "keys": self._keys[rows].tobytes(),
                "day_cents": self._day_cents[rows].tobytes(),
                "day_counts": self._day_counts[rows].tobytes(),
                "recent": self._recent[rows].tobytes(),
                "bloom": self._bloom[rows].tobytes(),
            }
        )

    def to_bytes(self) -> bytes:
        """The whole state as bytes (msgpack of raw arrays, machine byte order; no pickle)."""
        return self._encode(np.arange(self._n))

    def export_rows(self, customer_ids: Sequence[str]) -> bytes:
        """The state of some customers (unknown ids are skipped), e.g. for a changelog record."""
        rows = self.rows(customer_keys(customer_ids), insert=False)
        return self._encode(np.unique(rows[rows >= 0]))

    def import_rows(self, data: bytes) -> int:
        """Insert or overwrite customers from ``export_rows``/``to_bytes`` bytes; returns how many.

        Raises:
            DataError: the bytes are not a customer state of this spec.
        """
        d = decode_snapshot(data, "fraudlite customer state", self.spec)
        try:
            n = int(d["n"])
            keys = np.frombuffer(d["keys"], dtype=np.uint64, count=n)
            cents = np.frombuffer(d["day_cents"], dtype=np.int32).reshape(n, self._w)
            counts = np.frombuffer(d["day_counts"], dtype=np.uint16).reshape(n, self._w)
            recent = np.frombuffer(d["recent"], dtype=np.uint32).reshape(n, self._k)
            bloom = np.frombuffer(d["bloom"], dtype=np.uint64, count=n)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"corrupt fraudlite customer state: {e}") from None
        rows = self.rows(keys)
        self._day_cents[rows] = cents
        self._day_counts[rows] = counts
        self._recent[rows] = recent
        self._bloom[rows] = bloom
        return n

    @classmethod
    def from_bytes(cls, spec: FeatureSpec, data: bytes) -> CustomerState:
        """Rebuild a state written by ``to_bytes``.

        Raises:
            DataError: corrupt bytes or another spec.
        """
        state = cls(spec)
        state.import_rows(data)
        return state
