"""Exact reparametrizations of the input standardization that make the compact artifact smaller
(used by :func:`fraudlite.compression.cluster.cluster_stage`, which re-exports them).

- :func:`pow2_standardization`: mean 0 and each std a power of two, the difference folded into layer 0.
- :func:`center_standardization`: the mean folded into the first bias; optionally each std rounded to a
  float16 with few mantissa bits (:func:`~fraudlite.compression.compact.round_to_float16`), the ratio folded into layer 0's columns.
"""

from __future__ import annotations

import numpy as np

from fraudlite.compression.compact import round_to_float16
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError

__all__ = ["pow2_standardization", "center_standardization"]


def pow2_standardization(state: CompressedMLP) -> CompressedMLP:
    """The same function with ``mean = 0`` and ``std`` rounded to powers of two (in log space), the
    difference folded into layer 0: ``W0[:, i] *= std'_i / std_i``, ``b0 -= W0 @ (mean / std)``.

    Exact in real arithmetic (float32 rounding aside); pruned entries stay exactly 0.

    Raises:
        ConfigError: when layer 0 is already clustered (the column scaling would break its codebook).
    """
    if state.codebooks[0] is not None:
        raise ConfigError("pow2_standardization must run before layer 0 is clustered")
    out = state.copy()
    std = np.where(np.isfinite(state.std) & (state.std > 0), state.std, np.float32(1)).astype(np.float64)
    new_std = np.exp2(np.round(np.log2(std)))
    w0, b0 = (a.astype(np.float64) for a in state.layers[0])
    b_new = b0 - w0 @ (state.mean.astype(np.float64) / std)
    w_new = (w0 * (new_std / std)[None, :]).astype(np.float32)
    if state.masks[0] is not None:
        w_new = np.where(state.masks[0], w_new, np.float32(0))
    out.layers[0] = (w_new, b_new.astype(np.float32))
    out.mean = np.zeros_like(state.mean)
    out.std = new_std.astype(np.float32)
    out.validate()
    return out


def center_standardization(state: CompressedMLP, std_mantissa_bits: int | None = None) -> CompressedMLP:
    """The same function with ``mean = 0``: ``b0 -= W0 @ (mean / std)``. With ``std_mantissa_bits`` each
    std also becomes ``round_to_float16(std, bits)`` and layer 0's columns absorb the ratio (< 2^-bits off 1,
    so clustering hardly notices, unlike the power-of-two stats); without, the weights (and so their
    masks and codebooks) are unchanged. Exact in real arithmetic (float32 rounding aside).

    Raises:
        ConfigError: ``std_mantissa_bits`` with layer 0 already clustered.
    """
    std = np.where(np.isfinite(state.std) & (state.std > 0), state.std, np.float32(1)).astype(np.float64)
    new_std = (
        std if std_mantissa_bits is None else round_to_float16(std, std_mantissa_bits).astype(np.float64)
    )
    if not np.any(state.mean) and np.array_equal(new_std, state.std):
        return state
    if std_mantissa_bits is not None and state.codebooks[0] is not None:
        raise ConfigError("rounding the std must happen before layer 0 is clustered")
    out = state.copy()
    w0, b0 = state.layers[0]
    b_new = b0.astype(np.float64) - w0.astype(np.float64) @ (state.mean.astype(np.float64) / std)
    if std_mantissa_bits is not None:
        w0 = (w0.astype(np.float64) * (new_std / std)[None, :]).astype(np.float32)
        out.std = new_std.astype(np.float32)
    out.layers[0] = (w0, b_new.astype(np.float32))
    out.mean = np.zeros_like(state.mean)
    out.validate()
    return out
