"""Population stability index of live inputs and scores against the training reference.

PSI = sum over bins of (live - ref) * ln(live / ref), shares floored at 1e-4 so an empty bin does not
make it infinite. Rule of thumb (credit-risk practice): < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 a
shift worth acting on (the alert rule's threshold).

``DriftWindow`` keeps counts, not rows: per chunk of ``chunk_rows`` rows one [F, BINS] count array, the
last ``window_rows`` rows' worth of chunks summed on demand. Memory is ``window/chunk`` small arrays.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.monitoring.reference import BINS, Reference, feature_bins, score_bins, shares

__all__ = ["psi", "DriftWindow", "PSI_FLOOR"]

PSI_FLOOR = 1e-4


def psi(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    """PSI along the last axis of two share arrays of the same shape (one value per leading index)."""
    ref = np.maximum(np.asarray(reference, np.float64), PSI_FLOOR)
    cur = np.maximum(np.asarray(live, np.float64), PSI_FLOOR)
    return ((cur - ref) * np.log(cur / ref)).sum(axis=-1)


class DriftWindow:
    """Counts of the last ``window_rows`` rows (in chunks of ``chunk_rows``) in the reference's bins.

    Args:
        reference: the training reference (feature and score shares).
        mean, std: the model's normalization (features are binned in standardized units).
        window_rows: how many recent rows the PSI looks at (at least; whole chunks are dropped).
        chunk_rows: granularity of the sliding window.
    """

    def __init__(
        self,
        reference: Reference,
        mean: np.ndarray,
        std: np.ndarray,
        window_rows: int = 20_000,
        chunk_rows: int = 2_000,
    ) -> None:
        if chunk_rows < 1 or window_rows < chunk_rows:
            raise ConfigError(
                f"drift window: need 1 <= chunk_rows <= window_rows, got {chunk_rows}, {window_rows}"
            )
        if len(mean) != reference.n_features:
            raise ConfigError(
                f"drift: the reference has {reference.n_features} features, the model {len(mean)}"
            )
        self.reference = reference
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.window_rows, self.chunk_rows = window_rows, chunk_rows
        n = reference.n_features
        self._offsets = (np.arange(n) * BINS)[None, :]
        self._chunks: deque[tuple[int, np.ndarray, np.ndarray]] = deque()  # (rows, features, score)
        self._rows = 0
        self._features = np.zeros((n, BINS), np.int64)  # the open chunk
        self._score = np.zeros(BINS, np.int64)

    @property
    def rows(self) -> int:
        """Rows in the window (closed chunks plus the open one)."""
        return sum(r for r, _, _ in self._chunks) + self._rows

    def update(self, X: np.ndarray, scores: np.ndarray) -> None:
        """Count a batch: raw features X [N, F] and their served scores [N]."""
        if not len(X):
            return
        n = self.reference.n_features
        bins = feature_bins(X, self.mean, self.std).astype(np.int64) + self._offsets
        self._features += np.bincount(bins.ravel(), minlength=n * BINS).reshape(n, BINS)
        self._score += np.bincount(score_bins(scores), minlength=BINS)
        self._rows += len(X)
        if self._rows >= self.chunk_rows:
            self._chunks.append((self._rows, self._features, self._score))
            self._rows, self._features, self._score = (
                0,
                np.zeros_like(self._features),
                np.zeros(BINS, np.int64),
            )
            while sum(r for r, _, _ in self._chunks) - self._chunks[0][0] >= self.window_rows:
                self._chunks.popleft()

    def psi(self) -> tuple[np.ndarray, float] | None:
        """(PSI per feature [F], score PSI) over the window; None before anything was counted."""
        if not self.rows:
            return None
        features = self._features + sum((f for _, f, _ in self._chunks), np.zeros_like(self._features))
        score = self._score + sum((s for _, _, s in self._chunks), np.zeros_like(self._score))
        ref = self.reference
        return psi(ref.features, shares(features)), float(psi(ref.score, shares(score)))
