"""``fraudlite replay``: produce a transactions file to Kafka in time order, with an optional late-label feed.

Transactions go out as JSON keyed by ``customer_id``, sorted by time (ties keep file order). With a
labels topic, each transaction's label is emitted at stream time ``(day(tx) + delay) * 86400 - 1`` --
the last second before the label becomes usable for terminal risk -- so labels are flushed before every
transaction that comes after that moment, as a chargeback feed would deliver them. Labels still pending
after the last transaction are emitted at the end.

pandas is imported lazily (through ``fraudlite.data.transactions``) so ``import fraudlite.streaming`` stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from fraudlite.errors import ConfigError, DataError, FraudliteError, UserError
from fraudlite.features.spec import SECONDS_PER_DAY

__all__ = ["replay", "ReplayResult", "ReplayError", "emission_order", "label_release_ts"]

logger = logging.getLogger(__name__)


class ReplayError(FraudliteError, RuntimeError):
    """The broker refused or lost messages (carries the topic and the first error)."""


class _Transaction(msgspec.Struct):
    tx_id: str
    timestamp: int  # epoch milliseconds
    customer_id: str
    terminal_id: str
    amount: float


class _Label(msgspec.Struct):
    tx_id: str
    customer_id: str
    terminal_id: str
    timestamp: int  # epoch milliseconds of the transaction
    label: int


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent."""

    transactions: int
    labels: int
    seconds: float
    topic: str
    labels_topic: str | None = None

    @property
    def rate(self) -> float:
        """Transactions per second over the whole run."""
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        labels = f" and {self.labels} labels to {self.labels_topic}" if self.labels_topic else ""
        return (
            f"replayed {self.transactions} transactions to {self.topic}{labels} "
            f"in {self.seconds:.1f}s ({self.rate:,.0f} tx/s)"
        )


def label_release_ts(ts: np.ndarray, delay_days: int) -> np.ndarray:
    """Stream time (epoch s) at which each transaction's label is emitted: the last second before
    ``day + delay_days`` starts, never before the transaction itself."""
    ts = np.asarray(ts, dtype=np.int64)
    return np.maximum((ts // SECONDS_PER_DAY + delay_days) * SECONDS_PER_DAY - 1, ts)


def emission_order(ts: np.ndarray, release: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Merge time-sorted transactions with their labels into one emission sequence.

    Args:
        ts: transaction times, non-decreasing.
        release: label emission time per transaction (``label_release_ts``), or None for no labels.

    Returns:
        ``(kind, index)``: kind 0 = transaction, 1 = label; index = the transaction's row. A label goes
        after every transaction with ``ts <= release`` and before the first one with ``ts > release``;
        labels released together keep transaction order.
    """
    n = len(ts)
    if release is None:
        return np.zeros(n, dtype=np.int8), np.arange(n)
    label_rows = np.argsort(release, kind="stable")
    # Number of transactions at or before each label's release = transactions emitted before it.
    after_tx = np.searchsorted(ts, release[label_rows], side="right")
    # Position of every event in the merged sequence: a label sorts just after transaction after_tx-1.
    keys = np.concatenate([np.arange(n) * 2, after_tx * 2 - 1])
    kinds = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(n, dtype=np.int8)])
    rows = np.concatenate([np.arange(n), label_rows])
    order = np.argsort(keys, kind="stable")
    return kinds[order], rows[order]


def _select(frame, start: str | None, end: str | None, limit: int | None):
    """Window by inclusive days, stable sort by time, keep the first ``limit`` rows."""
    from fraudlite.data.transactions import format_day, parse_day

    ts = frame["ts"].to_numpy()
    day = ts // SECONDS_PER_DAY
    mask = np.ones(len(frame), dtype=bool)
    if start is not None:
        mask &= day >= parse_day(start, "--start")
    if end is not None:
        mask &= day <= parse_day(end, "--end")
    if start is not None and end is not None and parse_day(end, "--end") < parse_day(start, "--start"):
        raise ConfigError(f"--end {end} is before --start {start}")
    if not mask.any():
        raise DataError(
            f"no transactions between {start or 'the start'} and {end or 'the end'} "
            f"(the data covers {format_day(day.min())}..{format_day(day.max())})"
        )
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    if limit is not None:
        rows = rows[:limit]
    return frame.iloc[rows].reset_index(drop=True)


def _ensure_topics(admin, topics: list[str], partitions: int) -> list[str]:
    """Create the missing ones; returns the names created."""
    from kafka.errors import TopicAlreadyExistsError

    existing = set(admin.list_topics())
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if missing:
        spec = {t: {"num_partitions": partitions, "replication_factor": 1} for t in missing}
        try:
            admin.create_topics(spec, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass  # created concurrently
        logger.info("created topics %s partitions=%d", ",".join(missing), partitions)
    return missing


class _Partitioner:
    """Kafka's default keyed partitioning (murmur2, as the Java client), cached per key."""

    def __init__(self, producer, topic: str) -> None:
        from kafka.partitioner.default import murmur2

        self._murmur2 = murmur2
        self._partitions = sorted(producer.partitions_for(topic))
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        p = self._cache.get(key)
        if p is None:
            idx = (self._murmur2(key) & 0x7FFFFFFF) % len(self._partitions)
            p = self._cache[key] = self._partitions[idx]
        return p


class _Pacer:
    """Sleeps so that the i-th transaction leaves no earlier than ``start + i / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def wait(self, sent: int) -> None:
        if self.rate > 0:
            ahead = self.start + sent / self.rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)


def replay(
    data: str,
    columns: Mapping[str, str] | None = None,
    *,
    bootstrap_servers: str,
    topic: str = "transactions",
    rate: float = 0.0,
    limit: int | None = None,
    start: str | None = None,
    end: str | None = None,
    labels_topic: str | None = None,
    label_delay_days: int = 7,
    partitions: int = 4,
    kafka_config: Mapping[str, Any] | None = None,
    progress_every_s: float = 2.0,
) -> ReplayResult:
    """Produce a transactions file to Kafka in time order (and optionally its labels, late).

    Args:
        data: .csv or .parquet transactions file.
        columns: logical column name -> the file's column name.
        bootstrap_servers: ``host:port[,host:port]``.
        topic: transactions topic.
        rate: transactions per second; 0 = as fast as possible.
        limit: stop after this many transactions.
        start, end: inclusive UTC days ``YYYY-MM-DD`` to replay.
        labels_topic: also emit each label there, ``label_delay_days`` after its transaction's day.
        label_delay_days: label delay in days.
        partitions: partitions for topics this creates (existing topics are left as they are).
        kafka_config: extra kafka-python settings for the producer and admin (e.g. security).
        progress_every_s: seconds between progress log lines.

    Returns:
        The counts sent.

    Raises:
        ConfigError: a bad flag value.
        DataError: unreadable data, an empty window, or no label column with ``labels_topic``.
        UserError: no broker reachable at ``bootstrap_servers``.
        ReplayError: the broker failed some sends.
    """
    if rate < 0:
        raise ConfigError(f"--rate must be >= 0 (0 = as fast as possible), got {rate}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if label_delay_days < 0:
        raise ConfigError(f"--label-delay-days must be >= 0, got {label_delay_days}")
    if partitions < 1:
        raise ConfigError(f"--partitions must be >= 1, got {partitions}")
    if labels_topic is not None and labels_topic == topic:
        raise ConfigError("--labels-topic must differ from --topic")

    from fraudlite.data.transactions import load_transactions

    frame = load_transactions(data, dict(columns or {}), require_label=labels_topic is not None)
    frame = _select(frame, start, end, limit)
    n = len(frame)
    ts = frame["ts"].to_numpy(dtype=np.int64)
    tx_ids = frame["tx_id"].tolist()
    customers = frame["customer_id"].tolist()
    terminals = frame["terminal_id"].tolist()
    amounts = frame["amount"].tolist()
    labels = frame["label"].tolist() if labels_topic is not None else None
    release = label_release_ts(ts, label_delay_days) if labels_topic is not None else None
    kinds, rows = emission_order(ts, release)
    ts_ms = (ts * 1000).tolist()
    del frame

    config = dict(kafka_config or {})
    producer, admin = _connect(bootstrap_servers, config)
    failures: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        failures.append(exc)

    encode = msgspec.json.Encoder().encode
    sent_tx = sent_labels = 0
    t0 = time.monotonic()
    try:
        _ensure_topics(admin, [topic] + ([labels_topic] if labels_topic else []), partitions)
        pacer = _Pacer(rate)
        next_progress = t0 + progress_every_s
        send = producer.send
        tx_partition = _Partitioner(producer, topic)
        label_partition = _Partitioner(producer, labels_topic) if labels_topic else None
        for kind, i in zip(kinds.tolist(), rows.tolist(), strict=True):
            key = customers[i].encode("utf-8")
            if kind == 0:
                pacer.wait(sent_tx)
                value = encode(_Transaction(tx_ids[i], ts_ms[i], customers[i], terminals[i], amounts[i]))
                send(topic, value=value, key=key, partition=tx_partition(key)).add_errback(on_error)
                sent_tx += 1
                if sent_tx % 1024 == 0:
                    now = time.monotonic()
                    if now >= next_progress:
                        _progress(sent_tx, n, sent_labels, now - t0)
                        next_progress = now + progress_every_s
                    if failures:
                        break
            else:
                value = encode(_Label(tx_ids[i], customers[i], terminals[i], ts_ms[i], int(labels[i])))
                send(labels_topic, value=value, key=key, partition=label_partition(key)).add_errback(on_error)
                sent_labels += 1
        producer.flush()
    finally:
        producer.close()
        admin.close()
    seconds = time.monotonic() - t0
    if failures:
        raise ReplayError(f"{len(failures)} sends to {topic} failed; first: {failures[0]!r}")
    result = ReplayResult(sent_tx, sent_labels, seconds, topic, labels_topic)
    logger.info("%s", result.summary())
    return result


def _progress(sent: int, total: int, labels: int, elapsed: float) -> None:
    rate = sent / elapsed if elapsed > 0 else 0.0
    eta = (total - sent) / rate if rate > 0 else float("inf")
    logger.info(
        "replay sent=%d/%d (%.0f%%) labels=%d rate=%.0f tx/s eta=%.0fs",
        sent,
        total,
        100.0 * sent / total,
        labels,
        rate,
        eta,
    )


def _connect(bootstrap_servers: str, config: dict[str, Any]):
    """Producer (batched, idempotent) and admin client; UserError when no broker answers."""
    from kafka import KafkaAdminClient, KafkaProducer

    producer_config = {
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "bootstrap_timeout_ms": 10_000,
        "client_id": "fraudlite-replay",
    }
    producer_config.update(config)
    from fraudlite.kafkaio.clients import protect_secrets

    protect_secrets(None, config.get("sasl_plain_password"), config.get("ssl_password"))
    admin_keys = set(KafkaAdminClient.DEFAULT_CONFIG)
    admin_config = {k: v for k, v in producer_config.items() if k in admin_keys}
    admin = _client(KafkaAdminClient, bootstrap_servers, admin_config)
    try:
        producer = _client(KafkaProducer, bootstrap_servers, producer_config)
    except BaseException:
        admin.close()
        raise
    return producer, admin


def _client(factory, bootstrap_servers: str, config: dict[str, Any]):
    from kafka.errors import KafkaConfigurationError, KafkaConnectionError, KafkaTimeoutError

    try:
        return factory(bootstrap_servers=bootstrap_servers, **config)
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        raise UserError(f"--bootstrap-servers {bootstrap_servers}: no Kafka broker answered ({e})") from None
    except (KafkaConfigurationError, ValueError) as e:
        raise ConfigError(f"Kafka settings: {e}") from None
