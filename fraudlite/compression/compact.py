"""The entropy-coded compact artifact: a :class:`CompressedMLP` in as few bits as decode bit-exactly.

This is the form a registry stores and ships (role ``compact`` in ``manifest.json``). numpy only: a
serving or registry process decodes it without torch.

Layout: one bit stream (MSB first, zero-padded to whole bytes) after a 4-byte header ``b"FLc"`` +
format version. Counts are Elias-gamma codes; floats are written as fp16, bf16 or fp32, whichever of
them holds the array exactly, without the low mantissa bits that are zero in every value of the array
(format 2; the clustering stage rounds centroids, biases and stats to a few mantissa bits, and the
encoder itself never rounds: see :func:`round_floats` for the lossy step); an ascending array (a sorted
codebook) may instead be stored as its first order-preserving key and the key gaps, when that is
smaller. Per layer:

- the bias;
- the sparse positions of the kept weights (layers with a mask) as *relative* indices: the number of
  pruned entries skipped before each kept one, row-major (Deep Compression's relative indexing,
  without its fixed-width padding entries);
- with a codebook: ``k``, the centroids and each kept weight's index (ternary: ``k = 3``, 2 bits before
  entropy coding); a layer on a per-row grid ``W = scale_j * q``, ``|q| <= qmax`` (QAT at 2..8 bits,
  binary): ``qmax`` and the float32 scales (format 4; format 3: 127, scales in the trailer) and each
  kept ``q + qmax`` (``bits`` wide before entropy coding, a binary code ~1 bit); else the weights.

Every integer stream (gaps, indices) is coded (:mod:`fraudlite.compression.entropy`) by whichever of
fixed-width, Golomb-Rice or canonical Huffman is smallest for it (2-bit tag; a Huffman table is stored
as code lengths, dense or sparse, whichever is smaller). Gaps of magnitude-pruned layers are close to geometric, where Rice is near
optimal with no table; skewed codebook indices are where Huffman wins. Optional trailers hold the
per-layer int8 quantization parameters and the stage history as zlib-compressed JSON.

:func:`encode_compact` verifies its own output by decoding it, so an artifact that was written always
decodes bit-exactly.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from fraudlite.compression.entropy import (
    BitReader,
    BitWriter,
    decode_ints,
    encode_ints,
    huffman_code_lengths,
)
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError, ModelDirError

__all__ = [
    "MAGIC",
    "encode_compact",
    "decode_compact",
    "compact_breakdown",
    "round_floats",
    "round_to_float16",
    "huffman_code_lengths",
    "encode_ints",
    "decode_ints",
    "BitWriter",
    "BitReader",
]

MAGIC = b"FLc"
_VERSION = 4  # 4: grid layers carry qmax and their scales; 3: int8 grids; 2: floats drop zero low bits
QMAX = 127  # the largest grid (int8, fraudlite.compression.qat.QMAX_W); format 3's only one
_F32, _F16, _BF16, _SORTED = 0, 1, 2, 3


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


def _zero_low_bits(words: np.ndarray, width: int) -> int:
    """How many low bits are zero in every word (at most ``width - 1``)."""
    combined = int(np.bitwise_or.reduce(words)) if words.size else 0
    if combined == 0:
        return width - 1
    return min((combined & -combined).bit_length() - 1, width - 1)


def _write_floats(w: BitWriter, a: np.ndarray) -> None:
    """fp16/bf16/fp32 words (2-bit tag) without their common zero low bits (gamma count), stored raw or
    — for ascending arrays such as sorted codebooks, when it is smaller — as tag 3, the word kind, the
    first order-preserving key and the key gaps (integer coder)."""
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    kind = _float_kind(a)
    words, width = _words(a, kind)
    low = _zero_low_bits(words, width)
    words, width = words >> np.uint64(low), width - low  # the sign stays the top bit: order is kept
    if len(a) >= 3:
        keys = _order_keys(words, width)
        if np.all(np.diff(keys.astype(np.int64)) >= 0):
            sorted_w = BitWriter()
            sorted_w.write(kind, 2)
            sorted_w.gamma(low)
            sorted_w.write(int(keys[0]), width)
            encode_ints(sorted_w, np.diff(keys.astype(np.int64)))
            if sorted_w.n_bits < width * len(a):
                w.write(_SORTED, 2)
                w.write_bits("".join(sorted_w._parts))
                return
    w.write(kind, 2)
    w.gamma(low)
    w.write_array(words, width)


def _read_floats(r: BitReader, count: int, version: int = _VERSION) -> np.ndarray:
    kind = r.read(2)
    ascending = kind == _SORTED
    if ascending:
        kind = r.read(2)
        if kind == _SORTED:
            raise ModelDirError("compact artifact is corrupt (unknown float format)")
    full = 16 if kind in (_F16, _BF16) else 32
    low = r.gamma(limit=full - 1) if version >= 2 else 0
    width = full - low
    if ascending:
        first = r.read(width)
        gaps = decode_ints(r, count - 1)
        keys = np.concatenate([[first], first + np.cumsum(gaps)]).astype(np.uint64)
        if keys.size and int(keys[-1]) >> width:
            raise ModelDirError("compact artifact is corrupt (float keys out of range)")
        words = _from_order_keys(keys, width)
    else:
        words = r.read_array(count, width).astype(np.uint64)
    return _from_words(words << np.uint64(low), kind)


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
    quant = c.quant or [None] * len(c.layers)
    trailer = None if c.quant is None else [dict(q) for q in c.quant]
    for i, (weight, bias) in enumerate(c.layers):
        mask, cb, q = c.masks[i], c.codebooks[i], quant[i]
        grid, qmax = (None, 0) if cb is not None else _int_grid(weight, mask, q)
        w.write(int(mask is not None) | (int(cb is not None) << 1) | (int(grid is not None) << 2), 3)
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
        elif grid is not None:
            w.gamma(qmax - 1)
            inline = _float32_scales(q["weight_scale"])
            w.write(int(inline), 1)
            if inline:  # else they stay in the quant trailer
                _write_floats(w, np.asarray(q["weight_scale"], dtype=np.float32))
                del trailer[i]["weight_scale"]
            flat = grid.reshape(-1)
            encode_ints(w, (flat if flat_mask is None else flat[flat_mask]) + qmax, alphabet=2 * qmax + 1)
        else:
            flat = weight.reshape(-1)
            _write_floats(w, flat if flat_mask is None else flat[flat_mask])
    if trailer is not None:
        _write_blob(w, trailer)
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
    if len(data) < 4 or data[3] not in (1, 2, 3, _VERSION):
        raise ModelDirError(f"unsupported compact artifact version {data[3] if len(data) > 3 else None}")
    version = data[3]
    r = BitReader(data[4:])
    flags = r.read(2)
    n_layers = r.gamma(limit=1024) + 1
    n_features = r.gamma(limit=1 << 20) + 1
    widths = [n_features] + [r.gamma(limit=1 << 20) + 1 for _ in range(n_layers - 1)] + [1]
    mean = _read_floats(r, n_features, version)
    std = _read_floats(r, n_features, version)
    layers, masks, codebooks = [], [], []
    grids: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []  # scaled after the trailer
    for i in range(n_layers):
        shape = (widths[i + 1], widths[i])
        size = shape[0] * shape[1]
        has = r.read(3 if version >= 3 else 2)
        bias = _read_floats(r, shape[0], version)
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
            centroids = _read_floats(r, k, version)
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
        elif has & 4:
            n = size if mask is None else int(mask.sum())
            qmax = r.gamma(limit=QMAX - 1) + 1 if version >= 4 else QMAX
            scales = _read_floats(r, shape[0], version) if version >= 4 and r.bit() else None
            grids.append((i, decode_ints(r, n, alphabet=2 * qmax + 1) - qmax, mask, scales))
        else:
            n = size if mask is None else int(mask.sum())
            values = _read_floats(r, n, version)
            if mask is None:
                weight = values
            else:
                weight[mask] = values
        layers.append((weight.reshape(shape), bias))
        masks.append(None if mask is None else mask.reshape(shape))
        codebooks.append(cb)
    quant = _read_blob(r) if flags & 1 else None
    stages = _read_blob(r) if flags & 2 else []
    for i, q, mask, scales in grids:
        ok = quant is not None and len(quant) == n_layers and isinstance(quant[i], dict)
        if ok and scales is not None:
            quant[i]["weight_scale"] = [float(x) for x in scales]
        if not ok or len(quant[i].get("weight_scale") or []) != layers[i][0].shape[0]:
            raise ModelDirError("compact artifact is corrupt (integer weights without their scales)")
        layers[i] = (_from_grid(q, mask, quant[i]["weight_scale"], layers[i][0].shape), layers[i][1])
    return CompressedMLP(layers, mean, std, masks, codebooks, quant, stages)


def _float32_scales(scales: list) -> bool:
    """Whether ``scales`` come back equal (as JSON) from float32: then they are stored in the stream."""
    return all(type(s) is float and float(np.float32(s)) == s for s in scales)


def _int_grid(weight: np.ndarray, mask: np.ndarray | None, q: dict | None) -> tuple[np.ndarray | None, int]:
    """``(k, qmax)``: the integers (``|k| <= qmax``, the grid's ``weight_qmax``, 127 when not given) with
    ``weight == float32(k * scale_row)`` bit-exactly at every kept entry, when a quantization stage
    snapped the layer to its per-row grid; else ``(None, 0)`` (stored as floats)."""
    if not q or len(q.get("weight_scale") or []) != weight.shape[0]:
        return None, 0
    qmax = q.get("weight_qmax", QMAX)
    scale = np.asarray(q["weight_scale"], dtype=np.float32)[:, None]
    if type(qmax) is not int or not 1 <= qmax <= QMAX or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None, 0
    k = np.round(weight / scale)
    kept = np.ones(weight.shape, dtype=bool) if mask is None else mask
    k = np.where(kept, k, 0)
    back = _from_grid(k[kept].astype(np.int64), mask, q["weight_scale"], weight.shape)
    exact = not np.any(np.abs(k) > qmax) and back.tobytes() == weight.tobytes()
    return (k.astype(np.int64), qmax) if exact else (None, 0)


def _from_grid(k: np.ndarray, mask: np.ndarray | None, scales: list, shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape, dtype=np.float32)
    if mask is None:
        full[:] = k.reshape(shape).astype(np.float32)
    else:
        full[mask.reshape(shape)] = k.astype(np.float32)
    out = (full * np.asarray(scales, dtype=np.float32)[:, None]).astype(np.float32)
    if mask is not None:
        out[~mask.reshape(shape)] = 0.0  # +0.0, as every pruned entry
    return out


def compact_breakdown(c: CompressedMLP) -> dict[str, int]:
    """Approximate bytes per part of the artifact (stats, biases, positions, codebooks or grid scales,
    indices/values).

    Each part is measured by encoding it alone, so the parts add up to roughly the artifact size.
    """
    parts = {"header": 4, "stats": 0, "biases": 0, "positions": 0, "codebooks": 0, "weights": 0}
    bits = {k: 0 for k in parts}

    def cost(fn) -> int:
        w = BitWriter()
        fn(w)
        return w.n_bits

    bits["stats"] = cost(lambda w: (_write_floats(w, c.mean), _write_floats(w, c.std)))
    quant = c.quant or [None] * len(c.layers)
    for (weight, bias), mask, cb, q in zip(c.layers, c.masks, c.codebooks, quant, strict=True):
        grid, qmax = (None, 0) if cb is not None else _int_grid(weight, mask, q)
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
        elif grid is not None:  # the per-row scales count as the grid's codebook
            if _float32_scales(q["weight_scale"]):
                bits["codebooks"] += cost(lambda w, q=q: _write_floats(w, np.float32(q["weight_scale"])))
            flat = grid.reshape(-1)
            sel = (flat if flat_mask is None else flat[flat_mask]) + qmax
            bits["weights"] += cost(lambda w, s=sel, a=2 * qmax + 1: encode_ints(w, s, alphabet=a))
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


def round_to_float16(a: np.ndarray, mantissa_bits: int = 10) -> np.ndarray:
    """``a`` rounded (to nearest, ties to even) to float16 values with ``mantissa_bits`` of the 10 mantissa
    bits, as float32; the compact encoder stores such arrays without the zero low bits.

    Raises:
        ConfigError: ``mantissa_bits`` outside 0..10, or a value that overflows float16.
    """
    if not 0 <= int(mantissa_bits) <= 10:
        raise ConfigError(f"mantissa_bits must be in 0..10, got {mantissa_bits}")
    with np.errstate(over="ignore"):
        words = np.asarray(a, dtype=np.float32).astype(np.float16).view(np.uint16).astype(np.uint32)
    drop = 10 - int(mantissa_bits)
    if drop:  # sign-magnitude: rounding the magnitude bits rounds |x|; a carry moves into the exponent
        half_ulp = (1 << (drop - 1)) - 1
        words = (words + half_ulp + ((words >> drop) & 1)) >> drop << drop
    out = words.astype(np.uint16).view(np.float16)
    if not np.isfinite(out).all():
        raise ConfigError("a value overflows float16; disable half_precision")
    return out.astype(np.float32)
