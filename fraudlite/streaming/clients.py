"""The Kafka clients of one scorer, held together: opened, polled, kept alive and closed as one.

A session (``ScorerClients.open`` .. ``close``) creates the serving topics if missing and then five
clients (``connection`` makes each): the transactional producer of the outputs, the group member's
consumer, a ``read_committed`` reader for restores, a reader for end offsets and the terminal feed's
consumer. The object outlives its sessions (the scorer reconnects through it after the broker lost
its topics) and so does its ``transactional.id`` claim, released only when the scorer closes.
``checkpoint.Checkpoint`` reaches the producer and the consumer through it, and ``reset_producer``
replaces a producer that cannot abort its transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition

from fraudlite.features.online import TerminalTable
from fraudlite.kafkaio.clients import keep_alive, release_parked
from fraudlite.kafkaio.wire import TransactionDecoder
from fraudlite.streaming.connection import (
    TransactionalIdClaim,
    check_changelog_partitions,
    ensure_serving_topics,
    make_end_reader,
    make_group_consumer,
    make_restore_reader,
    make_scorer_producer,
    make_terminal_feed,
    topics_lost,
)
from fraudlite.streaming.settings import ClientSettings
from fraudlite.streaming.terminal_feed import TerminalFeed

__all__ = ["ScorerClients"]

logger = logging.getLogger(__name__)


@dataclass
class ScorerClients:
    """A scorer's Kafka clients (None while no session is open; see the module docstring).

    Attributes:
        settings: how the clients are made.
        txn_id: the producer's ``transactional.id`` (claimed on first use, kept across sessions).
        partitions: partition count of each serving topic (this session's).
        topic_ids: each topic's id when the session opened (None if not reported).
    """

    settings: ClientSettings
    txn_id: TransactionalIdClaim = field(init=False)
    producer: KafkaProducer | None = None
    consumer: KafkaConsumer | None = None
    restore_reader: KafkaConsumer | None = None
    end_reader: KafkaConsumer | None = None
    feed: TerminalFeed | None = None
    partitions: dict[str, int] = field(default_factory=dict)
    topic_ids: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.txn_id = TransactionalIdClaim(self.settings)

    def open(
        self, terminals: TerminalTable, decoder: TransactionDecoder, listener: ConsumerRebalanceListener
    ) -> None:
        """Create missing topics, then the clients; the group consumer subscribes with ``listener``.

        A failure leaves the clients made so far open: ``close`` them.

        Raises:
            UserError: the changelog's partitions do not match the input's.
            KafkaIOError / KafkaError / OSError: the broker could not be reached.
        """
        s = self.settings
        counts, self.topic_ids = ensure_serving_topics(s)
        check_changelog_partitions(s, counts)
        self.partitions = counts
        self._new_producer()
        self.restore_reader = make_restore_reader(s)
        self.end_reader = make_end_reader(s)
        self.feed = make_terminal_feed(s, terminals, decoder)
        self.feed.assign(counts)
        self.consumer = make_group_consumer(s)
        self.consumer.subscribe([s.topics.input], listener=listener)

    def _new_producer(self) -> None:
        eos = self.settings.exactly_once
        self.producer = make_scorer_producer(self.settings, self.txn_id.get() if eos else None)
        if eos:
            self.producer.init_transactions()

    def reset_producer(self) -> None:
        """Replace the producer (it cannot abort its transaction: fenced or broken) by a new one with the
        same ``transactional.id``, which also ends whatever the old one left open.

        Raises:
            KafkaError: the new producer could not initialize its transactions.
        """
        try:
            self.producer.close(timeout=0)
        except Exception:  # noqa: BLE001 - a broken producer may fail to close too
            pass
        self._new_producer()

    def close(self) -> None:
        """Close the session's clients, best effort; the consumer leaves the group."""
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)  # leaves the group
            except Exception as e:  # noqa: BLE001 - closing is best effort
                logger.debug("consumer close: %s", e)
        producer = self.producer
        for client in (producer, self.restore_reader, self.end_reader, self.feed and self.feed.consumer):
            if client is not None:
                try:
                    client.close(timeout=5) if client is producer else client.close()
                except Exception as e:  # noqa: BLE001
                    logger.debug("client close: %s", e)
        self.producer = self.consumer = self.restore_reader = self.end_reader = self.feed = None

    def topics_lost(self) -> list[str] | None:
        """The topics the broker lost since the session opened (``connection.topics_lost``)."""
        return topics_lost(self.settings, self.topic_ids)

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        """The group consumer's next records, ``{tp: [record]}``.

        Raises:
            KafkaError: the poll failed.
        """
        release_parked(self.consumer)
        return self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)

    def keep_alive(self) -> None:
        """Tell the group coordinator the member is alive during long work (``kafkaio.clients.keep_alive``)."""
        keep_alive(self.consumer)

    def caught_up(self, tp: TopicPartition) -> bool:
        """Whether the consumer's position in ``tp`` is at its high watermark."""
        high = self.consumer.highwater(tp)
        return high is not None and self.consumer.position(tp) >= high
