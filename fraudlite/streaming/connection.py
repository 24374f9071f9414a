"""The Kafka side of a scorer session: its topics, its ``transactional.id`` and its clients.

Topics are created here (``ensure_serving_topics``), with their partition counts and configs, never
implicitly by a send: the output topics get as many partitions as the input (idempotent outputs need
them aligned), the changelog too (compacted), and so does the shadow model's decisions topic when a
shadow model is served. The client factories only fix the settings every scorer
uses; ``clients.ScorerClients`` owns the clients' lifecycle.
"""

from __future__ import annotations

import logging
import os

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from fraudlite.errors import UserError
from fraudlite.features.online import TerminalTable
from fraudlite.kafkaio.clients import (
    KafkaIOError,
    TopicSpec,
    claim_transactional_id,
    end_dead_transactions,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    protect_secrets,
)
from fraudlite.kafkaio.confluent import ConfluentConsumer, ConfluentProducer, librdkafka_config
from fraudlite.kafkaio.wire import LabelDecoder, TransactionDecoder
from fraudlite.streaming.config import CONFLUENT
from fraudlite.streaming.settings import ClientSettings
from fraudlite.streaming.terminal_feed import TerminalFeed

__all__ = [
    "TransactionalIdClaim",
    "ensure_serving_topics",
    "topics_lost",
    "check_changelog_partitions",
    "make_scorer_producer",
    "make_restore_reader",
    "make_end_reader",
    "make_terminal_feed",
    "make_group_consumer",
]

logger = logging.getLogger(__name__)

_NO_AUTO_CREATE = {"allow_auto_create_topics": False}


def ensure_serving_topics(settings: ClientSettings) -> tuple[dict[str, int], dict[str, str | None]]:
    """Create missing topics; return their partition counts and topic ids (None if not reported).

    Raises:
        KafkaIOError / KafkaError / OSError: the broker could not be reached.
    """
    cfg, topics = settings, settings.topics
    # A short first-contact timeout: the retry loop in Scorer.connect() reports and backs off instead of
    # kafka-python waiting 30 s in silence for a broker that is not there (yet).
    admin = make_admin(
        cfg.bootstrap_servers, cfg.security, client_id=f"{cfg.client_id}-admin", bootstrap_timeout_ms=5000
    )
    try:
        counts = ensure_topics(admin, [TopicSpec(topics.input, cfg.partitions)])
        n = counts[topics.input]
        specs = [TopicSpec(t, n) for t in (topics.output, topics.alerts, topics.dlq, topics.shadow) if t]
        if topics.labels:
            specs.append(TopicSpec(topics.labels, cfg.partitions))
        if topics.changelog:
            specs.append(TopicSpec(topics.changelog, n, {"cleanup.policy": "compact"}))
        counts.update(ensure_topics(admin, specs))
        ids = {
            m.get("name") or m.get("topic"): m.get("topic_id") for m in admin.describe_topics(sorted(counts))
        }
    finally:
        admin.close()
    return counts, ids


def topics_lost(settings: ClientSettings, known_ids: dict[str, str | None]) -> list[str] | None:
    """After the broker came back: the topics it lost (recreated with another id: the embedded broker
    keeps nothing across a restart; Kafka does); None when they could not be checked (yet)."""
    try:
        _, ids = ensure_serving_topics(settings)
    except (KafkaError, KafkaIOError, OSError) as e:
        logger.warning("checking topics after the outage failed (%s); retrying", e)
        return None
    return sorted(t for t, i in known_ids.items() if i is not None and ids.get(t) != i)


def check_changelog_partitions(settings: ClientSettings, counts: dict[str, int]) -> None:
    """Raises UserError when the changelog's partitions do not match the input's."""
    topics = settings.topics
    n = counts[topics.input]
    if topics.changelog and counts[topics.changelog] != n:
        raise UserError(
            f"changelog topic {topics.changelog} has {counts[topics.changelog]} partitions but the input "
            f"topic {topics.input} has {n}; they must match (delete the changelog or use another group id)"
        )


class TransactionalIdClaim:
    """The producer's ``transactional.id``, resolved once per scorer (a recreated producer reuses it,
    ending its predecessor's transaction): the configured one, else this host's first free slot
    (``kafkaio.clients.claim_transactional_id``), held until ``release``."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._id: str | None = settings.transactional_id
        self._fd: int | None = None

    def get(self) -> str:
        if self._id is None:
            cfg = self.settings
            try:
                self._id, self._fd = claim_transactional_id(cfg.group_id, cfg.bootstrap_servers)
            except OSError as e:
                self._id = cfg.fallback_transactional_id
                logger.warning(
                    "no stable transactional id (%s); using %s: after a crash, restarting does not end "
                    "this process's open transaction", e, self._id,
                )  # fmt: skip
            logger.info("transactional_id=%s", self._id)
        return self._id

    def end_dead_transactions(self) -> None:
        """A member died? End its open transaction before reading what it wrote (see kafkaio.clients)."""
        cfg = self.settings
        if not cfg.exactly_once or cfg.transactional_id or self._fd is None:
            return
        ended = end_dead_transactions(
            cfg.group_id, cfg.bootstrap_servers, cfg.security, client_id=cfg.client_id
        )
        if ended:
            logger.info("ended open transactions of stopped scorers on this host: %s", ", ".join(ended))

    def release(self) -> None:
        """Free the host slot (a claimed id is claimed anew by the next ``get``)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if not self.settings.transactional_id:
                self._id = None


def make_scorer_producer(settings: ClientSettings, transactional_id: str | None) -> KafkaProducer:
    """The outputs' producer: transactional with ``transactional_id`` (``init_transactions`` is the
    caller's), else a plain ``acks=all`` one. Like every client here it never creates a topic."""
    cfg = settings
    common = {"linger_ms": 5, "batch_size": 256 * 1024, "client_id": cfg.client_id, **_NO_AUTO_CREATE}
    if transactional_id is not None:
        kwargs = {"transactional_id": transactional_id, "transaction_timeout_ms": cfg.transaction_timeout_ms}
    else:
        kwargs = {"acks": "all"}
    if cfg.kafka_client == CONFLUENT:
        protect_secrets(cfg.security)
        conf = librdkafka_config(cfg.bootstrap_servers, cfg.security, producer=True, **kwargs, **common)
        return ConfluentProducer(conf)
    return make_producer(cfg.bootstrap_servers, cfg.security, **kwargs, **common)


def make_restore_reader(settings: ClientSettings) -> KafkaConsumer:
    """A group-less ``read_committed`` consumer for restores (changelog, replays, output scans)."""
    cfg = settings
    return make_consumer(
        cfg.bootstrap_servers, cfg.security, isolation_level="read_committed",
        client_id=f"{cfg.client_id}-restore", fetch_max_wait_ms=100, **_NO_AUTO_CREATE,
    )  # fmt: skip


def make_end_reader(settings: ClientSettings) -> KafkaConsumer:
    """A group-less consumer for end offsets."""
    cfg = settings
    return make_consumer(
        cfg.bootstrap_servers, cfg.security, client_id=f"{cfg.client_id}-offsets", **_NO_AUTO_CREATE
    )


def make_terminal_feed(
    settings: ClientSettings, terminals: TerminalTable, decoder: TransactionDecoder
) -> TerminalFeed:
    """The terminal feed over its own consumer (``assign`` is the caller's)."""
    cfg, topics = settings, settings.topics
    consumer = make_consumer(
        cfg.bootstrap_servers, cfg.security, isolation_level="read_committed",
        client_id=f"{cfg.client_id}-terminals", fetch_max_wait_ms=100, max_poll_records=100_000,
        **_NO_AUTO_CREATE,
    )  # fmt: skip
    return TerminalFeed(
        consumer, terminals, topics.input, topics.labels, decoder, LabelDecoder(cfg.limits), timeout_s=30.0
    )


def make_group_consumer(settings: ClientSettings) -> KafkaConsumer:
    """The group member's consumer (not subscribed yet)."""
    cfg = settings
    kwargs = dict(
        group_id=cfg.group_id, isolation_level="read_committed",
        auto_offset_reset=cfg.auto_offset_reset, session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_interval_ms=cfg.max_poll_interval_ms,
        max_poll_records=cfg.max_poll_records, fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        client_id=cfg.client_id, **_NO_AUTO_CREATE,
    )  # fmt: skip
    if cfg.kafka_client == CONFLUENT:
        protect_secrets(cfg.security)
        return ConfluentConsumer(
            librdkafka_config(cfg.bootstrap_servers, cfg.security, producer=False, **kwargs)
        )
    return make_consumer(cfg.bootstrap_servers, cfg.security, **kwargs)
