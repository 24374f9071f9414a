"""Fixtures of the reliability suite (issue 7): a real embedded broker for the session, a small model and
topic factories. Helpers shared with the benchmarks live in ``fraudlite.testing.reliability``.

* ``rel_broker``: the session's shared embedded broker (``broker`` in tests/conftest.py); the broker
  fault test runs its own on a fixed port.
* ``rel_model``: a model directory (random MLP scaled to ``rel_data``'s features).
* ``rel_topics(partitions=4) -> Topics``: fresh input and labels topics (created) and unique output names.
* ``serve_client``: the test runs once per Kafka client library (``kafka_client``); ``fraudlite serve``
  subprocesses get it through ``FRAUDLITE_KAFKA_CLIENT``.
"""

from __future__ import annotations

import pytest

from fraudlite.testing.reliability import (  # noqa: E402
    create_topics,
    feature_stats,
    make_transactions,
    unique_topics,
    write_model,
)


@pytest.fixture(scope="session")
def rel_broker(broker):
    return broker


@pytest.fixture(scope="session")
def rel_data():
    return make_transactions(4000, customers=300, terminals=200, days=30, seed=11)


@pytest.fixture(scope="session")
def rel_model(tmp_path_factory, rel_data):
    return write_model(tmp_path_factory.mktemp("rel-model") / "m", stats=feature_stats(rel_data), seed=1)


@pytest.fixture
def serve_client(kafka_client, monkeypatch) -> str:
    monkeypatch.setenv("FRAUDLITE_KAFKA_CLIENT", kafka_client)
    return kafka_client


@pytest.fixture
def rel_topics(rel_broker, request):
    def make(partitions: int = 4):
        t = unique_topics("".join(c if c.isalnum() else "-" for c in request.node.name)[:30])
        create_topics(rel_broker.bootstrap, [t.input, t.labels], partitions)
        return t

    return make
