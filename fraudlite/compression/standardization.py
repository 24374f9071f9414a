"""Exact reparametrizations of the input standardization that make the compact artifact smaller
(used by :func:`fraudlite.compression.cluster.cluster_stage`, which re-exports them).

- :func:`pow2_standardization`: mean 0 and each std a power of two, the difference folded into layer 0.
- :func:`center_standardization`: only the mean folded into the first bias; the weights are unchanged.
"""

from __future__ import annotations

import numpy as np

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


def center_standardization(state: CompressedMLP) -> CompressedMLP:
    """The same function with ``mean = 0``: ``b0 -= W0 @ (mean / std)``; the weights (and so their
    masks and codebooks) are unchanged. Exact in real arithmetic (float32 rounding aside)."""
    if not np.any(state.mean):
        return state
    out = state.copy()
    std = np.where(np.isfinite(state.std) & (state.std > 0), state.std, np.float32(1)).astype(np.float64)
    w0, b0 = state.layers[0]
    b_new = b0.astype(np.float64) - w0.astype(np.float64) @ (state.mean.astype(np.float64) / std)
    out.layers[0] = (w0, b_new.astype(np.float32))
    out.mean = np.zeros_like(state.mean)
    out.validate()
    return out
