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
* ``train_small(name, max_epochs) -> (data, model)``: a small generated Parquet file (300 customers, 600
  terminals, 75 days from 2026-01-01) and an MLP trained on 2026-01-31..2026-02-28 (tests/compression,
  tests/reliability; no broker).

Topics live only in memory (Tansu), so give each test its own topics instead of cleaning up. The broker
module is imported inside the fixture, so collecting tests that need no broker does not import it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fraudlite.kafkaio.broker import EmbeddedBroker

_counter = itertools.count()


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request) -> str:
    """The library of the scorer's group consumer and producer (``serve --kafka-client``): a test that
    takes this fixture runs once with each."""
    return request.param


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded broker shared by the whole test session."""
    from fraudlite.kafkaio.broker import EmbeddedBroker

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


@pytest.fixture
def consume_all(broker: EmbeddedBroker) -> Callable[..., list]:
    """Factory: ``consume_all(topic, *, isolation_level="read_committed", min_count=0, timeout_s=20)``."""

    def consume(
        topic: str, *, isolation_level: str = "read_committed", min_count: int = 0, timeout_s: float = 20.0
    ) -> list:
        from fraudlite.testing.streaming import read_topic

        return read_topic(
            broker.bootstrap, topic, isolation_level=isolation_level, min_count=min_count, timeout_s=timeout_s
        )

    return consume


@pytest.fixture(scope="session")
def train_small(tmp_path_factory) -> Callable[[str, int], tuple[Path, Path]]:
    """Factory: ``train_small(name, max_epochs) -> (data .parquet, model dir)`` in a fresh temp dir."""

    def make(name: str, max_epochs: int) -> tuple[Path, Path]:
        from fraudlite.cli.foundation_commands import generate, train

        root = tmp_path_factory.mktemp(name)
        data = root / "tx.parquet"
        assert generate(str(data), 300, 600, 75, "2026-01-01", 7) == 0
        model = root / "model"
        assert train(str(data), {}, "2026-01-31", "2026-02-28", str(model), max_epochs=max_epochs) == 0
        return data, model

    return make
