"""Reason codes of a scored batch: which rows get them, computed in one batched call, timed and counted.

``Explainer(model, x, scores)`` runs after the batch's scores: the rows at or above the model's alert
threshold (every row with ``explain_all``, ``serve --explain-all``) get ``monitoring.reasons``' top
reasons, Shapley values of ``model.scorer.log_odds`` (the served score's log-odds) against the model's
training feature means, every perturbed row in one call. The result, ``Explanations``, goes with the batch to
``batch_output.send_outputs``: alerts always carry their reasons, decisions only with ``explain_all``
(otherwise the decision JSON is unchanged). Time goes to ``fraudlite_stage_seconds{stage="explain"}``,
the rows to ``fraudlite_explained_total``. A model without training feature means (a spec without
normalization, from before they were stored) serves without reasons: one warning, not a failed batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from fraudlite.errors import ModelDirError
from fraudlite.monitoring.reasons import DEFAULT_PERMUTATIONS, Reason, explain_rows
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.reload import LoadedModel

__all__ = ["Explanations", "Explainer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Explanations:
    """Reasons of some rows of a batch.

    Attributes:
        rows: sorted indices of the explained rows among the batch's valid transactions (int64).
        reasons: one list of reasons per row of ``rows``.
        in_decisions: the decisions carry them too (``--explain-all``), not only the alerts.
    """

    rows: np.ndarray
    reasons: list[list[Reason]]
    in_decisions: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def between(self, start: int, stop: int) -> dict[int, list[Reason]]:
        """``{row - start: reasons}`` of the explained rows in ``[start, stop)`` (one partition's run)."""
        lo, hi = np.searchsorted(self.rows, (start, stop)).tolist()
        return {r - start: self.reasons[lo + i] for i, r in enumerate(self.rows[lo:hi].tolist())}


class Explainer:
    """Computes a batch's reason codes (see the module docstring).

    Args:
        metrics: the scorer's metrics (explain stage time, explained rows); None counts nothing.
        explain_all: every decision gets reasons, not only the alerts.
        permutations: Shapley permutations per row (an even number: antithetic pairs).
        seed: the permutations' seed (the same for every batch: a row's reasons do not depend on its batch).
    """

    def __init__(
        self,
        metrics: ScorerMetrics | None = None,
        explain_all: bool = False,
        permutations: int = DEFAULT_PERMUTATIONS,
        seed: int = 0,
    ) -> None:
        self.metrics = metrics
        self.explain_all = explain_all
        self.permutations = permutations
        self.seed = seed
        self._reference: tuple[object, np.ndarray | None] | None = None  # (the ServedModel, its means)

    def reference(self, model: LoadedModel) -> np.ndarray | None:
        """The reference point of ``model``: its training feature means (cached until the model changes);
        None for a model that has none (it then serves without reasons)."""
        if self._reference is None or self._reference[0] is not model.scorer:
            try:
                means = model.scorer.normalization()[0]
            except ModelDirError as e:
                logger.warning("model %s: no reason codes (%s)", model.version, e)
                means = None
            self._reference = (model.scorer, means)
        return self._reference[1]

    def __call__(self, model: LoadedModel, x: np.ndarray | None, scores: np.ndarray) -> Explanations | None:
        """Reasons of the rows of ``x`` (the batch's features) that get them; None when none does."""
        if x is None or not len(scores):
            return None
        rows = np.arange(len(scores)) if self.explain_all else np.flatnonzero(scores >= model.alert_threshold)
        reference = self.reference(model) if len(rows) else None
        if reference is None:
            return None
        t0 = perf_counter()
        reasons = explain_rows(
            model.scorer.log_odds, x[rows], reference, model.spec.names, self.permutations, self.seed
        )
        if self.metrics is not None:
            self.metrics.stage_seconds.labels("explain").observe(perf_counter() - t0)
            self.metrics.explained.inc(len(rows))
        return Explanations(rows.astype(np.int64), reasons, self.explain_all)
