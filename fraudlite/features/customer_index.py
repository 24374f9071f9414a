"""Customer ids to stable 64-bit keys, and an open-addressing index from keys to state rows.

Customer ids are hashed to 64-bit keys (``customer_keys``) in an open-addressing index (``KeyIndex``:
int32 slots, load <= 1/2), so the id map costs ~16 bytes per customer instead of a dict's ~130. A
collision of two ids (p ~ n^2 / 2^65, ~3e-8 at 1M customers) would merge their states. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["customer_keys", "KeyIndex"]


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


class KeyIndex:
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
