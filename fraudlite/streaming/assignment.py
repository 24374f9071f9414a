"""Partitions coming and going: recording rebalances, rebuilding a partition's state, positioning it.

kafka-python runs rebalance callbacks on its IO thread, where blocking consumer calls are not allowed:
``RebalanceListener`` only records the change; the scorer applies it on the main thread right after
``poll`` returns (discarding that poll's records, which it rewinds over) with a ``PartitionRestorer``:

* a partition whose state is current (same committed offset) is kept; else its state is restored from
  the changelog and the committed input after its last record is replayed (``restore``);
* with idempotent outputs, the output partitions are scanned for what a crashed predecessor already
  made visible (``idempotence.scan_outputs``), each skipped once when its input is processed again;
* the consumer is positioned at the committed offset, or past what the restored state already holds
  (``rewind``), and the terminal feed is told which partitions the scorer's batches cover.

Blocking reads keep the group membership alive (``kafkaio.clients.keep_alive``), so a restore may take longer
than ``max.poll.interval.ms``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from fraudlite.features.online import CustomerState, OnlineFeatures, TerminalTable
from fraudlite.features.spec import FeatureSpec
from fraudlite.kafkaio.clients import KafkaIOError, read_partition_to_end
from fraudlite.kafkaio.wire import TransactionDecoder
from fraudlite.streaming.clients import ScorerClients
from fraudlite.streaming.idempotence import OUTPUT_KINDS, POSITIONS_KEY, decode_positions, scan_outputs
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.settings import RestoreSettings
from fraudlite.streaming.state_store import ChangelogWriter, restore_state

__all__ = ["RebalanceListener", "PartitionRestorer"]

logger = logging.getLogger(__name__)


class RebalanceListener(ConsumerRebalanceListener):
    """Records assignment changes of the input topic for the main thread (see the module docstring).

    Attributes:
        assigned: the input partitions currently assigned.
        changed: set when the assignment changed since the scorer last applied it.
        lost: partitions lost (not revoked) since then: their state must not be kept.
    """

    def __init__(self, input_topic: str, metrics: ScorerMetrics) -> None:
        self.input_topic = input_topic
        self.metrics = metrics
        self.assigned: set[TopicPartition] = set()
        self.changed = False
        self.lost: set[int] = set()

    def reset(self) -> None:
        """Forget everything (a new session with new clients)."""
        self.assigned, self.lost = set(), set()
        self.changed = False

    def on_partitions_assigned(self, assigned) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        self.assigned = {tp for tp in assigned if tp.topic == self.input_topic}
        self.changed = True

    def on_partitions_revoked(self, revoked) -> None:
        # Every batch is committed before the next poll, so nothing is in flight here; the state is
        # kept in case the same partitions come back (checked against the committed offset then).
        self.metrics.rebalances.labels("revoked").inc()
        logger.info("revoked partitions=%s", sorted(tp.partition for tp in revoked))

    def on_partitions_lost(self, lost) -> None:
        self.lost |= {tp.partition for tp in lost}
        self.changed = True
        self.on_partitions_revoked(lost)


class PartitionRestorer:
    """Rebuilds and positions owned input partitions over one session's clients (main thread only).

    Args:
        settings: topics, idempotent outputs, where to start, read timeouts.
        spec: the feature spec of the online state.
        decoder: decodes the input records replayed into a restored state.
        metrics: the scorer's metrics (restore time).
        online: the online features holding each partition's customer state.
        book: the scorer's per-partition bookkeeping (changelog writers, dirty customers, outputs).
        clients: the session's clients: the group member (committed offsets, seeks, keep-alive), a
            ``read_committed`` reader without a group for the changelog and replays, a reader for end
            offsets, the terminal feed (told which partitions the scorer's batches cover, from where) and
            the topics' partition counts.
    """

    def __init__(
        self,
        settings: RestoreSettings,
        spec: FeatureSpec,
        decoder: TransactionDecoder,
        metrics: ScorerMetrics,
        online: OnlineFeatures,
        book: PartitionBook,
        clients: ScorerClients,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.decoder = decoder
        self.metrics = metrics
        self.online = online
        self.book = book
        self.partitions = clients.partitions
        self.consumer = clients.consumer
        self.restore_reader = clients.restore_reader
        self.end_reader = clients.end_reader
        self.feed = clients.feed
        self._keep_alive = clients.keep_alive
        self._timeout_s = settings.timeout_s

    # -- on assignment --------------------------------------------------------------------------------

    def apply(self, rebalance: RebalanceListener, before: Callable[[], None]) -> bool:
        """Apply the assignment ``rebalance`` recorded: forget what is no longer ours, call ``before``
        (ends dead members' transactions), then restore (or keep) and position each assigned partition.

        Returns:
            False when the broker failed or the assignment was lost meanwhile: the scorer recovers.
        """
        assigned = sorted(rebalance.assigned, key=lambda tp: tp.partition)
        mine = [tp.partition for tp in assigned]
        logger.info("assigned partitions=%s", mine)
        self.drop_unowned(mine, rebalance.lost)
        rebalance.lost = set()
        ok = True
        try:
            before()
            self.take_over(assigned)
        except (KafkaError, KafkaIOError, OSError, ValueError) as e:
            # ValueError: kafka-python's "Unassigned partition" when the assignment was lost meanwhile
            logger.warning("restoring state on assignment failed (%s); will retry", e)
            ok = False
        self.metrics.assigned.set(len(mine))
        self.metrics.ready.set(1 if mine else 0)
        return ok

    def drop_unowned(self, mine: list[int], lost: set[int]) -> None:
        """Forget the state of partitions not in ``mine`` or lost, and the outputs of those not in ``mine``."""
        for p in list(self.online.states):
            if p not in mine or p in lost:
                self.online.drop_partition(p)
                self.book.writers.pop(p, None)
        self.book.keep_outputs_of(mine)

    def take_over(self, assigned: list[TopicPartition]) -> None:
        """Restore (or keep) the state of each assigned partition and position it.

        Raises:
            KafkaError / KafkaIOError / OSError / ValueError: the broker failed or the assignment was lost
                meanwhile (kafka-python's "Unassigned partition").
        """
        for tp in assigned:
            p = tp.partition
            writer = self.book.writers.get(p)
            committed = self.consumer.committed(tp)
            current = writer is not None and p in self.online.states and writer.input_offset == committed
            if not current:
                self.restore(p)
            elif self.settings.idempotent:  # kept state: another member may have written outputs since
                self.scan_outputs(p, self.book.output_positions(p))
            self.rewind(tp)
        for p in set(self.feed.owned) - {tp.partition for tp in assigned}:
            self.feed.disown(p)

    def rebuild_all(self) -> None:
        """Rebuild every assigned partition's state from scratch and rewind it (after a rollback)."""
        for p in list(self.online.states):
            self.online.drop_partition(p)
        self.book.clear_state()
        for tp in sorted(self.consumer.assignment(), key=lambda t: t.partition):
            self.restore(tp.partition)
            self.rewind(tp)

    def rewind(self, tp: TopicPartition) -> None:
        """Position ``tp`` at its committed offset, or past what its restored state already holds."""
        consumer = self.consumer
        committed = consumer.committed(tp)
        writer = self.book.writers.get(tp.partition)
        held = writer.input_offset if writer is not None else -1
        if held >= 0 and (committed is None or held > committed):
            consumer.seek(tp, held)
        elif committed is not None:
            consumer.seek(tp, committed)
        elif self.settings.auto_offset_reset == "earliest":
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek_to_end(tp)
        position = consumer.position(tp)
        decided = self.book.decided.get(tp.partition)
        if decided is not None:  # an uncommitted batch covers at most max_records records from here
            decided.until = position + self.settings.max_records
        self.feed.own(tp.partition, position)

    # -- state ----------------------------------------------------------------------------------------

    def restore(self, partition: int) -> None:
        """Rebuild ``partition``'s customer state: changelog, then the committed input since its last record."""
        topics, spec, book = self.settings.topics, self.spec, self.book
        t0 = perf_counter()
        if topics.changelog is None:
            self.online.set_state(partition, CustomerState(spec))
            book.writers[partition] = ChangelogWriter()
            return
        records: list[tuple[bytes | None, bytes | None]] = []
        read_partition_to_end(
            self.restore_reader,
            self.end_reader,
            TopicPartition(topics.changelog, partition),
            lambda batch: records.extend((r.key, r.value) for r in batch),
            timeout_s=self._timeout_s,
            tick=self._keep_alive,
        )
        positions = None
        state_records = []
        for key, value in records:
            if key == POSITIONS_KEY:
                positions = decode_positions(value)
            else:
                state_records.append((key, value))
        state, writer = restore_state(spec, state_records)
        touched: dict[str, None] = {}
        replayed = self.replay_input(partition, state, writer, touched)
        self.online.set_state(partition, state)
        book.writers[partition] = writer
        # Customers changed by the replay are in no changelog record yet: the next one must carry them,
        # else a later restore that starts from that record (past the replayed range) loses them.
        book.dirty[partition] = touched
        decided = self.scan_outputs(partition, positions) if self.settings.idempotent else 0
        seconds = perf_counter() - t0
        self.metrics.state_restore_seconds.observe(seconds)
        logger.info(
            "restored partition=%d customers=%d changelog_records=%d replayed=%d input_offset=%d "
            "outputs_already_there=%d seconds=%.3f",
            partition, len(state), len(records), replayed, writer.input_offset, decided, seconds,
        )  # fmt: skip

    def replay_input(
        self, partition: int, state: CustomerState, writer: ChangelogWriter, touched: dict[str, None]
    ) -> int:
        """Apply the input records committed after the changelog's last record to ``state``.

        The changelog is written every ``changelog_interval_s``, so up to that much committed input is
        not in it; re-running those records through the same customer-state update gives exactly the
        state an uninterrupted scorer has (terminal features are not part of it). The customers it
        changes are added to ``touched``.

        Returns:
            How many input records were replayed.
        """
        tp = TopicPartition(self.settings.topics.input, partition)
        committed = self.consumer.committed(tp)
        if committed is None or writer.input_offset >= committed:
            return 0
        spec = self.spec
        scratch = OnlineFeatures(spec, TerminalTable(spec))
        scratch.set_state(partition, state)
        decode = self.decoder.decode
        count = 0

        def apply(records: list) -> None:
            nonlocal count
            d = decode([r.value for r in records])
            if len(d):
                scratch.compute(
                    partition, d.ts, d.customer_id, d.terminal_id, d.amount_cents, extras=d.extras
                )
                touched.update(dict.fromkeys(d.customer_id))
            count += len(records)

        start = writer.input_offset if writer.input_offset >= 0 else None
        read_partition_to_end(
            self.restore_reader, self.end_reader, tp, apply,
            timeout_s=self._timeout_s, start=start, end=committed, tick=self._keep_alive,
        )  # fmt: skip
        writer.input_offset = committed
        return count

    def scan_outputs(self, partition: int, start: dict[str, int] | None) -> int:
        """What a predecessor already wrote for ``partition`` (``idempotence.scan_outputs``); returns how
        many outputs were found (each is skipped once when its input is processed again)."""
        topics, counts = self.settings.topics, self.partitions
        n_in = counts[topics.input]
        outputs = {
            kind: topic
            for kind, topic in zip(OUTPUT_KINDS, (topics.output, topics.alerts, topics.dlq), strict=True)
            if counts.get(topic) == n_in  # else not aligned with input partitions: nothing to find
        }
        decided, ends = scan_outputs(
            self.restore_reader, self.end_reader, outputs, topics.input, partition, start,
            timeout_s=self._timeout_s, tick=self._keep_alive,
        )  # fmt: skip
        self.book.found_outputs(partition, decided, ends)
        return len(decided)
