"""Flow control of the run loop: batch size against max.poll.interval.ms, pausing full partitions.

``update_paused`` runs against a real KafkaConsumer: pause/resume are client-side state, so it needs no
broker (``api_version`` given: the constructor does not probe one).
"""

from __future__ import annotations

import logging

import pytest
from kafka import KafkaConsumer, TopicPartition

from fraudlite.streaming.flow import adapt_max_records, update_paused

INTERVAL_MS = 60_000  # budget: a quarter = 15 s; fast: under 15 / 4 = 3.75 s


# -- adapt_max_records ----------------------------------------------------------------------------------


def test_slow_batch_shrinks_to_what_fits_a_quarter_of_the_interval(caplog):
    with caplog.at_level(logging.WARNING, logger="fraudlite.streaming.flow"):
        assert adapt_max_records(1000, 1000, 20.0, 1000, INTERVAL_MS) == 750  # 50 records/s * 15 s
    assert "batches now at most 750 records" in caplog.text and "max.poll.interval.ms=60000" in caplog.text


def test_shrinking_never_goes_below_one_record():
    assert adapt_max_records(10, 10, 10_000.0, 1000, INTERVAL_MS) == 1


def test_a_slow_single_record_changes_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="fraudlite.streaming.flow"):
        assert adapt_max_records(1, 1, 100.0, 1000, INTERVAL_MS) == 1
        assert adapt_max_records(500, 1, 100.0, 1000, INTERVAL_MS) == 500  # no rate from one record
    assert not caplog.records


def test_slow_batch_that_already_fits_keeps_the_limit_without_a_warning(caplog):
    # a partial batch (200 of 300) over budget: 200 * 15 / 16 = 187 < 300, so it shrinks...
    assert adapt_max_records(300, 200, 16.0, 1000, INTERVAL_MS) == 187
    caplog.clear()
    # ...but a batch bigger than the current limit (limit just lowered) that fits more keeps it
    with caplog.at_level(logging.WARNING, logger="fraudlite.streaming.flow"):
        assert adapt_max_records(100, 1000, 16.0, 1000, INTERVAL_MS) == 100
    assert not caplog.records


def test_fast_full_batch_doubles_up_to_the_configured_limit():
    assert adapt_max_records(100, 100, 1.0, 1000, INTERVAL_MS) == 200
    assert adapt_max_records(600, 600, 1.0, 1000, INTERVAL_MS) == 1000
    assert adapt_max_records(1000, 1000, 0.0, 1000, INTERVAL_MS) == 1000


@pytest.mark.parametrize(
    "records,seconds",
    [
        (99, 1.0),  # fast but not full: the limit was not what held it back
        (100, 3.75),  # exactly a sixteenth of the interval: not "fast"
        (100, 10.0),  # between a sixteenth and a quarter
        (100, 15.0),  # exactly a quarter: not "slow"
    ],
)
def test_in_between_batches_keep_the_limit(records, seconds):
    assert adapt_max_records(100, records, seconds, 1000, INTERVAL_MS) == 100


@pytest.mark.parametrize("start", [1, 5000])
@pytest.mark.parametrize("rate", [3.0, 40.0, 700.0, 10_000.0])
def test_at_a_steady_rate_the_limit_settles_inside_the_budget_without_oscillating(rate, start):
    """Batches that always fill the limit at a fixed per-record cost: the limit settles (no
    shrink/grow cycles), a settled batch fits the quarter interval, and never exceeds the configured limit."""
    limit, budget = 5000, INTERVAL_MS / 1000 / 4
    current, seen = start, []
    for _ in range(40):
        current = adapt_max_records(current, current, current / rate, limit, INTERVAL_MS)
        assert 1 <= current <= limit
        seen.append(current)
    assert len(set(seen[-20:])) == 1, seen
    assert current / rate <= budget
    assert current == limit or current / rate >= budget / 4 or current * 2 > limit


# -- update_paused ----------------------------------------------------------------------------------------


@pytest.fixture
def consumer():
    c = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8), enable_auto_commit=False)
    c.assign([TopicPartition("tx", p) for p in range(4)])
    yield c
    c.close()


def tps(*partitions: int) -> set[TopicPartition]:
    return {TopicPartition("tx", p) for p in partitions}


def test_update_paused_pauses_new_and_resumes_released_partitions(consumer):
    paused = update_paused(consumer, tps(0, 1), set())
    assert paused == tps(0, 1) and consumer.paused() == tps(0, 1)
    paused = update_paused(consumer, tps(1, 2), paused)
    assert paused == tps(1, 2) and consumer.paused() == tps(1, 2)
    paused = update_paused(consumer, set(), paused)
    assert paused == set() and consumer.paused() == set()


def test_update_paused_leaves_the_consumer_alone_when_nothing_changed(consumer):
    consumer.pause(*tps(3))  # paused by someone else: not ours to resume
    paused = update_paused(consumer, tps(0), set())
    assert update_paused(consumer, tps(0), paused) is paused
    assert consumer.paused() == tps(0, 3)
    update_paused(consumer, set(), paused)
    assert consumer.paused() == tps(3)
