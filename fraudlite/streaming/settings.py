"""The scorer's settings as its collaborators see them: small frozen views, built once from a ServeConfig.

Each collaborator gets only what it reads, so none of them depends on the whole ``ServeConfig`` (the
scorer builds them: ``scorer_settings``):

* ``ClientSettings``: how the Kafka clients reach the broker and which topics they create
  (``connection``, ``clients``);
* ``OutputSettings``: where and how a batch's outputs are written (``batch_output``);
* ``CheckpointSettings``: how a batch's transaction is committed (``checkpoint``);
* ``RestoreSettings``: how an assigned partition is rebuilt and positioned (``assignment``).

In all of them ``topics.changelog`` is None when the state changelog is off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fraudlite.kafkaio.security import KafkaSecurity
from fraudlite.kafkaio.wire import DecodeLimits
from fraudlite.streaming.config import KAFKA_PYTHON, ServeConfig, Topics

__all__ = [
    "ClientSettings",
    "OutputSettings",
    "CheckpointSettings",
    "RestoreSettings",
    "ScorerSettings",
    "scorer_settings",
]


@dataclass(frozen=True)
class ClientSettings:
    """What the scorer's Kafka clients are made with.

    Attributes:
        partitions: partition count of an input (or labels) topic created here.
        limits: decode bounds of the terminal feed's label decoder.
        transactional_id: the configured ``transactional.id`` (None: claim a host slot).
        fallback_transactional_id: the id used when no host slot can be claimed (unique per process).
        max_poll_records, fetch_max_wait_ms: the group consumer's fetch sizes.
        kafka_client: the library of the group consumer and the producer (``kafka-python`` or
            ``confluent``: librdkafka through ``kafkaio.confluent``); the other clients are kafka-python's.
    """

    bootstrap_servers: str
    security: KafkaSecurity
    client_id: str
    group_id: str
    topics: Topics
    partitions: int
    limits: DecodeLimits
    exactly_once: bool
    transactional_id: str | None
    fallback_transactional_id: str
    transaction_timeout_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    max_poll_interval_ms: int
    auto_offset_reset: str
    max_poll_records: int
    fetch_max_wait_ms: int
    kafka_client: str = KAFKA_PYTHON


@dataclass(frozen=True)
class OutputSettings:
    """Where a batch's outputs go (``batch_output.send_outputs``).

    Attributes:
        idempotent: write ``positions`` records and skip outputs a crashed predecessor already wrote
            (``idempotence``: exactly-once with the changelog).
        dlq_envelope: DLQ values as a JSON envelope instead of the original bytes.
        dlq_max_value_bytes: longer DLQ values are cut.
    """

    topics: Topics
    idempotent: bool
    dlq_envelope: bool
    dlq_max_value_bytes: int

    @property
    def track_changes(self) -> bool:
        """Note the customers each batch changes (the next changelog record carries them)."""
        return self.topics.changelog is not None


@dataclass(frozen=True)
class CheckpointSettings:
    """How a batch's transaction is committed (``checkpoint.Checkpoint``).

    Attributes:
        changelog_topic: where changed customer state goes; None: state in memory only.
        changelog_interval_s: a changelog record goes with the first batch this long after the last one.
    """

    exactly_once: bool
    changelog_topic: str | None
    changelog_interval_s: float


@dataclass(frozen=True)
class RestoreSettings:
    """How an assigned partition is rebuilt and positioned (``assignment.PartitionRestorer``).

    Attributes:
        idempotent: scan the output partitions for what a predecessor already wrote.
        auto_offset_reset: where a partition without a committed offset starts.
        max_records: an uncommitted batch covers at most this many records of a partition.
        timeout_s: reading a partition to its end may wait this long (an open transaction blocks it).
    """

    topics: Topics
    idempotent: bool
    auto_offset_reset: str
    max_records: int
    timeout_s: float


@dataclass(frozen=True)
class ScorerSettings:
    """All of the above, built together (``scorer_settings``)."""

    clients: ClientSettings
    outputs: OutputSettings
    checkpoint: CheckpointSettings
    restore: RestoreSettings


def scorer_settings(config: ServeConfig) -> ScorerSettings:
    """The settings each collaborator of a scorer gets (``settings``), from ``config``."""
    cfg = config
    topics = cfg.topics if cfg.state_changelog else replace(cfg.topics, changelog=None)
    clients = ClientSettings(
        bootstrap_servers=cfg.bootstrap_servers, security=cfg.security, client_id=cfg.client_id,
        group_id=cfg.group_id, topics=topics, partitions=cfg.partitions, limits=cfg.limits,
        exactly_once=cfg.exactly_once, transactional_id=cfg.transactional_id,
        fallback_transactional_id=cfg.resolved_transactional_id(),
        transaction_timeout_ms=cfg.transaction_timeout_ms, session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_interval_ms=cfg.max_poll_interval_ms,
        auto_offset_reset=cfg.auto_offset_reset, max_poll_records=cfg.batch.max_records,
        fetch_max_wait_ms=min(cfg.batch.max_ms, 500), kafka_client=cfg.kafka_client,
    )  # fmt: skip
    return ScorerSettings(
        clients=clients,
        outputs=OutputSettings(topics, cfg.idempotent_outputs, cfg.dlq_envelope, cfg.dlq_max_value_bytes),
        checkpoint=CheckpointSettings(cfg.exactly_once, topics.changelog, cfg.changelog_interval_s),
        restore=RestoreSettings(
            topics,
            idempotent=cfg.idempotent_outputs,
            auto_offset_reset=cfg.auto_offset_reset,
            max_records=cfg.batch.max_records,
            timeout_s=cfg.transaction_timeout_ms / 1000 + 30,
        ),
    )
