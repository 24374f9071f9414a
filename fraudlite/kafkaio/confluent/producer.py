"""librdkafka's producer with the kafka-python calls of the scorer (``kafkaio.confluent``): transactions,
``send`` returning a future-like outcome, ``send_many`` with one outcome per run of records (the scorer's
``kafkaio.bulk_send`` path), ``flush``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from fraudlite.kafkaio.confluent.config import kafka_error, librdkafka_tp, require_confluent

__all__ = ["ConfluentProducer"]


class _Delivery:
    """The outcome of one or more records' sends, with the future interface ``checkpoint`` reads: ``failed()``,
    ``succeeded()``, ``exception``, ``value.offset`` (the offset of the last record delivered)."""

    __slots__ = ("pending", "exception", "offset")

    def __init__(self) -> None:
        self.pending = 0
        self.exception: KafkaError | None = None
        self.offset = -1

    def __call__(self, err, msg) -> None:  # librdkafka's delivery callback, one per record
        self.pending -= 1
        if err is not None:
            if self.exception is None:
                self.exception = KafkaError(f"delivery to {msg.topic()}[{msg.partition()}]: {err.str()}")
        elif msg.offset() > self.offset:
            self.offset = msg.offset()

    @property
    def value(self) -> _Delivery:
        return self

    def failed(self) -> bool:
        return self.pending == 0 and self.exception is not None

    def succeeded(self) -> bool:
        return self.pending == 0 and self.exception is None


class ConfluentProducer:
    """A librdkafka producer with the kafka-python calls of the scorer (see the module docstring)."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._ck = require_confluent()
        self._p = self._ck.Producer(dict(conf))
        self._timeout_s = float(conf.get("transaction.timeout.ms", 60_000)) / 1000

    def _produce(self, topic: str, value, key, headers, partition: int, delivery: _Delivery) -> None:
        delivery.pending += 1
        while True:
            try:
                self._p.produce(topic, value, key, partition, on_delivery=delivery, headers=headers)
                return
            except BufferError:  # the local queue is full: deliver some first
                self._p.poll(0.05)
            except self._ck.KafkaException as e:
                delivery.pending -= 1
                raise kafka_error(e, f"produce to {topic}") from e

    def send(self, topic: str, value=None, key=None, headers=None, partition: int | None = None) -> _Delivery:
        future = _Delivery()
        self._produce(topic, value, key, headers, -1 if partition is None else partition, future)
        return future

    def send_many(
        self, topic: str, partition: int, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[_Delivery]:
        """Send ``values`` (with ``keys``) to ``topic[partition]`` in order; one outcome for all of them."""
        future = _Delivery()
        for key, value in zip(keys, values, strict=True):
            self._produce(topic, value, key, None, partition, future)
        self._p.poll(0)
        return [future]

    def flush(self, timeout: float | None = None) -> None:
        """Deliver every queued record (their outcomes are set).

        Raises:
            KafkaTimeoutError: records were still queued after ``timeout`` seconds.
        """
        left = self._p.flush(self._timeout_s if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"flush: {left} records not delivered")

    def init_transactions(self) -> None:
        self._call("init_transactions", self._p.init_transactions, self._timeout_s)

    def begin_transaction(self) -> None:
        self._call("begin_transaction", self._p.begin_transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, Any], group_metadata) -> None:
        parts = [librdkafka_tp(tp, o.offset) for tp, o in offsets.items()]
        self._call("send_offsets_to_transaction", self._p.send_offsets_to_transaction, parts, group_metadata,
                   self._timeout_s)  # fmt: skip

    def commit_transaction(self) -> None:
        self._call("commit_transaction", self._p.commit_transaction, self._timeout_s)
        self._p.poll(0)  # the records' outcomes, for the positions noted after the commit

    def abort_transaction(self) -> None:
        self._call("abort_transaction", self._p.abort_transaction, self._timeout_s)
        self._p.poll(0)

    def partitions_for(self, topic: str) -> set[int]:
        meta = self._call("metadata", self._p.list_topics, topic, timeout=30)
        return set(meta.topics[topic].partitions)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within ``timeout`` seconds (0: give up on it); the handle is freed with the
        object."""
        self._p.flush(self._timeout_s if timeout is None else timeout)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._ck.KafkaException as e:
            raise kafka_error(e, what) from e
