"""Feeds the global terminal table from every partition of the transactions and labels topics.

Terminal features of a transaction on day ``d`` use only days ``<= d - delay_days`` of *all* customers'
transactions (and their labels), which live in every input partition, including those other scorer
processes own. So the table is fed from three sources, each record exactly once:

* partitions this scorer owns: straight from its own batches (``add_batch``), so they are not
  consumed twice; records before the point where the scorer took a partition over are read by the
  feed's consumer (``own`` marks that point);
* partitions other members own: read by the feed's group-less consumer, but only up to
  ``bound = d - delay_days`` (``advance``): records beyond it are held back and their partition paused,
  so a backlog far ahead of this scorer never pushes days it still needs out of the table;
* the labels topic: read the same way (a label counts on its transaction's day). Each label the table
  takes is also handed to ``on_labels`` (``DecodedLabels``, with tx and customer ids), if set: the
  scorer joins it to the decision made for its transaction (``label_outcomes``). So labels reach the
  join once each, when their transaction's day is ``<= d - delay_days``: after this member scored it.

Per transactions partition, ``fed[p]`` is the next offset not yet in the table; a record below it is
never added again (e.g. when the scorer re-processes a batch after an aborted transaction).

This matches the offline computation exactly as long as labels are produced before the transactions
that may use them (what ``fraudlite replay`` does), partitions are time-ordered, and a transaction of day
``D`` becomes visible only once every partition's transactions of days ``<= D - delay_days`` are (a live
stream, or ``replay``, does this; one burst writing days far apart to different partitions at once can
let a member read a partition another member owns before that partition's earlier days arrive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from fraudlite.features.online import TerminalTable
from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.kafkaio.clients import release_parked
from fraudlite.kafkaio.wire import DecodedBatch, DecodedLabels, LabelDecoder, TransactionDecoder

__all__ = ["TerminalFeed"]

logger = logging.getLogger(__name__)


class TerminalFeed:
    """Keeps a ``TerminalTable`` fed (see the module docstring).

    Args:
        consumer: a group-less consumer (read_committed, no auto commit); assigned here.
        table: the table to feed.
        transactions_topic: the input topic.
        labels_topic: the labels topic, or None.
        decoder: the scorer's transaction decoder (same limits => the same rows count).
        label_decoder: decoder of label messages.
        timeout_s: longest a catch-up waits for the topics' ends before going on with what it has.
        on_labels: called with the labels the table takes, as it takes them (may be set later).
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        table: TerminalTable,
        transactions_topic: str,
        labels_topic: str | None,
        decoder: TransactionDecoder,
        label_decoder: LabelDecoder,
        timeout_s: float = 30.0,
        on_labels: Callable[[DecodedLabels], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.table = table
        self.transactions_topic = transactions_topic
        self.labels_topic = labels_topic
        self.decoder = decoder
        self.label_decoder = label_decoder
        self.timeout_s = timeout_s
        self.on_labels = on_labels
        self.bound: int | None = None
        self.transactions = 0
        self.labels = 0
        self.invalid_labels = 0
        self.partitions: list[TopicPartition] = []
        self.fed: dict[int, int] = {}
        self._owned: dict[int, int] = {}  # partition -> offset from which the scorer's batches feed it
        # rows read but beyond the bound: (ts, terminal ids, labels or None, record offsets or None,
        # the decoded labels or None)
        self._pending: dict[TopicPartition, tuple] = {}
        self._reading: set[TopicPartition] = set()

    def assign(self, partition_counts: dict[str, int]) -> None:
        """Assign every partition of the two topics, from the beginning."""
        topics = [self.transactions_topic] + ([self.labels_topic] if self.labels_topic else [])
        self.partitions = [TopicPartition(t, p) for t in topics for p in range(partition_counts[t])]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self._reading = set(self.partitions)
        starts = self.consumer.beginning_offsets(
            [tp for tp in self.partitions if tp.topic == self.transactions_topic]
        )
        self.fed = {tp.partition: off for tp, off in starts.items()}

    # -- ownership ------------------------------------------------------------------------------------

    @property
    def owned(self) -> list[int]:
        """Partitions fed from the scorer's batches."""
        return sorted(self._owned)

    def own(self, partition: int, start: int) -> None:
        """The scorer consumes ``partition`` from offset ``start`` on and will ``add_batch`` it.

        Records before ``start`` not yet in the table are read by the next ``advance``; rows held back
        beyond the day bound are counted now if they precede ``start``, else left to the scorer.
        """
        self._owned[partition] = start
        held = self._pending.pop(TopicPartition(self.transactions_topic, partition), None)
        if held is not None:
            ts, terminals, _, offsets, _ = held
            before = np.flatnonzero(offsets < start)
            if len(before):
                self.table.add_transactions(ts[before], [terminals[i] for i in before.tolist()])
                self.transactions += len(before)
            if len(before) < len(offsets):
                self.fed[partition] = int(offsets[offsets >= start].min())

    def disown(self, partition: int) -> None:
        """``partition`` went to another member: read it here again from ``fed[partition]``."""
        self._owned.pop(partition, None)

    def is_new(self, partition: int, records: list) -> bool:
        """True when none of ``records`` is counted yet: the scorer may let ``OnlineFeatures.compute``
        count them (``update_terminals=True``, day by day) and then call ``add_batch(counted=True)``."""
        return records[0].offset >= self.fed.get(partition, 0)

    def add_batch(self, partition: int, records: list, decoded: DecodedBatch, counted: bool = False) -> None:
        """Count the valid transactions of one of the scorer's batches (those not counted yet).

        With ``counted`` the caller already added them (see ``is_new``); only the position moves.
        """
        fed = self.fed.get(partition, 0)
        first, last = records[0].offset, records[-1].offset
        ts, terminals = decoded.ts, decoded.terminal_id
        if counted:
            ts = ts[:0]
        elif first < fed:
            offsets = np.array([r.offset for r in records], dtype=np.int64)[decoded.index]
            keep = np.flatnonzero(offsets >= fed)
            ts, terminals = ts[keep], [terminals[i] for i in keep.tolist()]
        elif first > fed:
            logger.warning(
                "terminal feed: partition %d jumps from offset %d to %d; the gap is not counted",
                partition, fed, first,
            )  # fmt: skip
        if len(ts):
            self.table.add_transactions(ts, terminals)
            self.transactions += len(ts)
        self.fed[partition] = max(fed, last + 1)

    # -- catching up ----------------------------------------------------------------------------------

    def advance(self, bound: int | None) -> None:
        """Before every batch of the scorer, whose last day is ``bound + delay_days`` (None: a batch
        without valid rows, which moves no day bound).

        Fills every owned partition's gap up to where the scorer took over, and brings everything else
        up to day ``bound`` as far as the topics currently go. The gaps are filled whatever the batch
        holds: ``add_batch`` moves ``fed`` past the batch, which would otherwise skip a gap for good (a
        scorer whose first batch after a takeover was one poison record lost the terminal counts of
        everything before it).
        """
        moved = bound is not None and (self.bound is None or bound > self.bound)
        gaps = {p: start for p, start in self._owned.items() if self.fed.get(p, 0) < start}
        if not moved and not gaps:
            return
        if moved:
            self.bound = bound
            for tp in list(self._pending):
                self._apply(tp, *self._pending.pop(tp))
        if self.bound is None:  # no day bound yet: only the gaps (records already processed) can be read
            active = [TopicPartition(self.transactions_topic, p) for p in sorted(gaps)]
        else:
            active = []
            for tp in self.partitions:
                owned = tp.topic == self.transactions_topic and tp.partition in self._owned
                if owned and tp.partition not in gaps or tp in self._pending:
                    continue
                active.append(tp)
        self._read(active, gaps)

    def _read(self, active: list[TopicPartition], gaps: dict[int, int]) -> None:
        consumer = self.consumer
        paused = [tp for tp in self.partitions if tp not in active]
        if paused:
            consumer.pause(*paused)
        if active:
            consumer.resume(*active)
        for tp in active:
            if tp.topic == self.transactions_topic and tp not in self._reading:
                consumer.seek(tp, self.fed.get(tp.partition, 0))
        self._reading = set(active)
        if not active:
            return
        ends = consumer.end_offsets(active)
        for tp in active:
            if tp.topic == self.transactions_topic and tp.partition in gaps:
                ends[tp] = gaps[tp.partition]
        deadline = time.monotonic() + self.timeout_s
        while True:
            behind = [tp for tp in active if tp not in self._pending and consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                logger.warning(
                    "terminal feed: not caught up after %.0fs; %d partition(s) behind (e.g. %s[%d])",
                    self.timeout_s, len(behind), behind[0].topic, behind[0].partition,
                )  # fmt: skip
                break
            release_parked(consumer)
            for tp, records in consumer.poll(timeout_ms=100, max_records=100_000).items():
                self._ingest(tp, records, gaps)
        for p in gaps:  # the scorer's batches take over from here
            tp = TopicPartition(self.transactions_topic, p)
            consumer.pause(tp)
            self._reading.discard(tp)

    def _ingest(self, tp: TopicPartition, records: list, gaps: dict[int, int]) -> None:
        if tp.topic != self.transactions_topic:
            labels = self.label_decoder.decode([r.value for r in records])
            self.invalid_labels += labels.n_invalid
            self._apply(tp, labels.ts, labels.terminal_id, labels.label, decoded=labels)
            return
        p = tp.partition
        fed, stop = self.fed.get(p, 0), gaps.get(p)
        records = [r for r in records if r.offset >= fed and (stop is None or r.offset < stop)]
        if not records:
            return
        d = self.decoder.decode([r.value for r in records])
        self.fed[p] = records[-1].offset + 1
        if stop is not None:  # records the scorer already processed: no day bound
            if len(d):
                self.table.add_transactions(d.ts, d.terminal_id)
                self.transactions += len(d)
            return
        offsets = np.array([r.offset for r in records], dtype=np.int64)[d.index]
        self._apply(tp, d.ts, d.terminal_id, None, offsets)

    def _apply(
        self,
        tp: TopicPartition,
        ts: np.ndarray,
        terminals: list[str],
        labels: np.ndarray | None,
        offsets: np.ndarray | None = None,
        decoded: DecodedLabels | None = None,
    ) -> None:
        """Add the rows up to the bound to the table; hold the rest and pause ``tp`` if there are any.

        ``decoded``: the labels' messages (rows of ``ts``), passed on to ``on_labels`` once taken."""
        assert self.bound is not None
        now = ts // SECONDS_PER_DAY <= self.bound
        rest = None
        if not now.all():
            idx, later = np.flatnonzero(now), np.flatnonzero(~now)
            rest = (
                ts[later],
                [terminals[i] for i in later.tolist()],
                None if labels is None else labels[later],
                None if offsets is None else offsets[later],
                None if decoded is None else decoded.take(later),
            )
            ts, terminals = ts[idx], [terminals[i] for i in idx.tolist()]
            labels = None if labels is None else labels[idx]
            decoded = None if decoded is None else decoded.take(idx)
        if len(ts):
            if labels is None:
                self.table.add_transactions(ts, terminals)
                self.transactions += len(ts)
            else:
                self.table.add_labels(ts, terminals, labels)
                self.labels += len(ts)
                if self.on_labels is not None and decoded is not None:
                    self.on_labels(decoded)
        if rest is not None:
            self._pending[tp] = rest
            self.consumer.pause(tp)
            self._reading.discard(tp)
