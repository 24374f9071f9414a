"""Send many records to one partition at a fraction of ``KafkaProducer.send``'s per-record cost.

Why: the scorer produces one decision per transaction, and in kafka-python most of a record's cost is
``send``'s per-call bookkeeping that is the same for every record of a batch -- argument and header
checks, serializer lookup, metadata and partitioner, size estimate, transaction registration, a debug
log call that formats the producer -- on top of the record accumulator's append. ``send_many`` does
that bookkeeping once per (topic, partition) run and appends each record to the accumulator directly:
the same record batches, futures, transaction and delivery semantics as calling ``send`` in a loop.

It relies on kafka-python 3.0's producer internals (``_accumulator``, ``_transaction_manager``,
``_sender``, ``_metadata``); the version is pinned in ``pyproject.toml`` and a test compares this
path with ``send`` on the real broker. With any other producer object it falls back to ``send``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer, TopicPartition
from kafka.errors import IllegalStateError

__all__ = ["send_many", "supports_bulk"]

_NO_HEADERS: list = []  # never mutated: the accumulator only reads a record's headers


def supports_bulk(producer: object) -> bool:
    """True when ``producer`` has the kafka-python internals ``send_many`` appends through."""
    return isinstance(producer, KafkaProducer) and all(
        hasattr(producer, name)
        for name in (
            "_accumulator",
            "_transaction_manager",
            "_sender",
            "_metadata",
            "_closed",
            "_wait_on_metadata",
            "_estimate_size_in_bytes",
            "_ensure_valid_record_size",
        )  # fmt: skip
    )


def send_many(
    producer: KafkaProducer,
    topic: str,
    partition: int,
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
) -> list:
    """Send ``values`` (with ``keys``; a None value is a tombstone) to ``topic[partition]`` in order.

    Returns:
        One future per record batch the records went into (records of a batch share its outcome), the
        last record's future last; empty if there were no records.

    Raises:
        The errors ``send`` raises for the same records (closed producer, metadata timeout, a record
        too large, a send outside a transaction on a transactional producer).
    """
    if not values:
        return []
    if hasattr(producer, "send_many"):  # an adapter with its own (kafkaio.confluent)
        return producer.send_many(topic, partition, keys, values)
    if not supports_bulk(producer):
        return [
            producer.send(topic, value=v, key=k, partition=partition)
            for k, v in zip(keys, values, strict=True)
        ]
    if producer._closed:
        raise IllegalStateError("KafkaProducer already closed!")
    partitions = producer._metadata.partitions_for_topic(topic)
    if partitions is None:
        partitions = producer._wait_on_metadata(topic, producer.config["max_block_ms"])
    if partition not in partitions:
        raise ValueError(f"topic {topic} has no partition {partition}")
    if any(v is None and k is None for k, v in zip(keys, values, strict=True)):
        raise ValueError("Need at least one: key or value")  # send's message for a keyless tombstone
    # The biggest record decides whether any is too large (what send checks record by record).
    longest = max(range(len(values)), key=lambda i: len(values[i] or b"") + len(keys[i] or b""))
    producer._ensure_valid_record_size(producer._estimate_size_in_bytes(keys[longest], values[longest], []))

    tp = TopicPartition(topic, partition)
    manager = producer._transaction_manager
    if manager is not None and manager.is_transactional():
        manager.maybe_add_partition_to_transaction(tp)
    append = producer._accumulator.append
    wakeup = producer._sender.wakeup
    batch_futures = []
    future = None
    for key, value in zip(keys, values, strict=True):
        previous = future
        future, full, new_batch, _ = append(tp, None, key, value, _NO_HEADERS)
        if new_batch and previous is not None:
            batch_futures.append(previous)  # the last record of the batch before this one
        if full or new_batch:
            wakeup()
    batch_futures.append(future)
    return batch_futures
