"""``fraudlite collect``: consume transactions and late labels from Kafka into a label store.

The Kafka side of the label store (``label_store`` is the Parquet side). Offsets are committed only after
a store write, so a crash replays messages that the idempotent store then absorbs without duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fraudlite.errors import ConfigError, UserError
from fraudlite.pipeline.label_decode import decode_labels, decode_transactions
from fraudlite.pipeline.label_store import LabelStore, WriteStats

__all__ = ["CollectConfig", "CollectStats", "collect"]

# The collector's logger: log records keep the name they had before this module was split out.
logger = logging.getLogger("fraudlite.pipeline.label_store")


@dataclass(frozen=True)
class CollectConfig:
    """``fraudlite collect`` settings.

    Attributes:
        bootstrap_servers: Kafka bootstrap servers.
        store: label store directory (created if missing).
        transactions_topic, labels_topic: topics to read (created if missing).
        group_id: consumer group (offsets committed after each store write).
        flush_interval_s, flush_max_messages: write the buffer at least this often / this large.
        idle_exit_s: stop once no message arrived for this long (None: run until stopped).
        max_messages: stop after this many messages (None: no limit).
        partitions: partitions for topics this creates.
    """

    bootstrap_servers: str
    store: str
    transactions_topic: str = "transactions"
    labels_topic: str = "fraud-labels"
    group_id: str = "fraudlite-collector"
    flush_interval_s: float = 5.0
    flush_max_messages: int = 50_000
    idle_exit_s: float | None = None
    max_messages: int | None = None
    partitions: int = 4

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("--bootstrap-servers is required (H:P[,H:P...])")
        if self.transactions_topic == self.labels_topic:
            raise ConfigError("--transactions-topic and --labels-topic must differ")
        if not self.flush_interval_s > 0:
            raise ConfigError(f"--flush-interval must be > 0 seconds, got {self.flush_interval_s}")
        if self.flush_max_messages < 1:
            raise ConfigError(f"--flush-max-messages must be >= 1, got {self.flush_max_messages}")
        if self.idle_exit_s is not None and not self.idle_exit_s > 0:
            raise ConfigError(f"--idle-exit must be > 0 seconds, got {self.idle_exit_s}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ConfigError(f"--max-messages must be >= 1, got {self.max_messages}")
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be >= 1, got {self.partitions}")


@dataclass
class CollectStats:
    """Totals of a ``collect`` run."""

    transactions: int = 0
    labels: int = 0
    invalid: int = 0
    writes: int = 0
    store: WriteStats | None = None

    def summary(self) -> str:
        s = self.store or WriteStats()
        return (
            f"collected {self.transactions} transaction and {self.labels} label messages "
            f"({self.invalid} invalid skipped) in {self.writes} writes: {s.transactions_added} new transactions, "
            f"{s.duplicates_ignored} duplicates ignored, {s.labels_applied} labels applied, "
            f"{s.labels_pending} labels pending"
        )


def _check_new_store(root: str) -> None:
    p = Path(root)
    if p.exists() and (not p.is_dir() or any(not c.name.startswith(".") for c in p.iterdir())):
        raise ConfigError(f"--store {p}: exists and is not a label store (not empty)")


def collect(config: CollectConfig, stop: threading.Event | None = None) -> CollectStats:
    """Consume transactions and labels into the store until stopped (or idle / max messages).

    Offsets are committed after each store write (at-least-once delivery, made exactly-once in effect by
    the store's idempotence).

    Raises:
        RegistryBusyError: another collector writes to this store.
        KafkaIOError: the topics cannot be created.
    """
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from fraudlite.kafkaio.clients import TopicSpec, ensure_topics, make_admin, make_consumer
    from fraudlite.kafkaio.security import kafka_security_from_env

    stop = stop or threading.Event()
    if Path(config.store, "store.json").exists():
        LabelStore(config.store)  # checks the format marker before connecting
    else:
        _check_new_store(config.store)  # nothing is created until the broker answered
    security = kafka_security_from_env()
    try:
        admin = make_admin(
            config.bootstrap_servers,
            security,
            client_id="fraudlite-collect-admin",
            bootstrap_timeout_ms=10_000,
        )
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        raise UserError(
            f"--bootstrap-servers {config.bootstrap_servers}: no Kafka broker answered ({e})"
        ) from None
    try:
        topics = [
            TopicSpec(config.transactions_topic, config.partitions),
            TopicSpec(config.labels_topic, config.partitions),
        ]
        ensure_topics(admin, topics)
    finally:
        admin.close()
    store = LabelStore(config.store, create=True)
    store_totals = WriteStats()
    totals = CollectStats(store=store_totals)
    with store.writer_lock():
        consumer = make_consumer(
            config.bootstrap_servers,
            security,
            group_id=config.group_id,
            client_id="fraudlite-collect",
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            max_poll_records=5_000,
        )
        consumer.subscribe([config.transactions_topic, config.labels_topic])
        tx_buf: list[bytes | None] = []
        label_buf: list[bytes | None] = []
        last_flush = last_message = time.monotonic()
        seen = 0

        def flush() -> None:
            nonlocal last_flush
            if tx_buf or label_buf:
                tx, bad_tx = decode_transactions(tx_buf)
                labels, bad_labels = decode_labels(label_buf)
                stats = store.write(tx, labels)
                try:
                    consumer.commit()
                except KafkaError as e:  # e.g. a rebalance: the messages come again and change nothing
                    logger.warning("collect: offset commit failed (%s); the store absorbs the redelivery", e)
                totals.invalid += bad_tx + bad_labels
                totals.writes += 1
                store_totals.add(stats)
                logger.info(
                    "collect: wrote tx=%d (+%d new) labels=%d (+%d applied, %d pending) invalid=%d",
                    len(tx_buf),
                    stats.transactions_added,
                    len(label_buf),
                    stats.labels_applied,
                    stats.labels_pending,
                    bad_tx + bad_labels,
                )
                tx_buf.clear()
                label_buf.clear()
            last_flush = time.monotonic()

        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=200)
                now = time.monotonic()
                for tp, records in polled.items():
                    target = tx_buf if tp.topic == config.transactions_topic else label_buf
                    target.extend(r.value for r in records)
                    n = len(records)
                    seen += n
                    if tp.topic == config.transactions_topic:
                        totals.transactions += n
                    else:
                        totals.labels += n
                if polled or not consumer.assignment():  # idle time counts once partitions are assigned
                    last_message = now
                if len(tx_buf) + len(label_buf) >= config.flush_max_messages or (
                    now - last_flush >= config.flush_interval_s
                ):
                    flush()
                if config.max_messages is not None and seen >= config.max_messages:
                    break
                if config.idle_exit_s is not None and now - last_message >= config.idle_exit_s:
                    logger.info("collect: idle for %.1fs, stopping", config.idle_exit_s)
                    break
            flush()
        finally:
            consumer.close(autocommit=False)
    return totals
