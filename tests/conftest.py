"""Shared fixtures: one real embedded Kafka broker per test session, topic and read helpers.

Used by tests/streaming and tests/deploy (anything that needs a broker asks for ``broker``).

* ``broker``: session-scoped ``EmbeddedBroker`` (``.bootstrap`` is ``"127.0.0.1:PORT"``).
* ``make_topic(partitions=4, name=None) -> str``: creates a topic (unique name unless given) and waits
  until its partitions have leaders.
* ``consume_all(topic, *, isolation_level="read_committed", min_count=0, timeout_s=20) -> list[ConsumerRecord]``:
  every record of every partition from the beginning up to the end offsets (the last stable offsets under
  read_committed), waiting until at least ``min_count`` records are there. Records are ordered by
  (partition, offset).

Broker caveats (Tansu 0.6, checked here): read_committed hides records of *open* transactions but NOT of
aborted ones (its Fetch responses carry no aborted_transactions list), and ListOffsets under
read_committed answers 0 while a transaction is open. Pass ``min_count`` to wait for records.
* ``kafka_admin``: a session-scoped ``KafkaAdminClient``.

Topics live only in memory (Tansu), so give each test its own topics instead of cleaning up. The broker
module is imported inside the fixture, so collecting tests that need no broker does not import it.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fraudlite.streaming.broker import EmbeddedBroker

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded broker shared by the whole test session."""
    from fraudlite.streaming.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def kafka_admin(broker: EmbeddedBroker):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="fraudlite-tests-admin")
    yield admin
    admin.close()


def create_topic(admin, name: str, partitions: int = 4) -> str:
    """Create ``name`` with ``partitions`` partitions (replication 1) and wait for its metadata."""
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
    )
    return name


@pytest.fixture
def make_topic(kafka_admin, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``make_topic(partitions=4, name=None) -> topic name`` (unique per call by default)."""

    def make(partitions: int = 4, name: str | None = None) -> str:
        if name is None:
            test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
            name = f"{test}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        return create_topic(kafka_admin, name, partitions)

    return make


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: str = "read_committed",
    min_count: int = 0,
    timeout_s: float = 20.0,
) -> list:
    """All records of ``topic`` from offset 0 to its current end offsets, sorted by (partition, offset).

    Waits (polling end offsets) until at least ``min_count`` records were read or ``timeout_s`` passes;
    then returns what it has (the caller asserts on the count).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="fraudlite-tests-reader",
        fetch_max_wait_ms=100,
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic!r} does not exist")
                time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        while True:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
            if time.monotonic() > deadline:
                break
            if len(records) < min_count:
                continue
            # Under read_committed Tansu reports a bogus end offset (0) while a transaction is open, so
            # the end offsets only decide "done" once min_count is reached.
            ends = consumer.end_offsets(tps)
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


@pytest.fixture
def consume_all(broker: EmbeddedBroker) -> Callable[..., list]:
    """Factory: ``consume_all(topic, *, isolation_level="read_committed", min_count=0, timeout_s=20)``."""

    def consume(
        topic: str, *, isolation_level: str = "read_committed", min_count: int = 0, timeout_s: float = 20.0
    ) -> list:
        return read_topic(
            broker.bootstrap, topic, isolation_level=isolation_level, min_count=min_count, timeout_s=timeout_s
        )

    return consume
