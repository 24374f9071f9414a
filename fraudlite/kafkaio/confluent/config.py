"""librdkafka (PyPI ``confluent-kafka``) behind the kafka-python calls the scorer makes (``serve --kafka-client
confluent``): the settings, errors and partitions both sides share.

Only the hot path goes through librdkafka: the group member's consumer and the outputs' producer
(``consumer.ConfluentConsumer``, ``producer.ConfluentProducer``). Topic administration, restores, end
offsets and the terminal feed stay on kafka-python: they speak the same protocol to the same broker, and a
transaction's ``send_offsets_to_transaction`` only needs the group metadata of the consumer the producer
pairs with. Each adapter answers the kafka-python methods the streaming package calls, with kafka-python's
types (``TopicPartition``, ``{tp: [record]}`` from ``poll``, futures from ``send``) and errors
(``KafkaError`` subclasses, ``kafka_error``), so ``checkpoint``, ``assignment`` and ``flow`` run unchanged.

librdkafka's own log lines (errors only) go to the ``fraudlite.kafkaio.librdkafka`` logger, without its
reconnect attempts while a broker is away: the scorer's health probe reports an outage once.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
)

from fraudlite.errors import UserError
from fraudlite.kafkaio.security import KafkaSecurity

__all__ = ["require_confluent", "librdkafka_config", "kafka_error", "librdkafka_tp"]


class _QuietReconnects(logging.Filter):
    """Drops librdkafka's reconnect attempts ("Connect to ... failed: Connection refused", "Disconnected")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Connection refused" not in message and "Disconnected" not in message


_LIBRDKAFKA_LOG = logging.getLogger("fraudlite.kafkaio.librdkafka")
_LIBRDKAFKA_LOG.addFilter(_QuietReconnects())


def require_confluent():
    """The ``confluent_kafka`` module.

    Raises:
        UserError: it is not installed.
    """
    try:
        import confluent_kafka
    except ImportError:
        raise UserError(
            "--kafka-client confluent needs the optional package confluent-kafka: "
            "pip install 'fraudlite[confluent]'"
        ) from None
    return confluent_kafka


# kafka-python keyword -> librdkafka property (values as they are).
_KEYS = {
    "client_id": "client.id",
    "group_id": "group.id",
    "isolation_level": "isolation.level",
    "auto_offset_reset": "auto.offset.reset",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "enable_auto_commit": "enable.auto.commit",
    "allow_auto_create_topics": "allow.auto.create.topics",
    "linger_ms": "linger.ms",
    "acks": "acks",
    "transactional_id": "transactional.id",
    "transaction_timeout_ms": "transaction.timeout.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}
_PRODUCER_ONLY = {"linger.ms", "acks", "transactional.id", "transaction.timeout.ms", "batch.size"}


def librdkafka_config(bootstrap: str, security: KafkaSecurity, producer: bool, **kwargs) -> dict:
    """librdkafka properties for the kafka-python keywords the client factories pass.

    Raises:
        ValueError: a keyword without a librdkafka equivalent here (a new factory setting to map).
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "socket.nagle.disable": True,
        "log_level": 3, "logger": _LIBRDKAFKA_LOG,  # errors only, through logging (served by poll)
    }  # fmt: skip
    items = {**security.client_kwargs(), **kwargs}
    check_hostname = items.pop("ssl_check_hostname", None)
    if check_hostname is not None:
        conf["ssl.endpoint.identification.algorithm"] = "https" if check_hostname else "none"
    batch_size = items.pop("batch_size", None)
    if batch_size is not None:
        conf["batch.size"] = int(batch_size)
    items.pop("max_poll_records", None)  # a poll argument in librdkafka (consume's num_messages)
    for key, value in items.items():
        if key not in _KEYS:
            raise ValueError(f"no librdkafka equivalent for the kafka-python setting {key}")
        conf[_KEYS[key]] = value
    if producer:
        conf.pop("allow.auto.create.topics", None)  # a consumer property in librdkafka
    else:
        conf = {k: v for k, v in conf.items() if k not in _PRODUCER_ONLY}
        conf.setdefault("enable.auto.commit", False)
        conf["enable.auto.offset.store"] = False
    return conf


def kafka_error(exc: Exception, what: str) -> KafkaError:
    """kafka-python's error for a librdkafka ``KafkaException`` (the scorer catches ``KafkaError``)."""
    ck = require_confluent()
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if err is None:
        return KafkaError(f"{what}: {exc}")
    code = err.code()
    E = ck.KafkaError
    if code in (E._FENCED, E.PRODUCER_FENCED, E.INVALID_PRODUCER_EPOCH):
        cls = ProducerFencedError
    elif code in (E._TIMED_OUT, E._MSG_TIMED_OUT, E.REQUEST_TIMED_OUT):
        cls = KafkaTimeoutError
    elif code in (E._TRANSPORT, E._ALL_BROKERS_DOWN):
        cls = KafkaConnectionError
    elif code in (E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID, E.REBALANCE_IN_PROGRESS):
        cls = CommitFailedError
    elif code == E._STATE:
        cls = IllegalStateError
    else:
        cls = KafkaError
    return cls(f"{what}: {err.str()}")


def librdkafka_tp(tp: TopicPartition, offset: int | None = None):
    ck = require_confluent()
    return (
        ck.TopicPartition(tp.topic, tp.partition)
        if offset is None
        else ck.TopicPartition(tp.topic, tp.partition, offset)
    )
