"""``Checkpoint``: a batch's transaction step by step, and what happens when a step fails.

No broker: a fake producer and consumer record every call in one shared log (so the order across both
is visible) and raise where a test injects a fault. The broker tests (``test_scorer``, ``reliability``)
cover the same paths end to end; these pin the order and the failure handling.
"""

from __future__ import annotations

import json
import logging
from collections import namedtuple
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from fraudlite.features.online import CustomerState, OnlineFeatures, TerminalTable
from fraudlite.features.spec import FeatureSpec
from fraudlite.kafkaio.clients import KafkaIOError
from fraudlite.kafkaio.wire import DecodeLimits, TransactionDecoder
from fraudlite.streaming.checkpoint import Checkpoint
from fraudlite.streaming.clients import ScorerClients
from fraudlite.streaming.config import AT_LEAST_ONCE, ServeConfig, Topics
from fraudlite.streaming.idempotence import POSITIONS_KEY
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.scorer import scorer_settings
from fraudlite.streaming.settings import CheckpointSettings, OutputSettings

TOPICS = Topics(input="in", output="out", alerts="alerts", dlq="dlq", labels=None, changelog="changelog")
PARTITIONS = {"in": 2, "out": 2, "alerts": 2, "dlq": 2, "changelog": 2}
OUTPUT_TOPICS = ("out", "alerts", "dlq")
MODEL = SimpleNamespace(threshold=0.5, alert_threshold=0.9, version="v1")
Record = namedtuple("Record", "offset key value timestamp")


class Future:
    def __init__(self, offset: int, error: Exception | None) -> None:
        self.exception = error
        self.value = SimpleNamespace(offset=offset)

    def failed(self) -> bool:
        return self.exception is not None

    def succeeded(self) -> bool:
        return self.exception is None


class FakeProducer:
    """Logs each call; ``faults[method]`` is raised by that call; sends to ``failing_topics`` complete
    with an error (their futures fail)."""

    def __init__(self, log: list, faults: dict | None = None, failing_topics: tuple = ()) -> None:
        self.log, self.faults, self.failing_topics = log, dict(faults or {}), failing_topics
        self.offsets: dict[tuple[str, int | None], int] = {}

    def _call(self, *entry) -> None:
        self.log.append(entry)
        if entry[0] in self.faults:
            raise self.faults[entry[0]]

    def begin_transaction(self):
        self._call("begin_transaction")

    def send(self, topic, value=None, key=None, headers=None, partition=None):
        self._call("send", topic, partition, key)
        n = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = n + 1
        return Future(n, KafkaError("broker said no") if topic in self.failing_topics else None)

    def flush(self, timeout=None):
        self._call("flush")

    def send_offsets_to_transaction(self, offsets, group_metadata):
        self._call("send_offsets_to_transaction", dict(offsets), group_metadata)

    def commit_transaction(self):
        self._call("commit_transaction")

    def abort_transaction(self):
        self._call("abort_transaction")

    def init_transactions(self):
        self._call("init_transactions")

    def close(self, timeout=None):
        self._call("close", timeout)


class FakeConsumer:
    def __init__(self, log: list, faults: dict | None = None) -> None:
        self.log, self.faults = log, dict(faults or {})

    def commit(self, offsets):
        self.log.append(("commit", dict(offsets)))
        if "commit" in self.faults:
            raise self.faults["commit"]

    def group_metadata(self):
        self.log.append(("group_metadata",))
        return "group-metadata"


class FakeClients:
    """What a Checkpoint needs of ``clients.ScorerClients``; ``reset_producer`` swaps in a fresh fake."""

    def __init__(self, producer: FakeProducer, consumer: FakeConsumer) -> None:
        self.producer, self.consumer, self.partitions = producer, consumer, PARTITIONS
        self.log = producer.log

    def reset_producer(self) -> None:
        self.log.append(("reset_producer",))
        self.producer = FakeProducer(self.log)


def _batch(spec: FeatureSpec, online: OnlineFeatures) -> list:
    """Partition 0: 3 valid transactions and one invalid record; partition 1: 2 valid ones."""
    decoder = TransactionDecoder(DecodeLimits())
    parts = []
    for p, n, first in ((0, 3, 10), (1, 2, 40)):
        values = [
            json.dumps(
                {"tx_id": f"t{p}-{i}", "timestamp": 1_700_000_000_000 + i, "customer_id": f"c{p}{i % 2}",
                 "terminal_id": f"m{i}", "amount": 12.5}
            ).encode()
            for i in range(n)
        ]  # fmt: skip
        if p == 0:
            values.append(b"not json")
        records = [Record(first + i, None, v, 1_700_000_000_000) for i, v in enumerate(values)]
        d = decoder.decode(values)
        online.set_state(p, CustomerState(spec))
        online.compute(p, d.ts, d.customer_id, d.terminal_id, d.amount_cents)
        parts.append((TopicPartition("in", p), records, d))
    return parts


SCORES = np.array([0.1, 0.3, 0.6, 0.7, 0.95], dtype=np.float32)  # 3 fraud (>= 0.5), 1 alert (>= 0.9)


def _setup(eos=True, interval=3600.0, changelog=True, faults=None, failing_topics=(), consumer_faults=None):
    log: list = []
    spec = FeatureSpec()
    online = OnlineFeatures(spec, TerminalTable(spec))
    topics = TOPICS if changelog else replace(TOPICS, changelog=None)
    outputs = OutputSettings(
        topics, idempotent=eos and changelog, dlq_envelope=False, dlq_max_value_bytes=4096
    )
    clients = FakeClients(FakeProducer(log, faults, failing_topics), FakeConsumer(log, consumer_faults))
    metrics = ScorerMetrics(CollectorRegistry())
    book = PartitionBook()
    checkpoint = Checkpoint(
        CheckpointSettings(eos, topics.changelog, interval),
        outputs,
        clients,
        book,
        lambda: online.states,
        metrics,
    )
    return SimpleNamespace(
        log=log,
        checkpoint=checkpoint,
        clients=clients,
        book=book,
        metrics=metrics,
        parts=_batch(spec, online),
    )


def _commit(t):
    return t.checkpoint.commit(t.parts, SCORES, MODEL)


def _kind(entry: tuple) -> str:
    if entry[0] != "send":
        return entry[0]
    topic, key = entry[1], entry[3]
    return (
        "send:outputs"
        if topic in OUTPUT_TOPICS
        else "send:positions"
        if key == POSITIONS_KEY
        else "send:state"
    )


def _steps(log: list) -> list[str]:
    """The log, each run of sends of one kind (outputs, positions, state changelog) as one step."""
    out: list[str] = []
    for entry in log:
        kind = _kind(entry)
        if not (out and kind.startswith("send:") and out[-1] == kind):
            out.append(kind)
    return out


def _offsets(parts) -> dict[TopicPartition, int]:
    return {tp: records[-1].offset + 1 for tp, records, _ in parts}


def _commit_failures(metrics: ScorerMetrics, kind: str) -> float:
    return metrics.registry.get_sample_value("fraudlite_commit_failures_total", {"kind": kind})


# -- the steps ----------------------------------------------------------------------------------------


def test_exactly_once_without_a_due_changelog():
    t = _setup(eos=True, interval=3600.0)
    done = _commit(t)
    assert _steps(t.log) == [
        "begin_transaction",
        "send:outputs",  # partition 0: decisions, DLQ
        "send:positions",
        "send:outputs",  # partition 1: decisions, alert
        "send:positions",
        "group_metadata",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    offsets, metadata = t.log[-2][1:]
    assert {tp: o.offset for tp, o in offsets.items()} == _offsets(t.parts) and metadata == "group-metadata"
    assert all(t.book.dirty[p] for p in (0, 1)), "the changed customers wait for the next changelog record"
    assert (done.sent.fraud, done.sent.alerts, done.sent.invalid_reasons) == (3, 1, ["bad_json"])
    assert done.sent_at <= done.committed_at
    assert t.book.out_pos == {0: {"decisions": 3, "dlq": 1}, 1: {"decisions": 2, "alerts": 1}}, "note_sent"


def test_exactly_once_flushes_the_outputs_before_a_due_changelog():
    t = _setup(eos=True, interval=0.0)
    _commit(t)
    assert _steps(t.log) == [
        "begin_transaction",
        "send:outputs",
        "send:positions",
        "send:outputs",
        "send:positions",
        "flush",
        "send:state",
        "group_metadata",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    state = [e[2] for e in t.log if _kind(e) == "send:state"]
    assert sorted(set(state)) == [0, 1], "both partitions' changed customers, to their own partitions"
    assert not any(t.book.dirty.values()), "the changelog took the changed customers"


def test_at_least_once_with_a_due_changelog():
    t = _setup(eos=False, interval=0.0)
    _commit(t)
    assert _steps(t.log) == ["send:outputs", "flush", "send:state", "flush", "commit"]
    assert {tp: o.offset for tp, o in t.log[-1][1].items()} == _offsets(t.parts)


def test_at_least_once_without_a_due_changelog():
    t = _setup(eos=False, interval=3600.0)
    _commit(t)
    assert _steps(t.log) == ["send:outputs", "flush", "flush", "commit"]


def test_no_changelog_topic_no_changelog_records():
    t = _setup(eos=True, interval=0.0, changelog=False)
    _commit(t)
    assert _steps(t.log) == [
        "begin_transaction", "send:outputs", "group_metadata", "send_offsets_to_transaction", "commit_transaction"
    ]  # fmt: skip
    assert not t.book.dirty, "changed customers are not tracked without a changelog"


# -- failures -----------------------------------------------------------------------------------------


def test_commit_failure_surfaces_and_the_recovery_abort_replaces_a_fenced_producer():
    t = _setup(eos=True, faults={"commit_transaction": KafkaError("coordinator gone")})
    old = t.clients.producer
    with pytest.raises(KafkaError, match="coordinator gone"):
        _commit(t)
    assert _commit_failures(t.metrics, "transaction") == 1
    assert not t.book.out_pos, "nothing noted for a batch that was not committed"
    old.faults["abort_transaction"] = KafkaError("producer fenced")
    t.checkpoint.abort()  # what Scorer._recover does first, before it rebuilds the state
    assert [e[0] for e in t.log[-2:]] == ["abort_transaction", "reset_producer"]
    assert t.clients.producer is not old


@pytest.mark.parametrize(
    "fault, reset",
    [(None, False), (RuntimeError("not the broker's"), False), (KafkaTimeoutError("no answer"), True)],
    ids=["aborted", "other-error-keeps-the-producer", "kafka-error-replaces-the-producer"],
)
def test_abort(fault, reset):
    t = _setup(eos=True, faults={"abort_transaction": fault} if fault else {})
    t.checkpoint.abort()
    assert [e[0] for e in t.log] == ["abort_transaction"] + (["reset_producer"] if reset else [])


def test_abort_at_least_once_does_nothing():
    t = _setup(eos=False, faults={"abort_transaction": KafkaError("x")})
    t.checkpoint.abort()
    assert t.log == []


def test_at_least_once_failed_output_stops_before_the_changelog_and_the_commit():
    t = _setup(eos=False, interval=0.0, failing_topics=("out",))
    with pytest.raises(KafkaIOError, match="produce failed"):
        _commit(t)
    assert _steps(t.log) == ["send:outputs", "flush"]
    assert _commit_failures(t.metrics, "commit") == 0, "a failed output is not a failed commit"
    assert t.book.dirty[0], "the changelog did not take the changes"


def test_at_least_once_failed_changelog_send_stops_the_commit():
    t = _setup(eos=False, interval=0.0, failing_topics=("changelog",))
    with pytest.raises(KafkaIOError, match="produce failed"):
        _commit(t)
    assert _steps(t.log) == ["send:outputs", "flush", "send:state", "flush"]


@pytest.mark.parametrize("where", ["flush", "commit"])
def test_at_least_once_commit_step_errors_count_as_commit_failures(where):
    error = KafkaTimeoutError("no answer")
    t = _setup(eos=False, consumer_faults={"commit": error} if where == "commit" else None)
    if where == "flush":  # the first flush (step 3) passes, the commit's fails
        calls = iter([None, error])

        def flush(timeout=None):
            t.log.append(("flush",))
            if (e := next(calls)) is not None:
                raise e

        t.clients.producer.flush = flush
    with pytest.raises(KafkaTimeoutError):
        _commit(t)
    assert _commit_failures(t.metrics, "commit") == 1
    assert _steps(t.log)[-1] == ("flush" if where == "flush" else "commit")


def test_begin_failure_sends_nothing():
    t = _setup(eos=True, faults={"begin_transaction": KafkaError("not ready")})
    with pytest.raises(KafkaError, match="not ready"):
        _commit(t)
    assert t.log == [("begin_transaction",)] and _commit_failures(t.metrics, "transaction") == 0


# -- the final changelog flush ------------------------------------------------------------------------


def _committed_with_changes(eos: bool):
    """A committed batch whose changed customers are in no changelog record yet."""
    t = _setup(eos=eos, interval=3600.0)
    _commit(t)
    t.log.clear()
    return t


@pytest.mark.parametrize("eos", [True, False], ids=["exactly-once", "at-least-once"])
def test_final_flush_writes_the_changed_state_in_its_own_transaction(eos):
    t = _committed_with_changes(eos)
    t.checkpoint.flush_changelog()
    end = "commit_transaction" if eos else "flush"
    assert _steps(t.log) == (["begin_transaction"] if eos else []) + ["send:state", end]
    assert {e[2] for e in t.log if e[0] == "send"} == {0, 1} and not any(t.book.dirty.values())


def test_final_flush_failure_only_logs(caplog):
    t = _committed_with_changes(eos=True)
    t.clients.producer.faults["commit_transaction"] = KafkaError("broker gone")
    with caplog.at_level(logging.WARNING, logger="fraudlite.streaming.checkpoint"):
        t.checkpoint.flush_changelog()  # does not raise
    assert "final changelog flush failed" in caplog.text and "broker gone" in caplog.text
    assert t.log[-1] == ("commit_transaction",)


def test_final_flush_without_changes_or_producer_does_nothing():
    t = _setup(eos=True)
    t.checkpoint.flush_changelog()
    assert t.log == [], "nothing changed"
    t = _committed_with_changes(eos=True)
    t.clients.producer = None  # closed: never connected, or between sessions
    t.checkpoint.flush_changelog()
    assert t.log == []


# -- the clients' producer reset, the settings --------------------------------------------------------


def test_reset_producer_closes_the_old_one_and_reuses_the_transactional_id(monkeypatch, tmp_path):
    log: list = []
    made: list = []

    def make(settings, transactional_id):
        made.append(transactional_id)
        return FakeProducer(log, {"init_transactions": KafkaError("still down")} if len(made) > 1 else {})

    monkeypatch.setattr("fraudlite.streaming.clients.make_scorer_producer", make)
    clients = ScorerClients(
        scorer_settings(ServeConfig("h:1", model_dir=tmp_path, transactional_id="pod-0")).clients
    )
    clients._new_producer()
    old = clients.producer
    old.faults["close"] = KafkaError("broken")  # closing a broken producer may fail too
    with pytest.raises(KafkaError, match="still down"):  # raised to the recovery, which retries
        clients.reset_producer()
    assert made == ["pod-0", "pod-0"] and clients.producer is not old
    assert log == [("init_transactions",), ("close", 0), ("init_transactions",)]


def test_settings_from_a_serve_config(tmp_path):
    s = scorer_settings(ServeConfig("h:1", model_dir=tmp_path, group_id="g", transaction_timeout_ms=10_000))
    assert s.clients.topics.changelog == "g-customer-state-changelog" == s.checkpoint.changelog_topic
    assert (
        s.checkpoint.exactly_once
        and s.outputs.idempotent
        and s.restore.idempotent
        and s.outputs.track_changes
    )
    assert (
        s.restore.timeout_s == 40.0
        and s.clients.fetch_max_wait_ms == 50
        and s.clients.max_poll_records == 2000
    )
    assert s.clients.transactional_id is None and s.clients.fallback_transactional_id.startswith("g-")

    off = scorer_settings(
        ServeConfig("h:1", model_dir=tmp_path, delivery=AT_LEAST_ONCE, state_changelog=False,
                    topics=Topics(changelog="given"), transactional_id="pod-1")
    )  # fmt: skip
    assert off.clients.topics.changelog is None and off.checkpoint.changelog_topic is None
    assert off.restore.topics.changelog is None and not off.outputs.track_changes
    assert not (off.checkpoint.exactly_once or off.outputs.idempotent or off.restore.idempotent)
    assert off.clients.fallback_transactional_id == "pod-1"
    with pytest.raises(AttributeError):
        off.checkpoint.exactly_once = True  # frozen
