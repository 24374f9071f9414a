"""The shadow model: a second model scoring the same batches as the served one, without deciding anything.

``serve --shadow-model DIR`` loads it with the served model's feature spec, extra columns included
(another spec: exit 2 naming the flag; it scores the served model's feature rows) and the same threshold
overrides a promoted model would get (``--threshold`` / ``--alert-threshold``, else its manifest's).
Per batch, after the served model:

1. ``batch``: one call of the shadow's runnable on the batch's feature rows (stage ``shadow`` of
   ``fraudlite_stage_seconds``); the served decisions do not depend on it in any way;
2. its decisions (``ShadowBatch.send``) -- the decision JSON (``outputs.encode_decisions``) with the shadow's
   version and thresholds -- to the shadow topic (``--shadow-topic``, default ``decisions-shadow``),
   partition ``p`` for input partition ``p``, inside the batch's transaction (``Checkpoint.commit``'s
   ``also``): committed with the served decisions, or not at all. No alerts or reasons are written.
   (Unlike the served outputs, a crashed predecessor's shadow records are not looked for: with a broker
   that commits a crashed producer's open transaction, the shadow topic may hold a batch twice.)
3. ``record``, after the commit: ``fraudlite_shadow_scored_total``,
   ``fraudlite_shadow_disagreements_total{kind="decision"|"alert"}`` (the shadow's decision, or alert,
   differs from the served one's) and ``fraudlite_shadow_score_delta`` (|shadow - served| per row).

Its realized quality from late labels (``fraudlite_shadow_label_outcomes_total``) is counted by
``label_outcomes`` from the same join as the served model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudlite.errors import ConfigError, ModelDirError
from fraudlite.features.spec import FeatureSpec
from fraudlite.kafkaio.bulk_send import send_many
from fraudlite.streaming.config import Topics
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.outputs import encode_decisions, iso_now
from fraudlite.streaming.reload import LoadedModel, load_model
from fraudlite.streaming.sync import Part

__all__ = ["Shadow", "ShadowBatch", "load_shadow"]


def load_shadow(
    path: str | Path, spec: FeatureSpec, threshold: float | None = None, alert_threshold: float | None = None
) -> LoadedModel:
    """Load and verify the shadow model directory (``reload.load_model``) against the served ``spec``.

    Raises:
        ModelDirError: unusable directory, or a feature spec other than ``spec`` (the message names
            ``--shadow-model``).
    """
    try:
        return load_model(path, threshold, alert_threshold, expected_spec=spec)
    except ModelDirError as e:
        message = str(e).replace(
            "the one being served; restart the scorer to change features", "the served model's"
        )
        raise ModelDirError(f"--shadow-model {path}: {message}") from None


@dataclass(frozen=True)
class ShadowBatch:
    """The shadow's part of one batch (``Shadow.batch``).

    Attributes:
        scores: its scores, one per valid transaction, in the order of the batch's parts.
        model: the shadow model.
        send: sends its decisions with a producer (inside the batch's transaction); returns the futures.
        seconds: how long scoring it took (the ``shadow`` stage).
    """

    scores: np.ndarray
    model: LoadedModel
    send: Callable[[object], list]
    seconds: float


class Shadow:
    """Scores batches with ``model`` beside the served model (see the module docstring).

    Args:
        model: the loaded shadow model.
        topics: the scorer's topics (``shadow``: where its decisions go; ``input``: the input topic).
        metrics: the scorer's metrics (``set_shadow`` is called here).
    """

    def __init__(self, model: LoadedModel, topics: Topics, metrics: ScorerMetrics) -> None:
        if topics.shadow is None:
            raise ConfigError("--shadow-topic: a shadow model needs a topic for its decisions")
        self.model = model
        self.topic = topics.shadow
        self.input_topic = topics.input
        self.metrics = metrics
        metrics.set_shadow(model.version, model.form)

    @property
    def version(self) -> str:
        return self.model.version

    def batch(self, x: np.ndarray | None, parts: list[Part], partitions: Mapping[str, int]) -> ShadowBatch:
        """Score the batch's feature rows ``x`` (None: no valid row) and prepare its shadow decisions.

        Args:
            x: the feature rows the served model scored.
            parts: the batch, ``[(tp, records, decoded)]``.
            partitions: partition count of each topic (the shadow topic aligned with the input's or not).
        """
        t0 = time.perf_counter()
        scores = np.zeros(0, dtype=np.float32) if x is None else self.model.scorer.score(x)
        return ShadowBatch(
            scores, self.model, self._sender(parts, scores, partitions), time.perf_counter() - t0
        )

    def _sender(self, parts: list[Part], scores: np.ndarray, partitions: Mapping[str, int]):
        model, topic = self.model, self.topic
        aligned = partitions.get(topic) == partitions.get(self.input_topic)

        def send(producer) -> list:
            scored_at = iso_now(time.time())
            futures: list = []
            offset = 0
            for tp, _, d in parts:
                if not len(d):
                    continue
                s = scores[offset : offset + len(d)]
                offset += len(d)
                values, _ = encode_decisions(
                    d.tx_id, d.customer_id, s, model.threshold, model.version, scored_at
                )
                keys = [c.encode() for c in d.customer_id]
                if aligned:
                    futures += send_many(producer, topic, tp.partition, keys, values)
                else:
                    futures += [
                        producer.send(topic, value=v, key=k) for k, v in zip(keys, values, strict=True)
                    ]
            return futures

        return send

    def record(self, batch: ShadowBatch, served: np.ndarray, served_model: LoadedModel) -> None:
        """Count a committed batch: stage time, rows scored, disagreements with the served model, deltas."""
        m, model, shadow = self.metrics, self.model, batch.scores
        m.stage_seconds.labels("shadow").observe(batch.seconds)
        if not len(shadow):
            return
        m.shadow_scored.inc(len(shadow))
        decision = int(np.count_nonzero((served >= served_model.threshold) != (shadow >= model.threshold)))
        alert = int(
            np.count_nonzero((served >= served_model.alert_threshold) != (shadow >= model.alert_threshold))
        )
        if decision:
            m.shadow_disagreements.labels("decision").inc(decision)
        if alert:
            m.shadow_disagreements.labels("alert").inc(alert)
        m.shadow_score_delta.observe_many(np.abs(shadow.astype(np.float64) - served.astype(np.float64)))
