"""Calibrated scores: Platt scaling applied in serving, and how calibrated a score is (ECE).

Training reweights the classes, so the MLP's output ranks well but overstates fraud probability. Platt
scaling, ``p = sigmoid(a * logit(s) + b)`` fitted on the validation window (``models.calibrate``), maps it
to a probability. It is strictly increasing (a > 0), so ranking, AP and every threshold's set of alerts
are unchanged: only the numbers mean what they say. Fitting needs scikit-learn; applying needs numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fraudlite.errors import ConfigError

__all__ = ["Platt", "expected_calibration_error", "reliability_bins"]

_EPS = 1e-7
# Up to this many scores are calibrated in Python floats: at batch 1 numpy's ten ufunc calls cost ~12 us,
# more than the model (measured by bench_wide's per-call floor), and serving scores one message at low load.
_SMALL = 8


class Platt:
    """``sigmoid(a * logit(s) + b)``; ``Platt.from_record(manifest["monitoring"]["calibration"])``."""

    method = "platt"

    def __init__(self, a: float, b: float) -> None:
        if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
            raise ConfigError(f"Platt calibration needs a finite a > 0 and a finite b, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if isinstance(scores, np.ndarray) and scores.ndim == 1 and scores.size <= _SMALL:
            return np.array([self._one(s) for s in scores.tolist()], np.float32)
        s = np.clip(np.asarray(scores, np.float64), _EPS, 1 - _EPS)
        z = self.a * (np.log(s) - np.log1p(-s)) + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def _one(self, s: float) -> float:
        s = min(max(s, _EPS), 1 - _EPS)
        z = self.a * (math.log(s) - math.log1p(-s)) + self.b
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(max(z, -745.0))
        return e / (1.0 + e)

    def inverse(self, p: float) -> float:
        """The raw score that calibrates to ``p`` (thresholds move with the scores)."""
        p = min(max(float(p), _EPS), 1 - _EPS)
        z = (np.log(p) - np.log1p(-p) - self.b) / self.a
        return float(1.0 / (1.0 + np.exp(-z)))

    def record(self) -> dict:
        return {"method": self.method, "a": round(self.a, 6), "b": round(self.b, 6)}

    @classmethod
    def from_record(cls, record: Mapping | None) -> Platt | None:
        """None for no record; raises ConfigError for a record of another method or bad numbers."""
        if record is None:
            return None
        if not isinstance(record, Mapping) or record.get("method") != cls.method:
            raise ConfigError(f"unknown score calibration {record!r} (expected method 'platt')")
        try:
            return cls(float(record["a"]), float(record["b"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"calibration record needs numbers a and b, got {dict(record)}") from None


def reliability_bins(scores: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width score bin with rows: ``{lo, hi, n, mean_score, fraud_rate}`` (a reliability diagram)."""
    s, y = np.asarray(scores, np.float64), np.asarray(y, np.float64)
    idx = np.minimum((s * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()),
                        "mean_score": float(s[m].mean()), "fraud_rate": float(y[m].mean())})  # fmt: skip
    return out


def expected_calibration_error(scores: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: the row-weighted mean |mean score - fraud rate| over equal-width score bins."""
    n = len(scores)
    if not n:
        raise ConfigError("ECE needs at least one score")
    return float(
        sum(b["n"] * abs(b["mean_score"] - b["fraud_rate"]) for b in reliability_bins(scores, y, bins)) / n
    )
