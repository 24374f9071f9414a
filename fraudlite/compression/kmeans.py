"""1-D k-means of one layer's weights (weight sharing, Han et al. 2016): pure numpy.

:func:`compute_codebook` runs Lloyd's k-means on the kept weights of one layer with linear
initialization over ``[min, max]`` (Han et al. found it best: it keeps the rare large weights), centroids
sorted ascending, empty clusters dropped (so a codebook may hold fewer than ``k`` entries), pruned
entries excluded (their index is 0 and their weight stays exactly 0). Optionally importance-weighted
(Choi et al. 2017). Used by :mod:`fraudlite.compression.cluster`, which re-exports
:func:`compute_codebook`.
"""

from __future__ import annotations

import numpy as np

from fraudlite.compression.state import Codebook
from fraudlite.errors import ConfigError

__all__ = ["INITS", "check_k", "compute_codebook"]

INITS = ("linear", "density")


def check_k(k: object, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= 256:
        raise ConfigError(f"{name} must be an integer in 1..256, got {k!r}")
    return int(k)


def compute_codebook(
    weights: np.ndarray,
    mask: np.ndarray | None,
    k: int,
    init: str = "linear",
    max_iter: int = 100,
    importance: np.ndarray | None = None,
) -> Codebook:
    """1-D k-means of the kept weights of one layer.

    Args:
        weights: W [out, in] (any shape).
        mask: bool keep-mask shaped like ``weights`` or None (every entry kept).
        k: maximum number of clusters (1..256).
        init: ``"linear"`` or ``"density"``.
        max_iter: Lloyd iterations (stops earlier once the assignment is stable).
        importance: optional non-negative weight per entry (e.g. :func:`fisher_diagonal`): centroids
            become importance-weighted means (Choi et al. 2017, Hessian-weighted k-means).

    Returns:
        ``(centroids float32 [<= k] ascending, indices uint8 shaped like weights)``; indices of pruned
        entries are 0. When the kept weights hold <= k distinct values the codebook is exact.

    Raises:
        ConfigError: on a bad ``k``/``init`` or a mask of the wrong shape.
    """
    k = check_k(k, "k")
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    w = np.asarray(weights, dtype=np.float32)
    keep = np.ones(w.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != w.shape:
        raise ConfigError(f"mask shape {keep.shape} != weights shape {w.shape}")
    vals = w[keep]
    indices = np.zeros(w.shape, dtype=np.uint8)
    if vals.size == 0:
        return np.zeros(1, dtype=np.float32), indices
    uniq = np.unique(vals)
    if uniq.size <= k:
        centroids = uniq.astype(np.float32)
    else:
        imp = None
        if importance is not None:
            imp = np.asarray(importance, dtype=np.float64)
            if imp.shape != w.shape or not np.all(np.isfinite(imp)) or np.any(imp < 0):
                raise ConfigError("importance must be finite, non-negative and shaped like the weights")
            imp = imp[keep]
            imp = imp + 1e-3 * imp.mean() + 1e-30  # every weight counts a little
        centroids = _lloyd(vals.astype(np.float64), k, init, int(max_iter), imp)
    indices[keep] = _assign(vals, centroids).astype(np.uint8)
    return centroids, indices


def _lloyd(
    vals: np.ndarray, k: int, init: str, max_iter: int, weights: np.ndarray | None = None
) -> np.ndarray:
    if init == "linear":
        c = np.linspace(vals.min(), vals.max(), k)
    else:
        c = np.quantile(vals, (np.arange(k) + 0.5) / k)
    c = np.unique(c)
    sort = np.argsort(vals, kind="stable")
    order = vals[sort]
    wts = np.ones_like(order) if weights is None else weights[sort]
    prev = None
    for _ in range(max_iter):
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, order)
        if prev is not None and np.array_equal(idx, prev):
            break
        prev = idx
        counts = np.bincount(idx, minlength=len(c))
        mass = np.bincount(idx, weights=wts, minlength=len(c))
        sums = np.bincount(idx, weights=order * wts, minlength=len(c))
        filled = counts > 0
        c = np.where(filled, sums / np.where(filled, mass, 1.0), c)
        c = np.unique(c[filled])  # drop empty clusters; stays sorted
    return c.astype(np.float32)


def _assign(vals: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (ties to the lower one) for float32 values and ascending float32 centroids."""
    if len(centroids) == 1:
        return np.zeros(vals.shape, dtype=np.intp)
    c = centroids.astype(np.float64)
    idx = np.searchsorted((c[1:] + c[:-1]) / 2, vals.astype(np.float64), side="left")
    return np.clip(idx, 0, len(c) - 1)
