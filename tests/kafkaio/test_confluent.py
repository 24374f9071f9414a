"""librdkafka behind kafka-python's calls (``kafkaio.confluent``): settings translated, and on the real broker
the places where librdkafka differs from kafka-python and the adapter makes up for it (pause parks, a seek
right after assignment, positions after a seek, keep-alive between polls, delivery outcomes, fencing).

The scorer's behaviour over it (exactly-once, DLQ, restart, rebalance, kill -9, broker outage) is tested by
the scorer and reliability suites, which run once per client.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from fraudlite.kafkaio.confluent import (
    PARK_LIMIT,
    ConfluentConsumer,
    ConfluentProducer,
    librdkafka_config,
)
from fraudlite.kafkaio.security import KafkaSecurity
from fraudlite.testing.streaming import produce

pytest.importorskip("confluent_kafka")


def test_settings_are_translated_and_an_unknown_one_is_refused(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    sec = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="svc",
        sasl_password="pw", ssl_cafile=str(ca), ssl_check_hostname=False,
    )  # fmt: skip
    conf = librdkafka_config(
        "h:1", sec, producer=False, group_id="g", isolation_level="read_committed", max_poll_records=500,
        transactional_id="t", linger_ms=5, allow_auto_create_topics=False,
    )  # fmt: skip
    assert conf["group.id"] == "g" and conf["isolation.level"] == "read_committed"
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "svc" and conf["sasl.password"] == "pw"
    assert conf["ssl.ca.location"] == str(ca) and conf["ssl.endpoint.identification.algorithm"] == "none"
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert "transactional.id" not in conf and "linger.ms" not in conf  # producer settings
    assert conf["allow.auto.create.topics"] is False
    prod = librdkafka_config("h:1", KafkaSecurity(), producer=True, transactional_id="t", batch_size=1024,
                             allow_auto_create_topics=False)  # fmt: skip
    assert prod["transactional.id"] == "t" and prod["batch.size"] == 1024
    assert "allow.auto.create.topics" not in prod and "group.id" not in prod
    with pytest.raises(ValueError, match="retry_backoff_ms"):
        librdkafka_config("h:1", KafkaSecurity(), producer=True, retry_backoff_ms=5)


def _messages(n: int, partitions: int) -> list[tuple[bytes, bytes]]:
    # keys chosen per partition by the default partitioner would scatter; produce() takes (key, value)
    return [(b"k%d" % i, b"v%d" % i) for i in range(n * partitions)]


def _consumer(broker, **kw) -> ConfluentConsumer:
    conf = librdkafka_config(
        broker.bootstrap, KafkaSecurity(), producer=False, group_id=f"t-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", session_timeout_ms=6000, isolation_level="read_committed", **kw,
    )  # fmt: skip
    return ConfluentConsumer(conf)


class _Listener:
    def __init__(self) -> None:
        self.assigned: set = set()

    def on_partitions_assigned(self, assigned) -> None:
        self.assigned = set(assigned)

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_lost(self, lost) -> None:
        pass


def _joined(consumer: ConfluentConsumer, topic: str) -> _Listener:
    listener = _Listener()
    consumer.subscribe([topic], listener=listener)
    deadline = time.monotonic() + 30
    while not listener.assigned:
        assert time.monotonic() < deadline, "not assigned"
        consumer.poll(50, 1)  # may return a record: every test seeks before it reads
    return listener


@pytest.fixture
def joined(broker, make_topic):
    """``joined(partitions, per_partition) -> (consumer, topic)``: a topic with records and a member of a
    fresh group that owns all of it (closed after the test)."""
    made = []

    def make(partitions: int, per_partition: int) -> tuple[ConfluentConsumer, str]:
        topic = make_topic(partitions)
        produce(broker.bootstrap, topic, _messages(per_partition, partitions))
        made.append(_consumer(broker))
        _joined(made[-1], topic)
        return made[-1], topic

    yield make
    for c in made:
        c.close()


def _drain(consumer: ConfluentConsumer, want: int, timeout_s: float = 20.0) -> dict[int, list[int]]:
    """Offsets polled per partition until ``want`` records came."""
    got: dict[int, list[int]] = {}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        for tp, records in consumer.poll(100, 1000).items():
            got.setdefault(tp.partition, []).extend(r.offset for r in records)
    return got


@pytest.mark.integration
def test_pause_parks_records_and_resume_hands_them_out_in_order(joined):
    c, topic = joined(2, 200)
    for tp in c.assignment():
        c.seek(tp, 0)  # right after the assignment: librdkafka may refuse it, the adapter re-assigns
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    first = c.poll(5000, 10)
    assert first and all(r.offset == i for rs in first.values() for i, r in enumerate(rs))
    c.pause(p1)
    assert c.paused() == {p1}
    seen = {tp.partition: [r.offset for r in rs] for tp, rs in first.items()}
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        out = c.poll(100, 1000)
        assert p1 not in out, "a paused partition hands nothing out"
        for tp, rs in out.items():
            seen.setdefault(tp.partition, []).extend(r.offset for r in rs)
    c.resume(p1)
    rest = _drain(c, 400 - sum(map(len, seen.values())))
    for p, offsets in rest.items():
        seen.setdefault(p, []).extend(offsets)
    ends = {p: c.highwater(TopicPartition(topic, p)) for p in (0, 1)}
    for p in (0, 1):
        assert seen[p] == list(range(ends[p])), f"partition {p}: every record once, in order"
        assert c.position(TopicPartition(topic, p)) == ends[p]
    assert c.position(p0) == ends[0]


@pytest.mark.integration
def test_a_long_pause_stops_fetching_and_loses_nothing(joined, monkeypatch):
    monkeypatch.setattr("fraudlite.kafkaio.confluent.consumer.PARK_LIMIT", 50)
    assert PARK_LIMIT > 50
    c, topic = joined(1, 300)
    tp = TopicPartition(topic, 0)
    c.seek(tp, 0)
    assert [r.offset for r in c.poll(5000, 10)[tp]] == list(range(10))
    c.pause(tp)
    for _ in range(20):
        assert c.poll(50, 1000) == {}
    assert c._stopped == {tp}, "parked past the limit: librdkafka stops fetching it"
    c.resume(tp)
    assert _drain(c, 290)[0] == list(range(10, 300))


@pytest.mark.integration
def test_seek_then_position_and_keep_alive_parks_what_it_takes(joined):
    c, topic = joined(1, 50)
    tp = TopicPartition(topic, 0)
    c.seek(tp, 20)
    assert c.position(tp) == 20  # librdkafka itself reports no position until a record is consumed
    c._last_keep_alive = 0.0
    time.sleep(0.5)
    c.keep_alive()
    assert _drain(c, 30)[0] == list(range(20, 50)), "the record keep_alive took comes out, once"
    c.seek_to_beginning(tp)
    assert c.position(tp) == 0
    c.seek_to_end(tp)
    assert c.position(tp) == 50
    assert c.committed(tp) is None
    c.commit({tp: OffsetAndMetadata(7, "", -1)})
    assert c.committed(tp) == 7
    assert c.connected()


def _producer(broker, txn_id: str | None) -> ConfluentProducer:
    kw = {"transactional_id": txn_id} if txn_id else {"acks": "all"}
    return ConfluentProducer(
        librdkafka_config(broker.bootstrap, KafkaSecurity(), producer=True, linger_ms=5, **kw)
    )


@pytest.mark.integration
def test_transactions_delivery_outcomes_and_fencing(broker, make_topic, consume_all):
    out = make_topic(1)
    txn = f"t-{uuid.uuid4().hex[:8]}"
    p = _producer(broker, txn)
    p.init_transactions()
    p.begin_transaction()
    (run,) = p.send_many(out, 0, [b"a", b"b", b"c"], [b"1", b"2", b"3"])
    single = p.send(out, value=b"4", key=b"d", headers=[("h", b"x")], partition=0)
    p.commit_transaction()
    assert run.succeeded() and not run.failed() and run.value.offset == 2
    assert single.succeeded() and single.value.offset == 3
    p.begin_transaction()
    p.send(out, value=b"aborted", partition=0)
    p.abort_transaction()
    assert [r.value for r in consume_all(out, min_count=4)] == [b"1", b"2", b"3", b"4"]

    newer = _producer(broker, txn)
    newer.init_transactions()  # fences the first producer
    with pytest.raises(KafkaError) as e:
        p.begin_transaction()
        p.send(out, value=b"fenced", partition=0)
        p.commit_transaction()
    assert isinstance(e.value, ProducerFencedError), repr(e.value)

    plain = _producer(broker, None)
    bad = plain.send(out, value=b"x", partition=7)  # no such partition, before the metadata is known
    plain.flush(10)
    assert bad.failed() and "partition" in str(bad.exception).lower()
    assert plain.partitions_for(out) == {0}
    with pytest.raises(KafkaError, match="(?i)unknown partition"):  # known now: refused at once
        plain.send(out, value=b"x", partition=7)
