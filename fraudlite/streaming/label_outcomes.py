"""Realized quality of the served (and the shadow) model from late labels, counted as the labels arrive.

The terminal feed hands over every label it takes (``TerminalFeed.on_labels``: once each, when its
transaction's day is at least ``delay_days`` behind the batch about to be scored). By the end of that
batch every owned partition has processed those days (event-time lockstep, ``sync``), but some of
them may be in the batch itself, so the labels wait (``on_labels`` queues them) until the batch's
decisions are recorded (``record``, after its commit: those already held are matched first, as
adding the batch may evict old decisions), and are joined then (``settle``): by ``tx_id`` to the
decisions this scorer committed (``monitoring.outcomes.LabelJoin``: bounded by a capacity and a
horizon). A batch that fails is processed again, and its labels wait for it. A label of this
member's that finds no decision while its partition has not decided past the label's time yet (a
partition lagging behind the others, e.g. while a producer is still writing it) waits too, until the
partition gets there (at most ``MAX_WAITING`` labels wait; beyond, the oldest count as unmatched).
Counted:

* ``fraudlite_label_outcomes_total{outcome, model_version}``: the served decision's alert (positive =
  score at or above the alert threshold) against the label, by the version that decided;
* ``fraudlite_shadow_label_outcomes_total{outcome, model_version}``: the same for the shadow model's
  would-be alert on the same transaction (``shadow``);
* ``fraudlite_labels_unmatched_total``: labels of this member's transactions that found no decision
  (evicted from the join before the label came, or never scored: DLQ'd);
* gauges ``fraudlite_label_join_entries`` and ``fraudlite_label_join_bytes``, and
  ``fraudlite_label_join_evictions_total{reason}``.

Whose label is it? Every member's feed reads every label, but a member holds only its own decisions.
A label that finds none counts as unmatched only when its transaction is this member's: the label's
``customer_id`` maps (Kafka's default partitioner, murmur2, as the transactions are keyed) to an input
partition the member owns, and its event time is not before the first decision the member made there
since it took the partition over (earlier ones were decided by the previous owner, or a previous run;
a predecessor's transaction in that very second would count, a rare overcount at a handover).
Other labels are some other member's and are not counted here; a label without a customer id is
counted only when it matches.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from kafka.partitioner.default import murmur2

from fraudlite.kafkaio.wire import DecodedLabels
from fraudlite.monitoring.outcomes import LabelJoin, Matched
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.reload import LoadedModel
from fraudlite.streaming.shadow import ShadowBatch
from fraudlite.streaming.sync import Part
from fraudlite.streaming.terminal_feed import TerminalFeed

__all__ = ["LabelOutcomes", "input_partition", "MAX_WAITING"]

#: Most labels waiting for a lagging partition's decisions (``LabelOutcomes``).
MAX_WAITING = 100_000


class Owner(Protocol):
    """Who tells which input partitions the member owns (``assignment.RebalanceListener``)."""

    assigned: set


def input_partition(customer_id: str, partitions: int) -> int:
    """The input partition Kafka's default partitioner gives a transaction keyed by ``customer_id``."""
    return (murmur2(customer_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


class LabelOutcomes:
    """The scorer's join of late labels to its decisions (see the module docstring).

    Args:
        metrics: the scorer's metrics.
        bounds: ``(capacity, horizon_s)`` of the join (``ServeConfig.label_join``); None: no join, and
            every method does nothing.
        owner: its ``assigned`` set holds the input partitions the member owns now.
    """

    def __init__(self, metrics: ScorerMetrics, bounds: tuple[int, int] | None, owner: Owner) -> None:
        self.metrics = metrics
        self.join = None if bounds is None else LabelJoin(*bounds)
        self.owner = owner
        self.partitions = 0  # of the input topic; 0 until attached (no label is counted unmatched)
        # per owned partition, event time (s) of the first and of the latest decision made here
        self.since: dict[int, int] = {}
        self.latest: dict[int, int] = {}
        self.unmatched = 0
        self._queued: list[DecodedLabels] = []  # delivered, joined after the next batch is recorded
        # this member's labels whose partition has not decided that far yet, with their partitions
        self._waiting: list[tuple[DecodedLabels, np.ndarray]] = []
        if self.join is not None:
            self._gauges()

    @property
    def enabled(self) -> bool:
        return self.join is not None

    @property
    def waiting(self) -> int:
        """Labels waiting for a lagging partition's decisions."""
        return sum(len(labels) for labels, _ in self._waiting)

    def attach(self, feed: TerminalFeed, input_partitions: int) -> None:
        """A session started: the labels ``feed`` takes come here; the input topic has ``input_partitions``."""
        if self.join is not None:
            feed.on_labels = self.on_labels
            self.partitions = int(input_partitions)

    def _owned(self) -> set[int]:
        """The partitions owned now; forgets the decision times of the others (so a partition owned
        again later starts over)."""
        owned = {tp.partition for tp in self.owner.assigned}
        if any(p not in owned for p in self.since):
            self.since = {p: t for p, t in self.since.items() if p in owned}
            self.latest = {p: t for p, t in self.latest.items() if p in owned}
        return owned

    def record(
        self, parts: list[Part], scores: np.ndarray, model: LoadedModel, shadow: ShadowBatch | None = None
    ) -> None:
        """Remember a committed batch's decisions (``scores`` in the order of ``parts``; ``shadow``: the
        shadow model's scores of the same rows), then join the labels delivered meanwhile."""
        if self.join is None:
            return
        valid = [(tp.partition, d) for tp, _, d in parts if len(d)]
        if valid:
            self._match_queued()  # before adding: adding may evict decisions the queued labels need
            self._owned()
            for p, d in valid:
                self.since.setdefault(p, int(d.ts.min()))
                self.latest[p] = max(self.latest.get(p, 0), int(d.ts.max()))
            tx_ids = [t for _, d in valid for t in d.tx_id]
            ts = np.concatenate([d.ts for _, d in valid])
            shadow_alerted = shadow_version = None
            if shadow is not None:
                shadow_alerted = shadow.scores >= shadow.model.alert_threshold
                shadow_version = shadow.model.version
            evicted = self.join.add(
                tx_ids, ts, scores >= model.alert_threshold, model.version, shadow_alerted, shadow_version
            )
            for reason, n in evicted.items():
                if n:
                    self.metrics.label_join_evictions.labels(reason).inc(n)
        self.settle()

    def on_labels(self, labels: DecodedLabels) -> None:
        """The terminal feed's callback: queue ``labels`` for the next ``settle``."""
        if self.join is not None and len(labels):
            self._queued.append(labels)

    def settle(self) -> None:
        """Join the queued and the waiting labels, count what they show; some may wait again."""
        if self.join is None:
            return
        todo = self._waiting + [(labels, None) for labels in self._queued]
        self._waiting, self._queued = [], []
        for labels, partitions in todo:
            self._join(labels, partitions)
        over = self.waiting - MAX_WAITING
        while over > 0:  # the oldest waiting labels give up
            labels, partitions = self._waiting[0]
            if len(labels) <= over:
                self._waiting.pop(0)
                self._count_unmatched(len(labels))
                over -= len(labels)
            else:
                self._waiting[0] = (labels.take(np.arange(over, len(labels))), partitions[over:])
                self._count_unmatched(over)
                over = 0
        self._gauges()

    def _match_queued(self) -> None:
        """Join the queued labels to the decisions held now; the others stay queued."""
        queued, self._queued = self._queued, []
        for labels in queued:
            found = self._match(labels)
            if len(found.unmatched):
                self._queued.append(labels.take(found.unmatched))

    def _match(self, labels: DecodedLabels) -> Matched:
        found = self.join.match(labels.tx_id, labels.label)
        m = self.metrics
        for (version, outcome), n in found.outcomes.items():
            m.label_outcomes.labels(outcome, version).inc(n)
        for (version, outcome), n in found.shadow_outcomes.items():
            m.shadow_label_outcomes.labels(outcome, version).inc(n)
        return found

    def _join(self, labels: DecodedLabels, partitions: np.ndarray | None) -> None:
        """Match ``labels`` (``partitions``: their input partitions, -1 = unknown; None: not computed)."""
        found = self._match(labels)
        if not len(found.unmatched) or not self.partitions:
            return
        unmatched = found.unmatched
        if partitions is None:
            ids, n = labels.customer_id, self.partitions
            partitions = np.array(
                [input_partition(ids[i], n) if ids and ids[i] else -1 for i in unmatched.tolist()], np.int64
            )
        else:
            partitions = partitions[unmatched]
        mine, wait = self._mine(labels, unmatched, partitions)
        self._count_unmatched(mine)
        if len(wait):
            self._waiting.append((labels.take(unmatched[wait]), partitions[wait]))

    def _mine(
        self, labels: DecodedLabels, unmatched: np.ndarray, partitions: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """Of the ``unmatched`` labels (in ``partitions``), how many are of transactions this member
        decides and never will (module docstring), and which (indices into ``unmatched``) may still be."""
        owned, since, latest, ts = self._owned(), self.since, self.latest, labels.ts
        mine, wait = 0, []
        for k, (i, p) in enumerate(zip(unmatched.tolist(), partitions.tolist(), strict=True)):
            if p not in owned:
                continue  # another member's, or no customer id to tell
            t = int(ts[i])
            if p not in latest or t >= latest[p]:
                wait.append(k)  # the partition has not decided that far yet
            elif t >= since[p]:
                mine += 1
        return mine, np.array(wait, dtype=np.int64)

    def _count_unmatched(self, n: int) -> None:
        if n:
            self.unmatched += n
            self.metrics.labels_unmatched.inc(n)

    def _gauges(self) -> None:
        self.metrics.label_join_entries.set(len(self.join))
        self.metrics.label_join_bytes.set(self.join.nbytes)
