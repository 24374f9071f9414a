"""Realized quality from late labels: a bounded join of the decisions made to the labels that come later.

A decision is remembered by its ``tx_id`` with what the label is compared to: whether it alerted
(positive = score at or above the alert threshold) and the model version that made it, and, when a
shadow model scored the same transaction, whether the shadow would have alerted and its version. A
label that finds its decision gives one outcome per model::

    alerted & fraud -> true_positive      alerted & legit -> false_positive
    quiet & fraud   -> false_negative     quiet & legit   -> true_negative

and the entry is dropped (one label per transaction; a second one finds nothing). Labels that find no
decision are returned as unmatched: the caller decides whether they count (another scorer may have
made that decision).

Memory is bounded two ways:

* ``capacity``: at most that many decisions are held; the oldest is evicted first;
* ``horizon_s``: a decision whose event time is more than ``horizon_s`` older than the newest decision
  held is evicted (its label is not coming within the label delay, or is not coming at all). Eviction
  goes in insertion order, so an entry added after a newer one leaves once that one has.

Layout, per held decision: one ``dict`` entry ``tx_id -> small int`` (the flags and an index into a
table of (version, shadow version) pairs, so the value is one of Python's cached small ints, not an
object of its own), the ``tx_id`` string itself, and one slot of an insertion-order ring (a list of
keys + an int64 array of event times). ``tests/monitoring/test_outcomes.py`` measures it with
``tracemalloc``, for ``tx_id`` strings of 10 characters: 113-119 bytes per decision while the join
fills, 119-152 at steady state (full, evicting and matching: the dict's power-of-two table, resized
after deletions, is 1/2 to 3/4 used depending on the count) -- at most ``BYTES_PER_ENTRY``; each further
character of a tx id adds a byte. So a million decisions held take at most ~155 MB, and ``nbytes``
(the ``fraudlite_label_join_bytes`` gauge) says what the join holds now.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fraudlite.errors import ConfigError

__all__ = ["OUTCOMES", "LabelJoin", "Matched", "outcome_index", "BYTES_PER_ENTRY"]

#: Outcome names, in the order of ``outcome_index``.
OUTCOMES: tuple[str, ...] = ("true_positive", "false_positive", "false_negative", "true_negative")

#: Bytes held per decision at steady state with 10-character tx ids, measured (``tracemalloc``) by
#: ``tests/monitoring/test_outcomes.py``, which keeps the measurement at or below it.
BYTES_PER_ENTRY = 155

_ALERTED, _HAS_SHADOW, _SHADOW_ALERTED, _FLAG_BITS = 1, 2, 4, 3
_FIRST_SLOTS = 4096


def outcome_index(alerted: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Index into ``OUTCOMES`` per row: alerted (positive) or not against the label (1 = fraud)."""
    alerted = np.asarray(alerted, dtype=bool)
    fraud = np.asarray(label).astype(bool)
    return (~alerted).astype(np.int64) * 2 + (~fraud).astype(np.int64)


@dataclass
class Matched:
    """What ``LabelJoin.match`` found for a batch of labels.

    Attributes:
        outcomes: ``(model_version, outcome) -> count`` of the served decisions.
        shadow_outcomes: the same for the shadow model's would-be alerts (decisions it scored).
        unmatched: positions (in the labels given) that found no decision, ascending.
    """

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    shadow_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    unmatched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def matched(self) -> int:
        return sum(self.outcomes.values())


class LabelJoin:
    """Decisions waiting for their late label, bounded by ``capacity`` and ``horizon_s`` (module docstring).

    Args:
        capacity: most decisions held (>= 1).
        horizon_s: how much older than the newest decision (event time, s) a held one may be.

    Attributes:
        evicted: decisions dropped before their label came, by cause (``capacity``, ``horizon``).
    """

    def __init__(self, capacity: int = 1_000_000, horizon_s: int = 8 * 86_400) -> None:
        if not 1 <= capacity <= 1_000_000_000:
            raise ConfigError(f"label join capacity must be in 1..1000000000, got {capacity}")
        if horizon_s < 1:
            raise ConfigError(f"label join horizon must be >= 1 s, got {horizon_s}")
        self.capacity = int(capacity)
        self.horizon_s = int(horizon_s)
        self._entries: dict[str, int] = {}
        n = min(_FIRST_SLOTS, self.capacity)
        self._keys: list[str | None] = [None] * n
        self._ts = np.zeros(n, dtype=np.int64)
        self._head = 0  # ring slot of the oldest decision
        self._size = 0  # ring slots in use (matched decisions keep theirs until evicted)
        self._key_chars = 0  # characters of the keys in the ring (for nbytes)
        self.newest: int | None = None
        self._pairs: dict[tuple[str, str | None], int] = {}
        self._pair_list: list[tuple[str, str | None]] = []
        self.evicted = {"capacity": 0, "horizon": 0}

    def __len__(self) -> int:
        """Decisions held that no label has matched yet."""
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Estimated bytes held: the dict, the ring and the key strings (49 bytes + 1 per character)."""
        keys = self._size * sys.getsizeof("") + self._key_chars
        return sys.getsizeof(self._entries) + sys.getsizeof(self._keys) + self._ts.nbytes + keys

    # -- decisions ------------------------------------------------------------------------------------

    def add(
        self,
        tx_ids: Sequence[str],
        ts: np.ndarray,
        alerted: np.ndarray,
        version: str,
        shadow_alerted: np.ndarray | None = None,
        shadow_version: str | None = None,
    ) -> dict[str, int]:
        """Remember a batch of decisions (``ts``: event time, epoch s), then evict what the bounds say.

        A tx_id held already is updated in place (the latest decision counts). Returns the decisions
        evicted by this call, by cause.
        """
        n = len(tx_ids)
        before = dict(self.evicted)
        if n == 0:
            return {k: 0 for k in before}
        ts = np.asarray(ts, dtype=np.int64)
        flags = np.asarray(alerted, dtype=bool).astype(np.int64) * _ALERTED
        if shadow_alerted is not None:
            flags |= _HAS_SHADOW | np.asarray(shadow_alerted, dtype=bool).astype(np.int64) * _SHADOW_ALERTED
        pair = self._pair(version, shadow_version if shadow_alerted is not None else None)
        values = (flags | (pair << _FLAG_BITS)).tolist()
        entries = self._entries
        held = len(entries)
        new_keys: list[str] = []
        new_ts: list[int] = []
        if entries.keys().isdisjoint(tx_ids):  # the usual case: every tx new (checked at C speed)
            entries.update(zip(tx_ids, values, strict=True))
            if len(entries) == held + n:
                new_keys, new_ts = list(tx_ids), ts.tolist()
            else:  # a tx twice in the batch: its first time takes the ring slot
                first: dict[str, int] = {}
                for t, s in zip(tx_ids, ts.tolist(), strict=True):
                    first.setdefault(t, s)
                new_keys, new_ts = list(first), list(first.values())
        else:
            for t, v, s in zip(tx_ids, values, ts.tolist(), strict=True):
                if t not in entries:
                    new_keys.append(t)
                    new_ts.append(s)
                entries[t] = v
        self._append(new_keys, new_ts)
        newest = int(ts.max())
        self.newest = newest if self.newest is None else max(self.newest, newest)
        self._evict_older_than(self.newest - self.horizon_s)
        return {k: self.evicted[k] - before[k] for k in before}

    def _pair(self, version: str, shadow_version: str | None) -> int:
        key = (str(version), None if shadow_version is None else str(shadow_version))
        index = self._pairs.get(key)
        if index is None:
            index = self._pairs[key] = len(self._pair_list)
            self._pair_list.append(key)
        return index

    def _append(self, keys: list[str], ts: list[int]) -> None:
        """Put new keys at the ring's tail, growing it up to ``capacity``, evicting the oldest beyond."""
        if len(keys) > self.capacity:  # only the newest ``capacity`` of them can stay
            for k in keys[: len(keys) - self.capacity]:
                if self._entries.pop(k, None) is not None:
                    self.evicted["capacity"] += 1
            keys, ts = keys[len(keys) - self.capacity :], ts[len(ts) - self.capacity :]
        need = self._size + len(keys)
        while need > len(self._keys) and len(self._keys) < self.capacity:
            self._grow(min(self.capacity, 2 * len(self._keys)))
        if need > self.capacity:
            self._evict(need - self.capacity, "capacity")
        slots = len(self._keys)
        tail = (self._head + self._size) % slots
        first = min(len(keys), slots - tail)
        self._keys[tail : tail + first] = keys[:first]
        self._ts[tail : tail + first] = ts[:first]
        if first < len(keys):
            rest = len(keys) - first
            self._keys[:rest] = keys[first:]
            self._ts[:rest] = ts[first:]
        self._size += len(keys)
        self._key_chars += sum(map(len, keys))

    def _grow(self, slots: int) -> None:
        head, old = self._head, len(self._keys)
        self._keys = self._keys[head:] + self._keys[:head] + [None] * (slots - old)
        self._ts = np.concatenate([self._ts[head:], self._ts[:head], np.zeros(slots - old, np.int64)])
        self._head = 0

    def _evict(self, k: int, cause: str) -> None:
        """Drop the ``k`` oldest ring slots; their unmatched decisions count as evicted by ``cause``."""
        slots, keys, pop = len(self._keys), self._keys, self._entries.pop
        dropped = chars = 0
        for j in range(k):
            slot = (self._head + j) % slots
            key = keys[slot]
            keys[slot] = None
            chars += len(key)
            if pop(key, None) is not None:
                dropped += 1
        self._head = (self._head + k) % slots
        self._size -= k
        self._key_chars -= chars
        self.evicted[cause] += dropped

    def _evict_older_than(self, cutoff: int) -> None:
        """Evict the leading run of decisions older than ``cutoff``, looking only as far as it goes."""
        if not self._size or self._ts[self._head] >= cutoff:
            return
        slots, head, size = len(self._keys), self._head, self._size
        k, chunk = 0, 1024
        while k < size:
            seen = self._ts[(head + np.arange(k, min(k + chunk, size))) % slots]
            newer = np.flatnonzero(seen >= cutoff)
            if len(newer):
                k += int(newer[0])
                break
            k += len(seen)
            chunk *= 2
        self._evict(k, "horizon")

    # -- labels ---------------------------------------------------------------------------------------

    def match(self, tx_ids: Sequence[str], labels: np.ndarray) -> Matched:
        """Join a batch of labels (1 = fraud) to the decisions held; matched decisions are dropped."""
        pop = self._entries.pop
        found: list[int] = []
        values: list[int] = []
        for i, t in enumerate(tx_ids):
            v = pop(t, None) if t else None
            if v is not None:
                found.append(i)
                values.append(v)
        out = Matched()
        missing = np.ones(len(tx_ids), dtype=bool)
        missing[found] = False
        out.unmatched = np.flatnonzero(missing)
        if not found:
            return out
        v = np.asarray(values, dtype=np.int64)
        label = np.asarray(labels)[found]
        pair = v >> _FLAG_BITS
        served = outcome_index(v & _ALERTED != 0, label)
        out.outcomes = self._count(pair, served, 0)
        shadow = v & _HAS_SHADOW != 0
        if shadow.any():
            shadowed = outcome_index(v[shadow] & _SHADOW_ALERTED != 0, label[shadow])
            out.shadow_outcomes = self._count(pair[shadow], shadowed, 1)
        return out

    def _count(self, pair: np.ndarray, outcome: np.ndarray, which: int) -> dict[tuple[str, str], int]:
        codes, counts = np.unique(pair * len(OUTCOMES) + outcome, return_counts=True)
        out: dict[tuple[str, str], int] = {}
        for code, n in zip(codes.tolist(), counts.tolist(), strict=True):
            p, o = divmod(code, len(OUTCOMES))
            key = (self._pair_list[p][which], OUTCOMES[o])
            out[key] = out.get(key, 0) + n
        return out
