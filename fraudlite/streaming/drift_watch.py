"""Input and score drift of the model being served: PSI gauges against its training reference.

Every scored batch is counted into a sliding window (``monitoring.drift.DriftWindow``: counts in the
reference's bins, never rows); the gauges ``fraudlite_feature_drift_psi{feature}`` and
``fraudlite_score_drift_psi`` are set from it once the window holds ``min_rows`` (a PSI of a few hundred
rows is noise). A model swap starts a new window against the new model's reference. A model without a
reference (trained before it was stored) exports no drift gauges.
"""

from __future__ import annotations

import logging

import numpy as np

from fraudlite.monitoring.drift import DriftWindow
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.reload import LoadedModel

__all__ = ["DriftWatch"]

logger = logging.getLogger(__name__)


class DriftWatch:
    """Drift gauges of the served model (see the module docstring)."""

    def __init__(
        self,
        metrics: ScorerMetrics,
        window_rows: int = 20_000,
        chunk_rows: int = 2_000,
        min_rows: int = 2_000,
    ) -> None:
        self.metrics = metrics
        self.window_rows, self.chunk_rows, self.min_rows = window_rows, chunk_rows, min_rows
        self.window: DriftWindow | None = None
        self.names: list[str] = []

    def use(self, model: LoadedModel) -> None:
        """Watch ``model`` from now on (a new window; the old model's gauges are dropped)."""
        self.metrics.feature_drift.clear()
        self.metrics.drift_rows.set(0)  # the alert rules ignore a window this small: the score PSI is stale
        reference = model.scorer.reference()
        if reference is None:
            logger.info("model %s has no training reference: no drift gauges", model.version)
            self.window = None
            return
        mean, std = model.scorer.normalization()
        self.window = DriftWindow(reference, mean, std, self.window_rows, self.chunk_rows)
        self.names = list(model.spec.names)

    def observe(self, features: np.ndarray | None, scores: np.ndarray) -> None:
        """Count a scored batch; refresh the gauges when the window is big enough."""
        window = self.window
        if window is None or features is None or not len(scores):
            return
        window.update(features, scores)
        self.metrics.drift_rows.set(window.rows)
        if window.rows < self.min_rows:
            return
        per_feature, score = window.psi()  # type: ignore[misc]
        gauge = self.metrics.feature_drift
        for name, value in zip(self.names, per_feature.tolist(), strict=True):
            gauge.labels(name).set(value)
        self.metrics.score_drift.set(score)
