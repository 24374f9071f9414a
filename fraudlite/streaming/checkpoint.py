"""A batch's Kafka transaction, begin to commit or abort: what makes a batch's effects all-or-nothing.

Exactly-once: the batch's outputs, its changelog records (when due) and its input offsets go into one
transaction; the producer carries the consumer's group metadata (KIP-447), so a member that lost its
partitions in a rebalance cannot commit. At-least-once: the outputs are flushed, then the changelog
records, then the input offsets are committed; a crash in between repeats decisions but never applies
a record to the state twice (the state knows its input offset).

Either way the outputs of a batch reach the broker before the changelog records that include it, so a
restored state never claims a batch whose outputs are missing (``idempotence`` relies on it).

The checkpoint reaches Kafka only through the few calls of ``Producer`` and ``Consumer`` below, on the
clients of a ``Clients`` holder (``clients.ScorerClients``: kafka-python's clients as they are); another
client library plugs in behind an adapter with these methods that raises kafka-python's ``KafkaError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import numpy as np
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from fraudlite.features.online import CustomerState
from fraudlite.kafkaio.clients import KafkaIOError
from fraudlite.streaming.batch_output import (
    ChangelogBatch,
    SentBatch,
    changelog_records,
    send_changelog,
    send_outputs,
)
from fraudlite.streaming.explain import Explanations
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.outputs import iso_now
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.reload import LoadedModel
from fraudlite.streaming.settings import CheckpointSettings, OutputSettings
from fraudlite.streaming.sync import Part

__all__ = ["Producer", "Consumer", "Clients", "Committed", "Checkpoint", "check_sent"]

logger = logging.getLogger(__name__)


class Producer(Protocol):
    """The producer calls a checkpoint makes. ``send`` returns a future that, once the record is
    delivered or has failed, answers ``failed()``, ``exception``, ``succeeded()`` and ``value.offset``."""

    def begin_transaction(self) -> None: ...

    def send(self, topic: str, value=None, key=None, headers=None, partition: int | None = None): ...

    def flush(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: Mapping, group_metadata: object) -> None: ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None: ...


class Consumer(Protocol):
    """The group consumer calls a checkpoint makes."""

    def commit(self, offsets: Mapping) -> None: ...

    def group_metadata(self) -> object: ...


class Clients(Protocol):
    """What a checkpoint needs of the clients' holder: the current producer (None while closed) and
    consumer, the topics' partition counts, and a way to replace a producer that cannot go on."""

    producer: Producer | None
    consumer: Consumer | None
    partitions: Mapping[str, int]

    def reset_producer(self) -> None: ...


@dataclass(slots=True)
class Committed:
    """A committed batch: what was sent, and ``perf_counter()`` when the sends and the commit ended."""

    sent: SentBatch
    sent_at: float
    committed_at: float


class Checkpoint:
    """Commits each batch as one unit over ``clients`` (see the module docstring).

    ``commit`` runs one batch's transaction end to end:

    1. begin the transaction (exactly-once only);
    2. send the outputs: decisions, alerts, DLQ records and, with idempotent outputs, the ``positions``
       records (``batch_output.send_outputs``); then what ``also`` sends (the shadow's decisions);
    3. at-least-once: flush the outputs and check every send;
    4. changelog due (``changelog_interval_s`` since the last records)? take the records of the customers
       changed since; exactly-once: flush the outputs first;
    5. send the changelog records;
    6. commit: exactly-once, ``send_offsets_to_transaction`` with the consumer's group metadata, then
       ``commit_transaction``; at-least-once, flush, check every send, then ``consumer.commit`` the offsets;
    7. note where each output partition's next outputs go (``PartitionBook.note_sent``).

    A failing step raises (a failed commit also counts in ``commit_failures``) and nothing of the batch
    is committed; the caller's recovery then calls ``abort`` before it rebuilds the state:

    8. abort the open transaction (exactly-once); a producer that cannot is replaced.

    ``flush_changelog`` writes the changed state on a graceful stop, in a transaction of its own.

    Args:
        settings: delivery mode and changelog.
        outputs: where the outputs go.
        clients: the current producer and consumer.
        book: the per-partition bookkeeping (changed customers, changelog writers, output positions).
        states: returns each owned partition's customer state (the scorer replaces its online state
            when it starts a new session).
        metrics: the scorer's metrics (commit failures).
    """

    def __init__(
        self,
        settings: CheckpointSettings,
        outputs: OutputSettings,
        clients: Clients,
        book: PartitionBook,
        states: Callable[[], Mapping[int, CustomerState]],
        metrics: ScorerMetrics,
    ) -> None:
        self.settings = settings
        self.outputs = outputs
        self.clients = clients
        self.book = book
        self._states = states
        self.metrics = metrics
        self._last_changelog = time.monotonic()

    def commit(
        self,
        parts: list[Part],
        scores: np.ndarray,
        model: LoadedModel,
        explained: Explanations | None = None,
        also: Callable[[Producer], list] | None = None,
    ) -> Committed:
        """Send and commit the batch ``parts`` scored ``scores`` by ``model`` (steps 1-7 above);
        ``explained``: the reasons its alerts (and, with ``--explain-all``, decisions) carry; ``also``:
        sends more records of the batch with the producer (the shadow model's decisions, ``shadow``),
        right after the outputs in step 2, and returns their futures.

        Raises:
            KafkaError / KafkaIOError: a send, flush or the commit failed; the transaction is still open.
        """
        eos = self.settings.exactly_once
        producer = self.clients.producer
        if eos:
            producer.begin_transaction()
        sent = send_outputs(
            producer, self.outputs, self.clients.partitions, parts, scores, model, iso_now(time.time()), self.book,
            explained,
        )  # fmt: skip
        futures = sent.futures
        if also is not None:
            futures += also(producer)
        if not eos:
            producer.flush()
            check_sent(futures)
            futures = []
        changelog = self._take_changelog() if self._changelog_due() else []
        if changelog and eos:
            # The outputs reach the broker before the state that includes this batch: should the
            # transaction survive a crash only in part (the embedded broker commits a crashed producer's
            # open transaction), a restored state never claims a batch whose outputs are missing.
            producer.flush()
        futures += send_changelog(producer, self.settings.changelog_topic, changelog)
        sent_at = perf_counter()
        self._commit_offsets(producer, parts, futures)
        committed_at = perf_counter()
        self.book.note_sent(sent.last_sent)
        return Committed(sent, sent_at, committed_at)

    def _changelog_due(self) -> bool:
        s = self.settings
        return (
            s.changelog_topic is not None
            and time.monotonic() - self._last_changelog >= s.changelog_interval_s
        )

    def _take_changelog(self) -> ChangelogBatch:
        """Changelog records of every partition with customers changed since its last records."""
        out = changelog_records(self.book, self._states())
        self._last_changelog = time.monotonic()
        return out

    def _commit_offsets(self, producer: Producer, parts: list[Part], futures: list) -> None:
        eos = self.settings.exactly_once
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records, _ in parts}
        consumer = self.clients.consumer
        try:
            if eos:
                producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
                producer.commit_transaction()
            else:
                producer.flush()
                check_sent(futures)
                consumer.commit(offsets)
        except KafkaError:
            self.metrics.commit_failures.labels("transaction" if eos else "commit").inc()
            raise

    def abort(self) -> None:
        """Roll back the open transaction (step 8; exactly-once only): a producer that cannot abort it
        (fenced or broken) is replaced by a new one with the same ``transactional.id``.

        Raises:
            KafkaError: the new producer could not initialize its transactions (the recovery retries).
        """
        if not self.settings.exactly_once:
            return
        try:
            self.clients.producer.abort_transaction()
            return
        except KafkaError as e:
            logger.info("abort_transaction: %s; recreating the producer", e)
        except Exception as e:  # noqa: BLE001 - not a broker error: the producer can go on
            logger.debug("abort_transaction: %s", e)
            return
        self.clients.reset_producer()

    def flush_changelog(self) -> None:
        """Write the changed state of every partition now (graceful stop): the changelog records in their
        own transaction, without offsets. A failure is only logged: the next owner replays the input
        since the last records instead."""
        s, producer = self.settings, self.clients.producer
        if s.changelog_topic is None or not any(self.book.dirty.values()) or producer is None:
            return
        try:
            if s.exactly_once:
                producer.begin_transaction()
            for p, records in self._take_changelog():
                for key, value in records:
                    producer.send(s.changelog_topic, value=value, key=key, partition=p)
            if s.exactly_once:
                producer.commit_transaction()
            else:
                producer.flush()
        except KafkaError as e:
            logger.warning("final changelog flush failed (%s)", e)


def check_sent(futures: list) -> None:
    """Raise if any completed send failed.

    Raises:
        KafkaIOError: a record could not be produced.
    """
    for f in futures:
        if f.failed():
            raise KafkaIOError(f"produce failed: {f.exception}")
