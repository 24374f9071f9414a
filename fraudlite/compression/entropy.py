"""Bit I/O and the integer coder of the compact artifact (:mod:`fraudlite.compression.compact`).

:class:`BitWriter` / :class:`BitReader` (MSB first, Elias-gamma counts); :func:`encode_ints` codes an
integer stream with whichever of fixed-width, Golomb-Rice or canonical Huffman is smallest (2-bit tag; a
Huffman table is stored as code lengths, dense or sparse, whichever is smaller) and :func:`decode_ints`
reads it back. numpy only.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fraudlite.errors import ModelDirError

__all__ = ["huffman_code_lengths", "encode_ints", "decode_ints", "BitWriter", "BitReader"]

_MAX_CODE_LEN = 15
_FIXED, _RICE, _HUFFMAN = 0, 1, 2


# --------------------------------------------------------------------------- bit I/O


class BitWriter:
    """Accumulates bit fields, most significant bit first."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.n_bits = 0

    def write(self, value: int, n_bits: int) -> None:
        if n_bits == 0:
            return
        if value < 0 or value >> n_bits:
            raise ValueError(f"{value} does not fit in {n_bits} bits")
        self._parts.append(format(value, f"0{n_bits}b"))
        self.n_bits += n_bits

    def write_bits(self, bits: str) -> None:
        self._parts.append(bits)
        self.n_bits += len(bits)

    def write_array(self, values: np.ndarray, n_bits: int) -> None:
        """Each of ``values`` (non-negative, < 2**n_bits) in ``n_bits`` bits."""
        if n_bits == 0 or len(values) == 0:
            return
        v = np.asarray(values, dtype=np.uint64).reshape(-1, 1)
        shifts = np.arange(n_bits - 1, -1, -1, dtype=np.uint64)
        bits = ((v >> shifts) & np.uint64(1)).astype(np.uint8) + ord("0")
        self.write_bits(bits.tobytes().decode("ascii"))

    def gamma(self, n: int) -> None:
        """Elias gamma code of ``n >= 0`` (``n + 1`` in gamma)."""
        v = n + 1
        width = v.bit_length()
        self.write_bits("0" * (width - 1) + format(v, "b"))

    def getvalue(self) -> bytes:
        bits = "".join(self._parts)
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


class BitReader:
    """Reads what :class:`BitWriter` wrote; running past the end raises :class:`ModelDirError`."""

    def __init__(self, data: bytes) -> None:
        self._bits = _to_bits(data)
        self.pos = 0

    def read(self, n_bits: int) -> int:
        if n_bits == 0:
            return 0
        end = self.pos + n_bits
        if end > len(self._bits):
            raise ModelDirError("compact artifact is truncated")
        value = int(self._bits[self.pos : end], 2)
        self.pos = end
        return value

    def read_array(self, count: int, n_bits: int) -> np.ndarray:
        """``count`` values of ``n_bits`` bits each, as uint64."""
        if n_bits == 0 or count == 0:
            return np.zeros(count, dtype=np.uint64)
        end = self.pos + count * n_bits
        if end > len(self._bits):
            raise ModelDirError("compact artifact is truncated")
        bits = np.frombuffer(self._bits[self.pos : end].encode("ascii"), dtype=np.uint8) - ord("0")
        self.pos = end
        weights = np.left_shift(np.uint64(1), np.arange(n_bits - 1, -1, -1, dtype=np.uint64))
        return (bits.reshape(count, n_bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)

    def peek(self, n_bits: int) -> int:
        """The next ``n_bits`` bits as an integer (zero-padded past the end), without consuming them."""
        chunk = self._bits[self.pos : self.pos + n_bits]
        return int(chunk + "0" * (n_bits - len(chunk)), 2) if n_bits else 0

    def skip(self, n_bits: int) -> None:
        if self.pos + n_bits > len(self._bits):
            raise ModelDirError("compact artifact is truncated")
        self.pos += n_bits

    def bit(self) -> int:
        if self.pos >= len(self._bits):
            raise ModelDirError("compact artifact is truncated")
        b = self._bits[self.pos] == "1"
        self.pos += 1
        return int(b)

    def gamma(self, limit: int = 1 << 40) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 62:
                raise ModelDirError("compact artifact is corrupt (bad integer code)")
        value = ((1 << zeros) | self.read(zeros)) - 1
        if value > limit:
            raise ModelDirError(f"compact artifact is corrupt (count {value} > {limit})")
        return value

    def unary(self) -> int:
        """Count of 1 bits before the next 0."""
        idx = self._bits.find("0", self.pos)
        if idx < 0:
            raise ModelDirError("compact artifact is truncated")
        q = idx - self.pos
        self.pos = idx + 1
        return q


def _to_bits(data: bytes) -> str:
    """``data`` as a string of '0'/'1' (plain Python: decoding at model load touches no more numpy)."""
    return format(int.from_bytes(data, "big"), "b").zfill(8 * len(data)) if data else ""


# --------------------------------------------------------------------------- integer streams


def huffman_code_lengths(counts: dict[int, int], max_len: int = _MAX_CODE_LEN) -> dict[int, int]:
    """Huffman code length per symbol, at most ``max_len`` bits (deterministic tie-breaking).

    Args:
        counts: symbol -> occurrences (> 0).
        max_len: longest code allowed; counts are halved until the tree fits (rarely needed).

    Returns:
        symbol -> length; a single symbol gets length 0 (it costs no bits).
    """
    symbols = sorted(counts)
    if len(symbols) == 1:
        return {symbols[0]: 0}
    weights = {s: int(counts[s]) for s in symbols}
    while True:
        heap = [(weights[s], i, (s,)) for i, s in enumerate(symbols)]
        heapq.heapify(heap)
        depth = dict.fromkeys(symbols, 0)
        order = len(symbols)
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            for s in a + b:
                depth[s] += 1
            heapq.heappush(heap, (w1 + w2, order, a + b))
            order += 1
        if max(depth.values()) <= max_len:
            return depth
        weights = {s: max(1, w // 2) for s, w in weights.items()}


def _canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length) for canonical Huffman (ordered by length, then symbol)."""
    code, prev_len, out = 0, 0, {}
    for s in sorted(lengths, key=lambda s: (lengths[s], s)):
        length = lengths[s]
        code <<= length - prev_len
        out[s] = (code, length)
        code += 1
        prev_len = length
    return out


def _rice_cost(values: np.ndarray, k: int) -> int:
    return int(np.sum(values >> k)) + len(values) * (k + 1)


def _huffman_table_bits(lengths: dict[int, int], alphabet: int | None) -> tuple[int, bool]:
    """Bits of the cheaper table form (dense over ``alphabet`` symbols, or sparse) and whether dense."""
    syms = sorted(lengths)
    sparse = _gamma_len(len(syms) - 1) + sum(
        _gamma_len(s - (syms[i - 1] + 1 if i else 0)) + 4 for i, s in enumerate(syms)
    )
    if alphabet is not None:
        dense = 4 * alphabet
        if dense <= sparse:
            return 1 + dense, True
    return 1 + sparse, False


def _gamma_len(n: int) -> int:
    return 2 * (n + 1).bit_length() - 1


def encode_ints(w: BitWriter, values: Sequence[int] | np.ndarray, alphabet: int | None = None) -> str:
    """Write non-negative integers (their count is known to the reader) with the cheapest coder.

    Args:
        w: destination.
        values: the integers.
        alphabet: when every value is ``< alphabet`` and the reader knows it (codebook indices), a dense
            Huffman table may be used.

    Returns:
        The method used: ``"fixed"``, ``"rice"`` or ``"huffman"``.
    """
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(v) == 0:
        w.write(_FIXED, 2)
        w.write(0, 6)
        return "fixed"
    if v.min() < 0:
        raise ValueError("encode_ints takes non-negative integers")
    width = int(v.max()).bit_length()
    costs = {"fixed": 6 + width * len(v)}
    rice_k = min(range(0, max(width, 1) + 1), key=lambda k: _rice_cost(v, k))
    costs["rice"] = 5 + _rice_cost(v, rice_k)
    counts = Counter(v.tolist())
    lengths = huffman_code_lengths(counts)
    table_bits, dense = _huffman_table_bits(lengths, alphabet)
    costs["huffman"] = table_bits + sum(counts[s] * lengths[s] for s in counts)
    method = min(costs, key=lambda m: (costs[m], m))
    if method == "fixed":
        w.write(_FIXED, 2)
        w.write(width, 6)
        w.write_array(v, width)
    elif method == "rice":
        w.write(_RICE, 2)
        w.write(rice_k, 5)
        mask = (1 << rice_k) - 1
        w.write_bits(
            "".join(
                "1" * (x >> rice_k) + "0" + (format(x & mask, f"0{rice_k}b") if rice_k else "")
                for x in v.tolist()
            )
        )
    else:
        w.write(_HUFFMAN, 2)
        _write_huffman_table(w, lengths, alphabet, dense)
        codes = {s: (format(c, f"0{n}b") if n else "") for s, (c, n) in _canonical_codes(lengths).items()}
        w.write_bits("".join(codes[x] for x in v.tolist()))
    return method


def _write_huffman_table(w: BitWriter, lengths: dict[int, int], alphabet: int | None, dense: bool) -> None:
    w.write(int(dense), 1)
    if dense:
        single = len(lengths) == 1  # a lone symbol costs 0 bits; mark it present with 1
        for s in range(alphabet or 0):
            w.write((1 if single else lengths[s]) if s in lengths else 0, 4)
        return
    syms = sorted(lengths)
    w.gamma(len(syms) - 1)
    prev = -1
    for s in syms:
        w.gamma(s - prev - 1)
        w.write(lengths[s], 4)
        prev = s


def _read_huffman_table(r: BitReader, alphabet: int | None) -> dict[int, int]:
    dense = r.bit()
    if dense:
        if alphabet is None:
            raise ModelDirError("compact artifact is corrupt (dense table without an alphabet)")
        raw = {s: r.read(4) for s in range(alphabet)}
        used = {s: n for s, n in raw.items() if n}
        if len(used) == 1:
            return {next(iter(used)): 0}
        return used
    n = r.gamma(limit=1 << 32) + 1
    lengths, prev = {}, -1
    for _ in range(n):
        s = prev + 1 + r.gamma()
        lengths[s] = r.read(4)
        prev = s
    return lengths


def decode_ints(r: BitReader, count: int, alphabet: int | None = None) -> np.ndarray:
    """Read ``count`` integers written by :func:`encode_ints` (int64 array)."""
    method = r.read(2)
    if method == _FIXED:
        width = r.read(6)
        return r.read_array(count, width).astype(np.int64)
    if method == _RICE:
        k = r.read(5)
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            q = r.unary()
            out[i] = (q << k) | r.read(k)
        return out
    if method != _HUFFMAN:
        raise ModelDirError("compact artifact is corrupt (unknown integer coder)")
    lengths = _read_huffman_table(r, alphabet)
    if len(lengths) == 1:
        return np.full(count, next(iter(lengths)), dtype=np.int64)
    if any(n == 0 or n > _MAX_CODE_LEN for n in lengths.values()):
        raise ModelDirError("compact artifact is corrupt (bad Huffman code length)")
    if sum(2.0**-n for n in lengths.values()) > 1.0:
        raise ModelDirError("compact artifact is corrupt (Huffman lengths do not form a prefix code)")
    top = max(lengths.values())
    lut_sym = np.full(1 << top, -1, dtype=np.int64)
    lut_len = np.zeros(1 << top, dtype=np.int64)
    for s, (c, n) in _canonical_codes(lengths).items():
        lut_sym[c << (top - n) : (c + 1) << (top - n)] = s
        lut_len[c << (top - n) : (c + 1) << (top - n)] = n
    syms, lens = lut_sym.tolist(), lut_len.tolist()
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        v = r.peek(top)
        if syms[v] < 0:
            raise ModelDirError("compact artifact is corrupt (invalid Huffman code)")
        out[i] = syms[v]
        r.skip(lens[v])
    return out
