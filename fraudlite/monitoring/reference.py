"""The training reference stored with a model: where its inputs and scores fell, in fixed bins.

Drift is measured against it (``drift``). Features are binned in standardized units ``(x - mean) / std``
(the model's own normalization) at the deciles of a standard normal, scores at fixed probabilities: no
edges need storing, only the share of training rows in each bin, one byte each (1/255 resolution; PSI
floors shares at 1e-4 anyway). The whole reference of a 20-feature model is ~220 bytes: it is a serve
file's worth of bytes, and the compressed model's serve bytes are a few kB.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import numpy as np

from fraudlite.errors import ConfigError

__all__ = ["Reference", "FEATURE_EDGES", "SCORE_EDGES", "feature_bins", "score_bins", "shares"]

#: Standard-normal deciles: 10 bins of 10% each for a normally distributed standardized feature.
FEATURE_EDGES = np.array([-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816])
#: Fraud probabilities: most transactions score near 0, so the low bins are narrow.
SCORE_EDGES = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
BINS = len(FEATURE_EDGES) + 1
_MAGIC = b"FLR1"


def _safe(std: np.ndarray) -> np.ndarray:
    std = np.asarray(std, np.float64)
    return np.where(std > 0, std, 1.0)


def feature_bins(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Bin index (0..BINS-1) of every value of X [N, F] (int8 [N, F])."""
    z = (np.asarray(X, np.float64) - np.asarray(mean, np.float64)) / _safe(std)
    return np.searchsorted(FEATURE_EDGES, z, side="right").astype(np.int8)


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index of every score (int8 [N])."""
    return np.searchsorted(SCORE_EDGES, np.asarray(scores, np.float64), side="right").astype(np.int8)


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts [..., BINS] -> shares summing to 1 along the last axis (zeros where nothing was counted)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


@dataclass(frozen=True)
class Reference:
    """Shares of training rows per bin: ``features`` float [F, BINS], ``score`` float [BINS]."""

    features: np.ndarray
    score: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def fit(cls, X: np.ndarray, mean: np.ndarray, std: np.ndarray, scores: np.ndarray) -> Reference:
        """The reference of training features X [N, F] (raw) and scores [M] (as served: calibrated)."""
        X = np.asarray(X)
        if X.ndim != 2 or not len(X) or not len(scores):
            raise ConfigError("a reference needs at least one row of features and one score")
        bins = feature_bins(X, mean, std)
        counts = np.stack([np.bincount(bins[:, j], minlength=BINS) for j in range(X.shape[1])])
        return cls(shares(counts), shares(np.bincount(score_bins(scores), minlength=BINS)))

    def with_scores(self, scores: np.ndarray) -> Reference:
        """The same feature reference with the score shares of ``scores`` (a recompressed model)."""
        return Reference(self.features, shares(np.bincount(score_bins(scores), minlength=BINS)))

    def encode(self) -> str:
        """Compact text for the manifest: base64 of magic, F (uint16), one byte per bin (share x 255)."""
        q = np.rint(np.vstack([self.features, self.score[None]]) * 255).clip(0, 255).astype(np.uint8)
        return base64.b64encode(_MAGIC + struct.pack("<H", self.n_features) + q.tobytes()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Reference:
        """Inverse of :meth:`encode`.

        Raises:
            ConfigError: not a reference of this format.
        """
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, AttributeError):
            raise ConfigError("the model's reference is not base64 text") from None
        n = struct.unpack("<H", raw[4:6])[0] if len(raw) >= 6 else -1
        if raw[:4] != _MAGIC or len(raw) != 6 + (n + 1) * BINS:
            raise ConfigError("the model's reference is not a fraudlite reference (FLR1)")
        q = np.frombuffer(raw[6:], np.uint8).reshape(n + 1, BINS)
        s = shares(q)
        return cls(s[:-1], s[-1])
