"""The entropy-coded compact artifact: a :class:`CompressedMLP` in as few bits as decode bit-exactly.

This is the form a registry stores and ships (role ``compact`` in ``manifest.json``). numpy only: a
serving or registry process decodes it without torch.

Layout: one bit stream (MSB first, zero-padded to whole bytes) after a 4-byte header ``b"FLc"`` +
format version. Counts are Elias-gamma codes; floats are written as fp16, bf16 or fp32, whichever of
them holds the array exactly (the encoder never rounds: see :func:`round_floats` for the lossy step;
the clustering stage rounds to fp16 itself); an ascending array (a sorted codebook) may instead be
stored as its first order-preserving key and the key gaps, when that is smaller. Per layer:

- the bias;
- the sparse positions of the kept weights (layers with a mask) as *relative* indices: the number of
  pruned entries skipped before each kept one, row-major (Deep Compression's relative indexing,
  without its fixed-width padding entries);
- with a codebook: ``k``, the centroids and the codebook index of each kept weight; without: the kept
  weights themselves.

Every integer stream (gaps, indices) is coded by whichever of fixed-width, Golomb-Rice or canonical
Huffman is smallest for it (2-bit tag; a Huffman table is stored as code lengths, dense or sparse,
whichever is smaller). Gaps of magnitude-pruned layers are close to geometric, where Rice is near
optimal with no table; skewed codebook indices are where Huffman wins. Optional trailers hold the
per-layer int8 quantization parameters and the stage history as zlib-compressed JSON.

:func:`encode_compact` verifies its own output by decoding it, so an artifact that was written always
decodes bit-exactly.
"""

from __future__ import annotations

import heapq
import json
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError, ModelDirError

__all__ = [
    "MAGIC",
    "encode_compact",
    "decode_compact",
    "compact_breakdown",
    "round_floats",
    "huffman_code_lengths",
    "encode_ints",
    "decode_ints",
    "BitWriter",
    "BitReader",
]

MAGIC = b"FLc"
_VERSION = 1
_MAX_CODE_LEN = 15
_FIXED, _RICE, _HUFFMAN = 0, 1, 2
_F32, _F16, _BF16, _SORTED = 0, 1, 2, 3


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
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    return (bits + ord("0")).astype(np.uint8).tobytes().decode("ascii")


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


# --------------------------------------------------------------------------- floats


def _float_kind(a: np.ndarray) -> int:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.astype(np.float16).astype(np.float32).tobytes() == a.tobytes():
        return _F16
    if not np.any(a.view(np.uint32) & np.uint32(0xFFFF)):
        return _BF16
    return _F32


def _words(a: np.ndarray, kind: int) -> tuple[np.ndarray, int]:
    """The stored bit patterns (uint64) of ``a`` for ``kind`` and their width."""
    if kind == _F16:
        return a.astype(np.float16).view(np.uint16).astype(np.uint64), 16
    if kind == _BF16:
        return (a.view(np.uint32) >> np.uint32(16)).astype(np.uint64), 16
    return a.view(np.uint32).astype(np.uint64), 32


def _from_words(words: np.ndarray, kind: int) -> np.ndarray:
    if kind == _F16:
        return words.astype(np.uint16).view(np.float16).astype(np.float32)
    if kind == _BF16:
        return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return words.astype(np.uint32).view(np.float32)


def _order_keys(words: np.ndarray, width: int) -> np.ndarray:
    """Map IEEE bit patterns to unsigned keys that sort like the values (bijective)."""
    sign = np.uint64(1 << (width - 1))
    full = np.uint64((1 << width) - 1)
    return np.where(words & sign, ~words & full, words | sign)


def _from_order_keys(keys: np.ndarray, width: int) -> np.ndarray:
    sign = np.uint64(1 << (width - 1))
    full = np.uint64((1 << width) - 1)
    return np.where(keys & sign, keys & ~sign & full, ~keys & full)


def _write_floats(w: BitWriter, a: np.ndarray) -> None:
    """Raw fp16/bf16/fp32 words (2-bit tag), or — for ascending arrays such as sorted codebooks, when it
    is smaller — tag 3, the word kind, the first order-preserving key and the key gaps (integer coder)."""
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    kind = _float_kind(a)
    words, width = _words(a, kind)
    if len(a) >= 3:
        keys = _order_keys(words, width)
        if np.all(np.diff(keys.astype(np.int64)) >= 0):
            sorted_w = BitWriter()
            sorted_w.write(kind, 2)
            sorted_w.write(int(keys[0]), width)
            encode_ints(sorted_w, np.diff(keys.astype(np.int64)))
            if sorted_w.n_bits < width * len(a):
                w.write(_SORTED, 2)
                w.write_bits("".join(sorted_w._parts))
                return
    w.write(kind, 2)
    w.write_array(words, width)


def _read_floats(r: BitReader, count: int) -> np.ndarray:
    kind = r.read(2)
    if kind == _SORTED:
        kind = r.read(2)
        if kind == _SORTED:
            raise ModelDirError("compact artifact is corrupt (unknown float format)")
        width = 16 if kind in (_F16, _BF16) else 32
        first = r.read(width)
        gaps = decode_ints(r, count - 1)
        keys = np.concatenate([[first], first + np.cumsum(gaps)]).astype(np.uint64)
        if keys.size and int(keys[-1]) >> width:
            raise ModelDirError("compact artifact is corrupt (float keys out of range)")
        return _from_words(_from_order_keys(keys, width), kind)
    width = 16 if kind in (_F16, _BF16) else 32
    return _from_words(r.read_array(count, width), kind)


def _write_blob(w: BitWriter, obj) -> None:
    data = zlib.compress(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(), 9)
    w.gamma(len(data))
    w.write_array(np.frombuffer(data, dtype=np.uint8), 8)


def _read_blob(r: BitReader):
    n = r.gamma(limit=1 << 28)
    data = r.read_array(n, 8).astype(np.uint8).tobytes()
    try:
        return json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as exc:
        raise ModelDirError(f"compact artifact is corrupt (metadata: {exc})") from exc


# --------------------------------------------------------------------------- the artifact


def encode_compact(c: CompressedMLP, *, keep_stages: bool = False) -> bytes:
    """Entropy-code a compressed MLP losslessly.

    Args:
        c: the model (pruned entries exactly +0.0; clustered layers equal to ``centroids[indices]``).
        keep_stages: also store the stage history (JSON); off by default because the model directory's
            manifest holds it and it would cost more than the weights.

    Returns:
        The artifact bytes; :func:`decode_compact` returns ``c`` bit-exactly (stages empty unless kept).

    Raises:
        ConfigError: when ``c`` breaks the :class:`CompressedMLP` conventions so that it cannot round-trip
            (for example a pruned entry that is -0.0 or a clustered weight not equal to its centroid).
    """
    w = BitWriter()
    w.write(int(c.quant is not None) | (int(keep_stages) << 1), 2)
    w.gamma(len(c.layers) - 1)
    w.gamma(c.n_features - 1)
    for width in c.hidden:
        w.gamma(width - 1)
    _write_floats(w, c.mean)
    _write_floats(w, c.std)
    for (weight, bias), mask, cb in zip(c.layers, c.masks, c.codebooks, strict=True):
        w.write(int(mask is not None) | (int(cb is not None) << 1), 2)
        _write_floats(w, bias)
        flat_mask = None if mask is None else mask.reshape(-1)
        if flat_mask is not None:
            kept = np.flatnonzero(flat_mask)
            w.gamma(len(kept))
            gaps = np.diff(np.concatenate([[-1], kept])) - 1
            encode_ints(w, gaps)
        if cb is not None:
            centroids, indices = cb
            w.gamma(len(centroids) - 1)
            _write_floats(w, centroids)
            flat = indices.reshape(-1)
            encode_ints(w, flat if flat_mask is None else flat[flat_mask], alphabet=len(centroids))
        else:
            flat = weight.reshape(-1)
            _write_floats(w, flat if flat_mask is None else flat[flat_mask])
    if c.quant is not None:
        _write_blob(w, c.quant)
    if keep_stages:
        _write_blob(w, c.stages)
    data = MAGIC + bytes([_VERSION]) + w.getvalue()
    _verify(c, data, keep_stages)
    return data


def _verify(c: CompressedMLP, data: bytes, keep_stages: bool) -> None:
    back = decode_compact(data)
    expected = c if keep_stages else CompressedMLP(c.layers, c.mean, c.std, c.masks, c.codebooks, c.quant, [])
    if not back.equals(expected):
        bad = [
            i
            for i, ((wa, _), (wb, _)) in enumerate(zip(back.layers, expected.layers, strict=True))
            if wa.tobytes() != wb.tobytes()
        ]
        raise ConfigError(
            "compressed model does not round-trip through the compact encoding"
            + (
                f" (weights of layer(s) {bad}: pruned entries must be +0.0 and clustered weights "
                "exactly centroids[indices])"
                if bad
                else ""
            )
        )


def decode_compact(data: bytes) -> CompressedMLP:
    """Inverse of :func:`encode_compact` (numpy only).

    Raises:
        ModelDirError: when ``data`` is not a compact artifact, is truncated or corrupt.
    """
    data = bytes(data)
    if data[:3] != MAGIC:
        raise ModelDirError("not a fraudlite compact artifact (bad magic)")
    if len(data) < 4 or data[3] != _VERSION:
        raise ModelDirError(f"unsupported compact artifact version {data[3] if len(data) > 3 else None}")
    r = BitReader(data[4:])
    flags = r.read(2)
    n_layers = r.gamma(limit=1024) + 1
    n_features = r.gamma(limit=1 << 20) + 1
    widths = [n_features] + [r.gamma(limit=1 << 20) + 1 for _ in range(n_layers - 1)] + [1]
    mean = _read_floats(r, n_features)
    std = _read_floats(r, n_features)
    layers, masks, codebooks = [], [], []
    for i in range(n_layers):
        shape = (widths[i + 1], widths[i])
        size = shape[0] * shape[1]
        has = r.read(2)
        bias = _read_floats(r, shape[0])
        mask = None
        if has & 1:
            n_kept = r.gamma(limit=size)
            gaps = decode_ints(r, n_kept)
            kept = np.cumsum(gaps + 1) - 1
            if n_kept and kept[-1] >= size:
                raise ModelDirError(f"compact artifact is corrupt (layer {i} positions out of range)")
            mask = np.zeros(size, dtype=bool)
            mask[kept] = True
        weight = np.zeros(size, dtype=np.float32)
        cb = None
        if has & 2:
            k = r.gamma(limit=255) + 1
            centroids = _read_floats(r, k)
            n = size if mask is None else int(mask.sum())
            idx = decode_ints(r, n, alphabet=k)
            if n and idx.max() >= k:
                raise ModelDirError(f"compact artifact is corrupt (layer {i} codebook index out of range)")
            indices = np.zeros(size, dtype=np.uint8)
            if mask is None:
                indices[:] = idx
            else:
                indices[mask] = idx
            weight = centroids[indices.astype(np.intp)]
            if mask is not None:
                weight[~mask] = 0.0
            cb = (centroids, indices.reshape(shape))
        else:
            n = size if mask is None else int(mask.sum())
            values = _read_floats(r, n)
            if mask is None:
                weight = values
            else:
                weight[mask] = values
        layers.append((weight.reshape(shape), bias))
        masks.append(None if mask is None else mask.reshape(shape))
        codebooks.append(cb)
    quant = _read_blob(r) if flags & 1 else None
    stages = _read_blob(r) if flags & 2 else []
    return CompressedMLP(layers, mean, std, masks, codebooks, quant, stages)


def compact_breakdown(c: CompressedMLP) -> dict[str, int]:
    """Approximate bytes per part of the artifact (stats, biases, positions, codebooks, indices/values).

    Each part is measured by encoding it alone, so the parts add up to roughly the artifact size.
    """
    parts = {"header": 4, "stats": 0, "biases": 0, "positions": 0, "codebooks": 0, "weights": 0}
    bits = {k: 0 for k in parts}

    def cost(fn) -> int:
        w = BitWriter()
        fn(w)
        return w.n_bits

    bits["stats"] = cost(lambda w: (_write_floats(w, c.mean), _write_floats(w, c.std)))
    for (weight, bias), mask, cb in zip(c.layers, c.masks, c.codebooks, strict=True):
        bits["biases"] += cost(lambda w, b=bias: _write_floats(w, b))
        flat_mask = None if mask is None else mask.reshape(-1)
        if flat_mask is not None:
            kept = np.flatnonzero(flat_mask)
            bits["positions"] += cost(
                lambda w, k=kept: encode_ints(w, np.diff(np.concatenate([[-1], k])) - 1)
            )
        if cb is not None:
            bits["codebooks"] += cost(lambda w, cb=cb: _write_floats(w, cb[0]))
            flat = cb[1].reshape(-1)
            sel = flat if flat_mask is None else flat[flat_mask]
            k = len(cb[0])
            bits["weights"] += cost(lambda w, s=sel, k=k: encode_ints(w, s, alphabet=k))
        else:
            flat = weight.reshape(-1)
            sel = flat if flat_mask is None else flat[flat_mask]
            bits["weights"] += cost(lambda w, s=sel: _write_floats(w, s))
    for k in bits:
        parts[k] += (bits[k] + 7) // 8
    return parts


def round_floats(c: CompressedMLP, dtype: str = "float16") -> CompressedMLP:
    """A copy whose stats, biases, centroids and unclustered weights are rounded to ``dtype``.

    This is the one lossy step of the artifact (the pipeline measures its AP like any stage); the
    encoder then stores those arrays in 16 bits exactly. Pruned entries stay exactly 0.

    Args:
        c: the model.
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"`` (no change).

    Raises:
        ConfigError: on another dtype or values out of the dtype's range.
    """
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"float dtype must be float16, bfloat16 or float32, got {dtype!r}")
    out = c.copy()
    if dtype == "float32":
        return out

    def rnd(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if dtype == "float16":
            r = a.astype(np.float16).astype(np.float32)
        else:  # round to nearest even on the upper 16 bits
            u = a.view(np.uint32).astype(np.uint64)
            u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
            r = u.astype(np.uint32).view(np.float32)
        if not np.isfinite(r).all():
            raise ConfigError(f"values out of {dtype} range")
        return r

    out.mean = rnd(out.mean)
    out.std = rnd(out.std)
    if np.any(out.std == 0):
        raise ConfigError(f"a feature std rounds to 0 in {dtype}")
    layers = []
    for i, ((weight, bias), mask) in enumerate(zip(out.layers, out.masks, strict=True)):
        cb = out.codebooks[i]
        if cb is not None:
            centroids = rnd(cb[0])
            out.codebooks[i] = (centroids, cb[1])
            weight = centroids[cb[1].astype(np.intp)]
        else:
            weight = rnd(weight)
        if mask is not None:
            weight = np.where(mask, weight, np.float32(0)).astype(np.float32)
        layers.append((weight, rnd(bias)))
    out.layers = layers
    return out
