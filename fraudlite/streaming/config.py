"""Configuration of ``fraudlite serve``: frozen dataclasses, one per concern, validated on construction.

This is the one edge that turns ``fraudlite serve`` flags into a config (``build_serve_config``);
everything else receives dataclasses. Kafka security settings (``KafkaSecurity``) are read in
``fraudlite.kafkaio.security`` and the decode bounds (``DecodeLimits``) live with the wire format.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from fraudlite.errors import ConfigError
from fraudlite.kafkaio.confluent import require_confluent
from fraudlite.kafkaio.security import KafkaSecurity, kafka_security
from fraudlite.kafkaio.wire import DecodeLimits

__all__ = [
    "DELIVERY_MODES",
    "EXACTLY_ONCE",
    "AT_LEAST_ONCE",
    "KAFKA_CLIENTS",
    "Topics",
    "BatchConfig",
    "ServeConfig",
    "build_serve_config",
]

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
DELIVERY_MODES = (EXACTLY_ONCE, AT_LEAST_ONCE)
KAFKA_PYTHON = "kafka-python"
CONFLUENT = "confluent"
KAFKA_CLIENTS = (KAFKA_PYTHON, CONFLUENT)  # the group consumer's and the producer's library


def _topic_name(flag: str, name: str) -> None:
    # Kafka's own rule: 1..249 chars of [a-zA-Z0-9._-], not "." or "..".
    if (
        not name
        or len(name) > 249
        or name in (".", "..")
        or any(not (c.isalnum() or c in "._-") for c in name)
    ):
        raise ConfigError(
            f"{flag}: {name!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')"
        )


@dataclass(frozen=True)
class Topics:
    """Topic names. ``changelog`` defaults to ``<group id>-customer-state-changelog`` (see ServeConfig);
    ``shadow`` (the shadow model's decisions) is None unless a shadow model is served."""

    input: str = "transactions"
    output: str = "fraud-decisions"
    alerts: str = "fraud-alerts"
    dlq: str = "transactions-dlq"
    labels: str | None = "fraud-labels"
    changelog: str | None = None
    shadow: str | None = "decisions-shadow"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _topic_name(f"--{f.name.replace('_', '-')}-topic", value)
        every = (self.input, self.output, self.alerts, self.dlq, self.labels, self.changelog, self.shadow)
        names = [n for n in every if n]
        if len(set(names)) != len(names):
            raise ConfigError(
                "the input, output, alerts, DLQ, labels, changelog and shadow topics must be distinct"
            )


@dataclass(frozen=True)
class BatchConfig:
    """Micro-batching: a batch is whatever ``poll`` returns, up to ``max_records``, waiting at most ``max_ms``."""

    max_records: int = 2000
    max_ms: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.max_records <= 1_000_000:
            raise ConfigError(f"--batch-max-records must be in 1..1000000, got {self.max_records}")
        if not 1 <= self.max_ms <= 60_000:
            raise ConfigError(f"--batch-max-ms must be in 1..60000, got {self.max_ms}")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``fraudlite serve`` needs.

    Exactly one of ``model_dir`` (serve one model directory) and ``registry_dir`` (serve the registry's
    champion, hot-reloading promotions) is set. ``threshold``/``alert_threshold`` override the model's.
    ``metrics_port`` 0 picks a free port; ``None`` disables the HTTP endpoint. ``state_changelog`` False
    keeps customer state in memory only (it is then lost on restart/rebalance); otherwise the customers
    changed in the last ``changelog_interval_s`` go to the changelog with the next batch (0 = every
    batch), and a restore replays the input records committed since the last changelog record. ``dlq_envelope`` writes
    DLQ values as a JSON envelope instead of the original bytes; longer DLQ values are cut to
    ``dlq_max_value_bytes`` (headers say so: the producer could not send them whole). Alerts always
    carry reason codes; ``explain_all`` puts them on every decision too (``streaming.explain``).
    ``shadow_model_dir``: a second model scoring the same batches, its decisions to ``topics.shadow``
    (``streaming.shadow``). With a labels topic, late labels are joined to the decisions
    (``streaming.label_outcomes``): at most ``label_join_capacity`` decisions held (0 = no join), each
    for ``label_horizon_days`` of event time (None: the model's ``delay_days`` + 1).
    """

    bootstrap_servers: str
    model_dir: Path | None = None
    registry_dir: Path | None = None
    topics: Topics = field(default_factory=Topics)
    group_id: str = "fraudlite-scorer"
    partitions: int = 4
    batch: BatchConfig = field(default_factory=BatchConfig)
    delivery: str = EXACTLY_ONCE
    threshold: float | None = None
    alert_threshold: float | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = 60_000
    transactional_id: str | None = None
    client_id: str = "fraudlite-scorer"
    state_changelog: bool = True
    changelog_interval_s: float = 1.0
    dlq_envelope: bool = False
    dlq_max_value_bytes: int = 512 * 1024
    auto_offset_reset: str = "earliest"
    reload_interval_s: float = 5.0
    lag_interval_s: float = 5.0
    explain_all: bool = False
    shadow_model_dir: Path | None = None
    label_join_capacity: int = 200_000
    label_horizon_days: int | None = None
    kafka_client: str = KAFKA_PYTHON

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or any(
            not hp.rpartition(":")[2].isdigit() for hp in self.bootstrap_servers.split(",")
        ):
            raise ConfigError(f"--bootstrap-servers: expected H:P[,H:P...], got {self.bootstrap_servers!r}")
        if (self.model_dir is None) == (self.registry_dir is None):
            raise ConfigError("give exactly one of --model DIR and --registry DIR")
        for name in ("model_dir", "registry_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_dir():
                    flag = "--model" if name == "model_dir" else "--registry"
                    raise ConfigError(f"{flag}: not a directory: {value}")
        if not self.group_id or len(self.group_id) > 200:
            raise ConfigError(f"--group-id: must be 1..200 characters, got {self.group_id!r}")
        if self.topics.changelog is None and self.state_changelog:
            changelog = f"{self.group_id}-customer-state-changelog"
            object.__setattr__(self, "topics", replace(self.topics, changelog=changelog))
        if not 1 <= self.partitions <= 10_000:
            raise ConfigError(f"--partitions must be in 1..10000, got {self.partitions}")
        if self.delivery not in DELIVERY_MODES:
            raise ConfigError(f"--delivery must be one of {', '.join(DELIVERY_MODES)}, got {self.delivery!r}")
        for name in ("threshold", "alert_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        if not self.metrics_host:
            raise ConfigError("--metrics-host must not be empty")
        if not 1000 <= self.session_timeout_ms <= 3_600_000:
            raise ConfigError(f"session_timeout_ms must be in 1000..3600000, got {self.session_timeout_ms}")
        if not 100 <= self.heartbeat_interval_ms < self.session_timeout_ms:
            raise ConfigError("heartbeat_interval_ms must be >= 100 and below session_timeout_ms")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ConfigError("max_poll_interval_ms must be >= session_timeout_ms")
        if not 1000 <= self.transaction_timeout_ms <= 900_000:
            raise ConfigError(
                f"transaction_timeout_ms must be in 1000..900000, got {self.transaction_timeout_ms}"
            )
        if not 1024 <= self.dlq_max_value_bytes <= 700_000:  # base64 envelope must stay < 1 MB requests
            raise ConfigError(f"dlq_max_value_bytes must be in 1024..700000, got {self.dlq_max_value_bytes}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(f"auto_offset_reset must be earliest or latest, got {self.auto_offset_reset!r}")
        if not 0 <= self.changelog_interval_s <= 3600:
            raise ConfigError(f"changelog_interval_s must be in 0..3600, got {self.changelog_interval_s}")
        if self.reload_interval_s <= 0 or self.lag_interval_s <= 0:
            raise ConfigError("reload_interval_s and lag_interval_s must be > 0")
        if self.kafka_client not in KAFKA_CLIENTS:
            raise ConfigError(
                f"--kafka-client must be one of {', '.join(KAFKA_CLIENTS)}, got {self.kafka_client!r}"
            )
        self._check_shadow_and_labels()

    def _check_shadow_and_labels(self) -> None:
        if self.shadow_model_dir is None:
            if self.topics.shadow is not None:
                object.__setattr__(self, "topics", replace(self.topics, shadow=None))
        else:
            object.__setattr__(self, "shadow_model_dir", Path(self.shadow_model_dir))
            if not self.shadow_model_dir.is_dir():
                raise ConfigError(f"--shadow-model: not a directory: {self.shadow_model_dir}")
            if self.topics.shadow is None:
                raise ConfigError("--shadow-topic: a shadow model needs a topic for its decisions")
        if not 0 <= self.label_join_capacity <= 100_000_000:
            raise ConfigError(f"--label-join-capacity must be in 0..1e8, got {self.label_join_capacity}")
        if self.label_horizon_days is not None and not 1 <= self.label_horizon_days <= 3650:
            raise ConfigError(f"--label-horizon-days must be in 1..3650, got {self.label_horizon_days}")

    def label_join(self, delay_days: int) -> tuple[int, int] | None:
        """``(capacity, horizon in s)`` of the late-label join for a model with ``delay_days``; None
        without a labels topic or with ``label_join_capacity`` 0."""
        if self.topics.labels is None or self.label_join_capacity == 0:
            return None
        return self.label_join_capacity, (self.label_horizon_days or delay_days + 1) * 86_400

    @property
    def exactly_once(self) -> bool:
        return self.delivery == EXACTLY_ONCE

    @property
    def idempotent_outputs(self) -> bool:
        """Skip outputs a crashed predecessor already wrote (``idempotence``): needs transactions and the
        changelog, where the ``positions`` records live."""
        return self.exactly_once and self.state_changelog

    def resolved_transactional_id(self) -> str:
        """The producer's ``transactional.id``: the configured one, else unique per process.

        A stable id per replica (e.g. a StatefulSet pod name) lets a restarted scorer fence its crashed
        predecessor's open transaction at once instead of waiting for ``transaction_timeout_ms``.
        """
        if self.transactional_id:
            return self.transactional_id
        return f"{self.group_id}-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def build_serve_config(args, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """``fraudlite serve`` flags (an argparse namespace) + ``FRAUDLITE_KAFKA_*`` environment -> ServeConfig.

    Security settings: ``--kafka-config FILE`` first, then the environment on top. The Kafka client:
    ``--kafka-client``, else ``FRAUDLITE_KAFKA_CLIENT``, else kafka-python.

    Raises:
        ConfigError: any invalid flag or setting (the message names it).
        UserError: ``--kafka-client confluent`` without confluent-kafka installed.
    """
    env = os.environ if environ is None else environ
    security = kafka_security(getattr(args, "kafka_config", None), environ)
    shadow_topic = getattr(args, "shadow_topic", Topics.shadow) or None
    topics = Topics(
        input=args.input_topic,
        output=args.output_topic,
        alerts=args.alerts_topic,
        dlq=args.dlq_topic,
        labels=args.labels_topic or None,
        changelog=args.changelog_topic or None,
        # only with a shadow model: the default name then never collides with the other topics
        shadow=shadow_topic if getattr(args, "shadow_model", None) else None,
    )
    first, last = _event_time_range(getattr(args, "event_time_range", None))
    limits = DecodeLimits(
        max_message_bytes=args.max_message_bytes,
        max_amount=args.max_amount,
        max_id_chars=getattr(args, "max_id_chars", DecodeLimits.max_id_chars),
        min_timestamp_s=first,
        max_timestamp_s=last,
    )
    config = ServeConfig(
        bootstrap_servers=args.bootstrap_servers,
        model_dir=args.model,
        registry_dir=args.registry,
        topics=topics,
        group_id=args.group_id,
        partitions=args.partitions,
        batch=BatchConfig(max_records=args.batch_max_records, max_ms=args.batch_max_ms),
        delivery=args.delivery,
        threshold=args.threshold,
        alert_threshold=args.alert_threshold,
        metrics_host=args.metrics_host,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        security=security,
        limits=limits,
        session_timeout_ms=args.session_timeout_ms,
        transactional_id=args.transactional_id,
        state_changelog=not args.no_changelog,
        dlq_envelope=args.dlq_envelope,
        dlq_max_value_bytes=getattr(args, "dlq_max_value_bytes", ServeConfig.dlq_max_value_bytes),
        reload_interval_s=args.reload_interval,
        explain_all=getattr(args, "explain_all", False),
        shadow_model_dir=getattr(args, "shadow_model", None),
        label_join_capacity=getattr(args, "label_join_capacity", ServeConfig.label_join_capacity),
        label_horizon_days=getattr(args, "label_horizon_days", None),
        kafka_client=getattr(args, "kafka_client", None) or env.get("FRAUDLITE_KAFKA_CLIENT") or KAFKA_PYTHON,
    )
    if config.kafka_client == CONFLUENT:
        require_confluent()  # not installed: a clear error before anything starts
    return config


def _event_time_range(text: str | None) -> tuple[int, int]:
    """``--event-time-range FIRST..LAST`` (UTC days, inclusive) -> epoch-second bounds."""
    if not text:
        return DecodeLimits.min_timestamp_s, DecodeLimits.max_timestamp_s
    first, sep, last = text.partition("..")
    try:
        lo = datetime.strptime(first.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
        hi = datetime.strptime(last.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        sep = ""
    if not sep:
        raise ConfigError(f"--event-time-range: expected YYYY-MM-DD..YYYY-MM-DD, got {text!r}")
    return int(lo.timestamp()), int(hi.timestamp()) + 86_399
