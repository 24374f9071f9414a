"""Online (incremental) features: the same FeatureSpec as ``offline.compute_features``, one batch at a time.

* ``CustomerState``: per input partition, fixed memory per customer in preallocated numpy arrays that
  grow by doubling: a ring of ``spec.customer_ring_days`` day buckets (int32 cent sums, uint16 counts),
  the last ``velocity_cap - 1`` timestamps (uint32), a uint64 bloom filter of terminal bits and a uint64
  key. Customer ids are hashed to 64-bit keys (``customer_keys``) in an open-addressing index (int32 slots,
  load <= 1/2), so the id map costs ~16 bytes per customer instead of a dict's ~130. A collision of two
  ids (p ~ n^2 / 2^65, ~3e-8 at 1M customers) would merge their states.
* ``TerminalTable``: one global table of per-terminal day buckets (tx counts, fraud counts), keyed by
  day, fed by transactions and by late labels (counted on their transaction's day).
* ``OnlineFeatures``: customer states per partition + one terminal table; ``compute`` returns the
  feature matrix for a batch and updates the state.

Semantics (see ``fraudlite.features.spec``): events of one customer are expected in time order; a
late event (earlier than the customer's last one) is applied to the customer state as if it happened
at that last timestamp. Parity with the offline computation needs ``delay_days >= 1`` (with 0 the offline
terminal window includes same-day transactions that come later, which no stream can know). Pure numpy
+ stdlib (+ msgspec for snapshots): no torch, no pandas, no pickle.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import msgspec
import numpy as np

from fraudlite.errors import ConfigError, DataError
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec, terminal_bit

__all__ = ["CustomerState", "TerminalTable", "OnlineFeatures", "customer_keys"]

_FORMAT = 1
_I32_MIN, _I32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max
_U16_MAX = np.iinfo(np.uint16).max
_TS_MAX = 2**32 - 2  # timestamps are stored as uint32 ts + 1 (0 = empty)
_FREE = np.iinfo(np.int64).min  # day of an unused terminal bucket


def _splitmix64(seed: int, n: int) -> np.ndarray:
    out, x = [], seed
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


_M64 = (1 << 64) - 1
_SHORT = 32
_MULTIPLIERS = _splitmix64(0x6672617564, 64)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (a bijection): spreads every input bit over the low bits used as slots."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def customer_keys(customer_ids: Sequence[str]) -> np.ndarray:
    """Stable (process-independent) 64-bit keys of customer ids: uint64 array.

    Vectorized: sum over positions of (code point x a fixed pseudo-random odd 64-bit multiplier), then
    a bijective mix. Two realistic distinct ids collide with probability ~2^-64 per pair.
    """
    global _MULTIPLIERS
    a = np.asarray(customer_ids, dtype=np.str_)
    if a.size == 0:
        return np.zeros(0, dtype=np.uint64)
    width = a.dtype.itemsize // 4
    if width > _SHORT and len(a) > 1:
        # One long id would pad the whole batch to its width: hash long ids one at a time.
        out = np.empty(len(a), dtype=np.uint64)
        long = np.char.str_len(a) > _SHORT
        out[~long] = customer_keys(a[~long].astype(f"<U{_SHORT}"))
        for i in np.flatnonzero(long):
            out[i] = customer_keys(a[i : i + 1])[0]
        return out
    if width > len(_MULTIPLIERS):
        _MULTIPLIERS = _splitmix64(0x6672617564, 2 * width)
    codes = a.view(np.uint32).reshape(len(a), width).astype(np.uint64)
    return _mix64((codes * (_MULTIPLIERS[:width] | np.uint64(1))).sum(axis=1, dtype=np.uint64))


def _grow(a: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


def _decode(data: bytes, kind: str, spec: FeatureSpec) -> dict:
    """msgpack -> dict, checking kind, format and spec."""
    try:
        d = msgspec.msgpack.decode(data)
        ok = isinstance(d, dict) and d.get("kind") == kind and d.get("format") == _FORMAT
        same_spec = ok and FeatureSpec.from_dict(d["spec"]) == spec
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"corrupt {kind}: {e}") from None
    if not ok:
        raise DataError(f"not a {kind} (or written by another version)")
    if not same_spec:
        raise DataError(f"{kind} was written for another feature spec")
    return d


class _KeyIndex:
    """Vectorized open addressing (linear probing) from uint64 keys to rows (keys kept by the caller)."""

    def __init__(self, size: int) -> None:
        self.slots = np.full(size, -1, dtype=np.int32)

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes

    def find(self, keys: np.ndarray, row_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``keys`` (-1 when absent) and, for absent ones, the first empty slot of their probe."""
        mask = len(self.slots) - 1
        n = len(keys)
        rows = np.full(n, -1, dtype=np.int64)
        empty_at = np.full(n, -1, dtype=np.int64)
        pending = np.arange(n)
        slot = (keys & np.uint64(mask)).astype(np.int64)
        while pending.size:
            r = self.slots[slot].astype(np.int64)
            empty = r < 0
            hit = ~empty & (row_keys[np.maximum(r, 0)] == keys[pending])
            rows[pending[hit]] = r[hit]
            empty_at[pending[empty]] = slot[empty]
            more = ~(empty | hit)
            pending, slot = pending[more], (slot[more] + 1) & mask
        return rows, empty_at

    def place(self, new_rows: np.ndarray, start_slots: np.ndarray) -> None:
        """Put absent keys' rows into empty slots, probing from ``start_slots`` (resolves clashes)."""
        mask = len(self.slots) - 1
        rows, slot = new_rows.astype(np.int32), start_slots.astype(np.int64)
        while rows.size:
            cand = np.flatnonzero(self.slots[slot] < 0)
            _, first = np.unique(slot[cand], return_index=True)
            won = np.zeros(len(rows), dtype=bool)
            won[cand[first]] = True
            self.slots[slot[won]] = rows[won]
            rows, slot = rows[~won], (slot[~won] + 1) & mask

    def rebuild(self, row_keys: np.ndarray, size: int) -> None:
        self.slots = np.full(size, -1, dtype=np.int32)
        if len(row_keys):
            self.place(np.arange(len(row_keys)), (row_keys & np.uint64(size - 1)).astype(np.int64))


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
        self._index = _KeyIndex(1 << max(5, (2 * cap - 1).bit_length()))
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
            self._keys = _grow(self._keys, cap)
            self._day_cents = _grow(self._day_cents, cap)
            self._day_counts = _grow(self._day_counts, cap)
            self._recent = _grow(self._recent, cap)
            self._bloom = _grow(self._bloom, cap)
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
                "format": _FORMAT,
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
        d = _decode(data, "fraudlite customer state", self.spec)
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
                self._tx = _grow(self._tx, cap)
                self._fraud = _grow(self._fraud, cap)
                self._bits = _grow(self._bits, cap)
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
                "format": _FORMAT,
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
        d = _decode(data, "fraudlite terminal table", spec)
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


class OnlineFeatures:
    """Customer states per input partition plus one global terminal table.

    Args:
        spec: the feature definition.
        terminals: a shared terminal table (default: a new one).
    """

    def __init__(self, spec: FeatureSpec, terminals: TerminalTable | None = None) -> None:
        self.spec = spec
        self.terminals = terminals if terminals is not None else TerminalTable(spec)
        self.states: dict[int, CustomerState] = {}

    def state(self, partition: int) -> CustomerState:
        """The customer state of ``partition`` (created empty on first use)."""
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = CustomerState(self.spec)
        return state

    def set_state(self, partition: int, state: CustomerState) -> None:
        """Install a restored state (e.g. on partition assignment).

        Raises:
            ConfigError: the state was built for another spec.
        """
        if state.spec != self.spec:
            raise ConfigError("customer state was built for another feature spec")
        self.states[partition] = state

    def drop_partition(self, partition: int) -> CustomerState | None:
        """Forget (and return) a partition's state, e.g. on revocation."""
        return self.states.pop(partition, None)

    @property
    def n_customers(self) -> int:
        return sum(len(s) for s in self.states.values())

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.states.values()) + self.terminals.nbytes

    def compute(
        self,
        partition: int,
        ts: np.ndarray,
        customer_ids: Sequence[str],
        terminal_ids: Sequence[str],
        amount_cents: np.ndarray,
        update_terminals: bool = False,
    ) -> np.ndarray:
        """Features of a batch of one partition, in stream order, updating the state.

        Args:
            partition: input partition (selects the customer state).
            ts: int64 epoch seconds (floored).
            customer_ids, terminal_ids: string ids per row.
            amount_cents: int64 amounts in cents (``offline.amount_to_cents``).
            update_terminals: also count these transactions in the terminal table (when no separate
                consumer feeds it from the transactions topic).

        Returns:
            float32 (n, spec.n_features), columns in ``spec.names``.

        Raises:
            DataError: mismatched lengths or timestamps out of range.
        """
        spec = self.spec
        ts = np.asarray(ts, dtype=np.int64)
        cents = np.asarray(amount_cents, dtype=np.int64)
        n = len(ts)
        if not (len(customer_ids) == len(terminal_ids) == len(cents) == n):
            raise DataError("ts, customer_ids, terminal_ids and amount_cents must have the same length")
        out = np.empty((n, spec.n_features), dtype=np.float64)
        if n == 0:
            return out.astype(np.float32)
        amount = cents / 100.0
        out[:, 0] = amount
        out[:, 1] = np.log1p(amount)
        out[:, 2] = (ts % SECONDS_PER_DAY) // 3600 < spec.night_end_hour
        day = ts // SECONDS_PER_DAY
        out[:, 3] = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        table = self.terminals
        rows = table.rows(terminal_ids, insert=update_terminals)
        bits = table.bits(rows, terminal_ids)
        c0 = 4
        c1 = c0 + 2 * len(spec.customer_windows) + 4
        out[:, c0:c1] = self.state(partition).update(customer_keys(customer_ids), ts, cents, bits)

        # Terminal part, day by day (ascending) so counts of an earlier day in this batch are in the
        # table before a later day reads them.
        uniq = np.unique(day)
        if len(uniq) == 1:
            groups = [np.arange(n)]
        else:
            order = np.argsort(day, kind="stable")
            groups = np.split(order, np.searchsorted(day[order], uniq[1:]))
        for d, g in zip(uniq.tolist(), groups, strict=True):
            table.advance(d)
            out[g, c1:] = table.features(d, rows[g])
            if update_terminals:
                table._add_rows("tx", rows[g], ts[g], np.ones(len(g), dtype=np.uint32))
        return out.astype(np.float32)
