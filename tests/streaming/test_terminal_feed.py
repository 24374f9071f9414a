"""TerminalFeed: the global terminal table fed from other members' partitions, the labels topic and the
scorer's own batches, each transaction exactly once.

Bookkeeping of the scorer's batches (``add_batch``, ``is_new``, ``own``) needs no broker; reading the
topics (``advance``) runs against the embedded broker with a real read_committed consumer. Counts are read
back through ``TerminalTable.features`` (window 1 = one day's count and fraud risk).
"""

from __future__ import annotations

import json
import logging

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from fraudlite.features.online import OnlineFeatures, TerminalTable
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudlite.kafkaio.clients import make_consumer
from fraudlite.kafkaio.security import KafkaSecurity
from fraudlite.kafkaio.wire import LabelDecoder, TransactionDecoder
from fraudlite.streaming.batch_features import batch_features
from fraudlite.streaming.terminal_feed import TerminalFeed
from fraudlite.testing.streaming import T0

SPEC = FeatureSpec()
D0 = T0 // SECONDS_PER_DAY
integration = pytest.mark.integration


def tx(n: int, day: int, terminal: str = "T1") -> bytes:
    ts_ms = ((D0 + day) * SECONDS_PER_DAY + 3600) * 1000
    return json.dumps(
        {"tx_id": f"tx{n}", "timestamp": ts_ms, "customer_id": "c1", "terminal_id": terminal, "amount": 3.0}
    ).encode()


def label(day: int, terminal: str, value: int) -> bytes:
    ts_ms = ((D0 + day) * SECONDS_PER_DAY + 3600) * 1000
    return json.dumps(
        {"tx_id": "x", "customer_id": "c1", "terminal_id": terminal, "timestamp": ts_ms, "label": value}
    ).encode()


def count(table: TerminalTable, day: int, terminal: str = "T1") -> int:
    """Transactions counted for ``terminal`` on day ``D0 + day``."""
    rows = table.rows([terminal])
    return int(table.features(D0 + day + SPEC.delay_days, rows)[0, 0])


def fraud_risk(table: TerminalTable, day: int, terminal: str = "T1") -> float:
    rows = table.rows([terminal])
    return float(table.features(D0 + day + SPEC.delay_days, rows)[0, 1])


def record(partition: int, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("tx", partition, None, offset, 0, 0, None, value, [], None, 0, len(value), 0)


def batch(feed: TerminalFeed, partition: int, recs: list) -> None:
    """What batch_features does with one partition's part of a batch (counting it here, not in compute)."""
    feed.add_batch(partition, recs, feed.decoder.decode([r.value for r in recs]))


# -- the scorer's own batches (no broker) --------------------------------------------------------------


def offline_feed() -> TerminalFeed:
    """A feed whose consumer is never used (``add_batch`` / ``is_new`` / ``own`` without held rows)."""
    return TerminalFeed(None, TerminalTable(SPEC), "tx", "labels", TransactionDecoder(), LabelDecoder())


def test_add_batch_counts_each_offset_once_across_a_repeated_batch():
    feed = offline_feed()
    recs = [record(0, 0, tx(0, 0)), record(0, 1, b"not json"), record(0, 2, tx(2, 0)), record(0, 3, tx(3, 1))]
    assert feed.is_new(0, recs)
    batch(feed, 0, recs[:2])
    assert count(feed.table, 0) == 1 and feed.fed[0] == 2
    # after a rollback the scorer processes offsets 0..3 again: only 2 and 3 are new
    assert not feed.is_new(0, recs)
    batch(feed, 0, recs)
    assert count(feed.table, 0) == 2 and count(feed.table, 1) == 1
    assert feed.transactions == 3 and feed.fed[0] == 4
    batch(feed, 0, recs[2:])  # entirely seen: nothing, and the position does not move back
    assert feed.transactions == 3 and feed.fed[0] == 4
    assert feed.is_new(0, [record(0, 4, tx(4, 1))])


def test_add_batch_counted_by_the_caller_only_moves_the_position():
    feed = offline_feed()
    recs = [record(1, 0, tx(0, 0)), record(1, 1, tx(1, 0))]
    feed.add_batch(1, recs, feed.decoder.decode([r.value for r in recs]), counted=True)
    assert count(feed.table, 0) == 0 and feed.transactions == 0 and feed.fed == {1: 2}


def test_add_batch_after_a_gap_warns_and_counts_the_batch(caplog):
    feed = offline_feed()
    recs = [record(0, 5, tx(5, 0)), record(0, 6, tx(6, 0))]
    with caplog.at_level(logging.WARNING, logger="fraudlite.streaming.terminal_feed"):
        batch(feed, 0, recs)
    assert "partition 0 jumps from offset 0 to 5" in caplog.text
    assert count(feed.table, 0) == 2 and feed.fed[0] == 7


def test_ownership_is_tracked_per_partition():
    feed = offline_feed()
    feed.own(3, 10)
    feed.own(1, 0)
    assert feed.owned == [1, 3]
    feed.disown(3)
    feed.disown(7)  # never owned: nothing to do
    assert feed.owned == [1]


# -- reading the topics (embedded broker) ---------------------------------------------------------------


@pytest.fixture
def topics(make_topic) -> tuple[str, str]:
    return make_topic(partitions=2), make_topic(partitions=1)


@pytest.fixture
def produce(broker):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)

    def send(topic: str, partition: int, values: list[bytes], one_batch: bool = False) -> None:
        """One record batch per record unless ``one_batch`` (the embedded broker reports the end offset of
        a partition as its last batch's base offset + 1: see the xfail test below)."""
        for v in values:
            producer.send(topic, value=v, partition=partition)
            if not one_batch:
                producer.flush()
        producer.flush()

    yield send
    producer.close()


@pytest.fixture
def make_feed(broker, topics):
    made = []

    def make() -> TerminalFeed:
        tx_topic, labels_topic = topics
        consumer = make_consumer(
            broker.bootstrap, KafkaSecurity(), isolation_level="read_committed", fetch_max_wait_ms=100,
            max_poll_records=100_000,
        )  # fmt: skip
        feed = TerminalFeed(
            consumer, TerminalTable(SPEC), tx_topic, labels_topic, TransactionDecoder(), LabelDecoder(),
            timeout_s=10.0,
        )  # fmt: skip
        feed.assign({tx_topic: 2, labels_topic: 1})
        made.append(consumer)
        return feed

    yield make
    for c in made:
        c.close()


@integration
def test_assign_takes_every_partition_of_both_topics_from_the_beginning(make_feed, topics):
    tx_topic, labels_topic = topics
    feed = make_feed()
    expected = [TopicPartition(tx_topic, 0), TopicPartition(tx_topic, 1), TopicPartition(labels_topic, 0)]
    assert feed.partitions == expected and feed.consumer.assignment() == set(expected)
    assert feed.fed == {0: 0, 1: 0} and feed.bound is None


@integration
def test_advance_reads_other_partitions_up_to_the_day_bound_and_holds_the_rest(make_feed, topics, produce):
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(0, 0), tx(1, 0), tx(2, 1), tx(3, 2)])
    produce(tx_topic, 1, [tx(4, 0, "T2")])
    feed = make_feed()
    feed.advance(D0)
    t = feed.table
    assert (count(t, 0), count(t, 1), count(t, 2), count(t, 0, "T2")) == (2, 0, 0, 1)
    assert feed.transactions == 3 and feed.fed == {0: 4, 1: 1}
    assert TopicPartition(tx_topic, 0) in feed.consumer.paused()  # rows held beyond the bound
    feed.advance(D0)  # same bound: nothing to do
    feed.advance(D0 - 3)  # an earlier bound (a batch repeated after a rollback): nothing either
    assert feed.transactions == 3 and feed.bound == D0
    feed.advance(D0 + 1)
    assert count(t, 1) == 1 and count(t, 2) == 0
    feed.advance(D0 + 2)
    assert count(t, 2) == 1 and feed.transactions == 5
    assert TopicPartition(tx_topic, 0) not in feed.consumer.paused()
    # more records: read when the bound moves, never those counted already
    produce(tx_topic, 0, [tx(5, 2), tx(6, 3)])
    feed.advance(D0 + 3)
    assert (count(t, 0), count(t, 1), count(t, 2), count(t, 3)) == (2, 1, 2, 1)
    assert feed.transactions == 7 and feed.fed[0] == 6


@integration
def test_labels_count_frauds_on_their_transaction_day_up_to_the_bound(make_feed, topics, produce):
    tx_topic, labels_topic = topics
    produce(tx_topic, 1, [tx(0, 0), tx(1, 0), tx(2, 3)])
    produce(
        labels_topic,
        0,
        [label(0, "T1", 1), b"{}", label(0, "T1", 0), label(0, "T1", 2), b"", label(3, "T1", 1)],
    )
    feed = make_feed()
    feed.advance(D0)
    assert fraud_risk(feed.table, 0) == 0.5  # one fraud of two transactions
    assert feed.labels == 2 and feed.invalid_labels == 3
    assert TopicPartition(labels_topic, 0) in feed.consumer.paused()  # the day-3 label waits
    feed.advance(D0 + 2)
    assert feed.labels == 2 and fraud_risk(feed.table, 3) == 0.0
    feed.advance(D0 + 3)
    assert feed.labels == 3 and fraud_risk(feed.table, 3) == 1.0 and count(feed.table, 3) == 1


@integration
def test_each_label_the_table_takes_goes_to_on_labels_once_with_its_ids(make_feed, topics, produce):
    _, labels_topic = topics

    def msg(n: int, day: int, value: int) -> bytes:
        ts_ms = ((D0 + day) * SECONDS_PER_DAY + 60) * 1000
        ids = {"tx_id": f"tx{n}", "customer_id": f"c{n}", "terminal_id": "T1", "timestamp": ts_ms}
        return json.dumps({**ids, "label": value}).encode()

    produce(labels_topic, 0, [msg(0, 0, 1), msg(1, 0, 0), b"{}", msg(2, 2, 1), msg(3, 3, 0)])
    feed = make_feed()
    got: list = []
    feed.on_labels = got.append
    feed.advance(D0)
    assert [(d.tx_id, d.customer_id, d.label.tolist()) for d in got] == [
        (["tx0", "tx1"], ["c0", "c1"], [1, 0])
    ], "only the labels up to the bound, the invalid one not at all"
    feed.advance(D0 + 1)
    assert len(got) == 1, "held labels wait for their day"
    feed.advance(D0 + 3)
    assert [t for d in got for t in d.tx_id] == ["tx0", "tx1", "tx2", "tx3"], "each once, in order"
    ts = [t for d in got for t in d.ts.tolist()]
    assert ts[2:] == [(D0 + 2) * SECONDS_PER_DAY + 60, (D0 + 3) * SECONDS_PER_DAY + 60]
    assert feed.labels == 4 and feed.invalid_labels == 1


@integration
def test_an_owned_partition_is_read_only_up_to_the_takeover_then_fed_by_batches(
    make_feed, topics, produce, consume_all
):
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(i, i) for i in range(5)])
    produce(tx_topic, 1, [tx(9, 0, "T2")])
    feed = make_feed()
    feed.own(0, 3)  # the scorer continues partition 0 from offset 3
    feed.advance(D0)
    t = feed.table
    # offsets 0..2 were processed by the scorer already: counted whatever their day; 3 and 4 are not read
    assert [count(t, d) for d in range(5)] == [1, 1, 1, 0, 0]
    assert feed.fed == {0: 3, 1: 1} and feed.transactions == 4
    assert TopicPartition(tx_topic, 0) in feed.consumer.paused()
    recs = [r for r in consume_all(tx_topic, min_count=6) if r.partition == 0]
    assert feed.is_new(0, recs[3:]) and not feed.is_new(0, recs)
    batch(feed, 0, recs[3:])
    assert [count(t, d) for d in range(5)] == [1, 1, 1, 1, 1] and feed.fed[0] == 5
    feed.advance(D0 + 10)  # partition 0 stays the scorer's
    assert [count(t, d) for d in range(5)] == [1, 1, 1, 1, 1] and feed.transactions == 6


@integration
def test_a_first_batch_of_invalid_records_only_still_fills_the_takeover_gap(
    make_feed, topics, produce, consume_all
):
    """Regression (the kill -9 test, ~1 run in 5): a scorer that took partition 0 over at offset 3 and
    whose first batch was one poison record moved ``fed`` past it without reading offsets 0..2, so their
    terminal counts were lost for good."""
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(0, 0), tx(1, 1), tx(2, 2), b"poison", tx(4, 4)])
    feed = make_feed()
    feed.own(0, 3)
    recs = consume_all(tx_topic, min_count=5)
    tp = TopicPartition(tx_topic, 0)
    first = [r for r in recs if r.offset == 3]
    assert (
        batch_features(
            [(tp, first, feed.decoder.decode([r.value for r in first]))],
            OnlineFeatures(SPEC, feed.table),
            feed,
            SPEC.delay_days,
        )
        is None
    )
    assert [count(feed.table, d) for d in range(5)] == [1, 1, 1, 0, 0] and feed.fed[0] == 4
    rest = [r for r in recs if r.offset == 4]
    x = batch_features(
        [(tp, rest, feed.decoder.decode([r.value for r in rest]))],
        OnlineFeatures(SPEC, feed.table),
        feed,
        SPEC.delay_days,
    )
    assert x.shape == (1, SPEC.n_features)
    assert [count(feed.table, d) for d in range(5)] == [1, 1, 1, 0, 1] and feed.fed[0] == 5


@integration
def test_own_counts_held_back_rows_before_the_takeover_and_leaves_the_rest(
    make_feed, topics, produce, consume_all
):
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(0, 0), tx(1, 2), tx(2, 3)])
    feed = make_feed()
    feed.advance(D0)
    t = feed.table
    assert [count(t, d) for d in (0, 2, 3)] == [1, 0, 0] and feed.fed[0] == 3  # offsets 1, 2 held back
    feed.own(0, 2)
    assert [count(t, d) for d in (0, 2, 3)] == [1, 1, 0]  # offset 1 precedes the takeover: counted now
    assert feed.fed[0] == 2  # offset 2 is left to the scorer's batches
    recs = consume_all(tx_topic, min_count=3)
    assert feed.is_new(0, recs[2:])
    batch(feed, 0, recs[2:])
    feed.advance(D0 + 5)
    assert [count(t, d) for d in (0, 2, 3)] == [1, 1, 1] and feed.transactions == 3


@integration
def test_a_disowned_partition_is_read_again_from_where_the_batches_stopped(
    make_feed, topics, produce, consume_all
):
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(i, 0) for i in range(4)])
    feed = make_feed()
    feed.own(0, 0)
    feed.advance(D0)
    assert count(feed.table, 0) == 0  # the scorer's partition: not read here
    recs = consume_all(tx_topic, min_count=4)
    batch(feed, 0, recs[:2])
    feed.disown(0)  # the rest of the partition went to another member
    feed.advance(D0 + 1)
    assert count(feed.table, 0) == 4 and feed.transactions == 4 and feed.fed[0] == 4


@integration
@pytest.mark.xfail(
    strict=True,
    reason="embedded broker: ListOffsets answers the last batch's base offset + 1, so a partition re-read "
    "from the middle of its last record batch looks caught up (terminal_feed._read; reported)",
)
def test_a_disowned_partition_is_read_again_from_the_middle_of_a_record_batch(
    make_feed, topics, produce, consume_all
):
    tx_topic, _ = topics
    produce(tx_topic, 0, [tx(i, 0) for i in range(4)], one_batch=True)
    feed = make_feed()
    feed.own(0, 0)
    feed.advance(D0)
    batch(feed, 0, consume_all(tx_topic, min_count=4)[:2])
    feed.disown(0)
    feed.advance(D0 + 1)
    assert count(feed.table, 0) == 4
