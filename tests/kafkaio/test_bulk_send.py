"""``send_many`` against ``KafkaProducer.send`` on the real embedded broker: same records, same order,
same transaction semantics, one future per record batch."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer
from kafka.errors import IllegalStateError, MessageSizeTooLargeError

from fraudlite.kafkaio.bulk_send import send_many, supports_bulk

pytestmark = pytest.mark.integration


def _records(n: int, tag: str) -> tuple[list[bytes | None], list[bytes | None]]:
    """Keyed and unkeyed records, and tombstones (None values, as the changelog writes)."""
    keys = [None if i % 7 == 0 else f"C{i % 13}".encode() for i in range(n)]
    values = [
        None if i % 11 == 5 and keys[i] else f'{{"tx_id": "{tag}{i}", "score": {i / n:.6f}}}'.encode()
        for i in range(n)
    ]
    return keys, values


@pytest.fixture
def producer(broker):
    p = KafkaProducer(
        bootstrap_servers=broker.bootstrap, transactional_id=f"bulk-{uuid.uuid4().hex[:8]}",
        linger_ms=5, batch_size=4096,  # small batches: several per call
    )  # fmt: skip
    p.init_transactions()
    yield p
    p.close(timeout=5)


def test_the_pinned_kafka_python_has_the_internals(producer):
    assert supports_bulk(producer), "kafka-python changed: fraudlite.kafkaio.bulk_send needs a look"


def test_same_records_as_send_in_a_committed_transaction(producer, make_topic, consume_all):
    bulk, loop = make_topic(partitions=3), make_topic(partitions=3)
    keys, values = _records(2500, "t")
    producer.begin_transaction()
    futures = send_many(producer, bulk, 1, keys, values)
    for k, v in zip(keys, values, strict=True):
        producer.send(loop, key=k, value=v, partition=1)
    producer.commit_transaction()

    got, want = consume_all(bulk, min_count=2500), consume_all(loop, min_count=2500)
    assert [(r.partition, r.key, r.value) for r in got] == [(r.partition, r.key, r.value) for r in want]
    assert [r.value for r in got] == values and None in values
    assert len(futures) > 1, "batch_size 4096 splits 2,500 records into several batches"
    assert all(f.succeeded() for f in futures)
    assert futures[-1].value.offset == got[-1].offset
    # every future is the last record of its batch: offsets strictly increasing, the batches in order
    offsets = [f.value.offset for f in futures]
    assert offsets == sorted(set(offsets))


def test_aborted_transaction_is_invisible_to_read_committed(producer, make_topic, consume_all):
    topic = make_topic(partitions=1)
    keys, values = _records(300, "a")
    producer.begin_transaction()
    send_many(producer, topic, 0, keys, values)
    producer.abort_transaction()
    producer.begin_transaction()
    send_many(producer, topic, 0, keys[:5], values[:5])
    producer.commit_transaction()
    assert [r.value for r in consume_all(topic, min_count=5)][-5:] == values[:5]


def test_errors_are_those_of_send(producer, make_topic):
    topic = make_topic(partitions=2)
    assert send_many(producer, topic, 0, [], []) == []
    with pytest.raises(IllegalStateError):  # transactional producer outside a transaction, like send
        send_many(producer, topic, 0, [b"k"], [b"v"])
    producer.begin_transaction()
    with pytest.raises(ValueError, match="no partition 5"):
        send_many(producer, topic, 5, [b"k"], [b"v"])
    with pytest.raises(ValueError, match="key or value"):
        send_many(producer, topic, 0, [b"k", None], [b"v", None])
    huge = b"x" * (producer.config["max_request_size"] + 1)
    with pytest.raises(MessageSizeTooLargeError):
        send_many(producer, topic, 0, [b"k", b"k"], [b"small", huge])
    producer.abort_transaction()


def test_other_producers_fall_back_to_send():
    class Recorder:  # anything that is not a kafka-python KafkaProducer
        def __init__(self):
            self.sent = []

        def send(self, topic, value=None, key=None, partition=None):
            self.sent.append((topic, partition, key, value))
            return len(self.sent)

    r = Recorder()
    assert not supports_bulk(r)
    assert send_many(r, "t", 2, [b"a", None], [b"1", b"2"]) == [1, 2]
    assert r.sent == [("t", 2, b"a", b"1"), ("t", 2, None, b"2")]
