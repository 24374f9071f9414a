"""kafka-python adapters, the group's liveness: ``broker_connected`` (the outage probe) and ``keep_alive``
(group membership through long work between polls). The other adapters are in ``test_clients.py``.

Tests marked ``integration`` run against the embedded broker (real clients, no mocks); the others need
none (clients are constructed with ``api_version`` so they do not probe a broker). Fakes only inject
faults (stale metadata, a failing create, a filesystem without flock, a broken probe).
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer

from fraudlite.kafkaio.broker import EmbeddedBroker, free_port
from fraudlite.kafkaio.clients import (
    TopicSpec,
    broker_connected,
    ensure_topics,
    keep_alive,
    make_admin,
    make_consumer,
)
from fraudlite.kafkaio.security import KafkaSecurity

integration = pytest.mark.integration
PLAIN = KafkaSecurity()


def closed_bootstrap() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def offline_consumer():
    c = KafkaConsumer(bootstrap_servers=closed_bootstrap(), api_version=(2, 8), group_id="g")
    yield c
    c.close()


def test_broker_connected_claims_no_outage_on_unknown_internals():
    assert broker_connected(None) is True
    assert broker_connected(object()) is True


def test_broker_connected_is_false_while_no_coordinator_is_known(offline_consumer):
    assert broker_connected(offline_consumer) is False


def test_a_failing_probe_claims_no_outage(offline_consumer, monkeypatch):
    def broken(node_id):
        raise OSError("selector closed")

    offline_consumer._coordinator.coordinator_id = 0
    assert broker_connected(offline_consumer) is False  # known coordinator, not connected
    monkeypatch.setattr(offline_consumer._client, "connected", broken)
    assert broker_connected(offline_consumer) is True


def test_keep_alive_is_a_no_op_without_a_group_and_survives_a_dead_heartbeat(offline_consumer, monkeypatch):
    keep_alive(None)
    keep_alive(offline_consumer)  # not joined: nothing to do, no error

    def dead():
        raise RuntimeError("heartbeat thread died")

    monkeypatch.setattr(offline_consumer._coordinator, "poll_heartbeat", dead)
    keep_alive(offline_consumer)  # reported by the next poll(), not here


def _join(*consumers: KafkaConsumer, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(c.assignment() for c in consumers):
        assert time.monotonic() < deadline, "consumers did not join their groups"
        for c in consumers:
            if not c.assignment():
                c.poll(timeout_ms=100)


@integration
def test_keep_alive_holds_group_membership_through_long_work_between_polls(broker, make_topic):
    topic = make_topic(partitions=1)
    kw = dict(max_poll_interval_ms=1000, session_timeout_ms=6000, heartbeat_interval_ms=100)
    kept, idle = (
        make_consumer(broker.bootstrap, PLAIN, group_id=f"{name}-{uuid.uuid4().hex[:6]}", **kw)
        for name in ("kept", "idle")
    )
    try:
        kept.subscribe([topic])
        idle.subscribe([topic])
        _join(kept, idle)
        assert broker_connected(kept) and broker_connected(idle)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # twice max.poll.interval.ms without a poll
            keep_alive(kept)
            time.sleep(0.1)
        assert not kept._coordinator.need_rejoin() and kept._coordinator.generation_if_stable() is not None
        assert idle._coordinator.need_rejoin()  # left the group: poll timeout expired
    finally:
        kept.close(autocommit=False)
        idle.close(autocommit=False)


@integration
def test_broker_connected_turns_false_when_the_broker_goes_away():
    with EmbeddedBroker() as own:
        admin = make_admin(own.bootstrap, PLAIN)
        ensure_topics(admin, [TopicSpec("t", 1)])
        admin.close()
        # (a short session timeout makes the embedded broker's first join quick)
        consumer = make_consumer(own.bootstrap, PLAIN, group_id="g", session_timeout_ms=6000)
        try:
            consumer.subscribe(["t"])
            _join(consumer)
            assert broker_connected(consumer) is True
            own.stop(timeout_s=0.1)  # SIGKILL: it does not exit on SIGTERM while clients are connected
            deadline = time.monotonic() + 10
            while broker_connected(consumer):
                assert time.monotonic() < deadline, "still reported connected 10s after the broker stopped"
                time.sleep(0.1)
        finally:
            consumer.close(autocommit=False)
