"""Realized quality from late labels: ``replay --labels-topic`` into ``serve``; the label-outcome counters
equal what the labels file says about the decisions actually made.

A real trained model (``train_small``), the real embedded broker, the CLI's own flag parsing. Expected
counts come from the decisions and alerts topics and the labels file: every transaction of a day at
least ``delay_days`` before the last replayed day has had its label delivered, each exactly once.
The attribution of unmatched labels is checked with two members of one group (each counts only its
own), and the bounds with a tiny capacity and a one-day horizon. ``LabelOutcomes`` alone (no broker)
pins which unmatched labels count.
"""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from fraudlite.cli import build_parser, main
from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.kafkaio.wire import LabelDecoder, TransactionDecoder
from fraudlite.monitoring.outcomes import OUTCOMES
from fraudlite.streaming.config import build_serve_config
from fraudlite.streaming.label_outcomes import LabelOutcomes, input_partition
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.serve import make_scorer
from fraudlite.testing.streaming import ScorerThread

FIRST, LAST = "2026-03-01", "2026-03-14"
THRESHOLDS = ["--threshold", "0.02", "--alert-threshold", "0.05"]


@pytest.fixture(scope="module")
def trained(train_small):
    data, model = train_small("label-outcomes", 2)
    from fraudlite.data.transactions import load_transactions

    frame = load_transactions(str(data), {}, require_label=True)
    day = frame["ts"] // SECONDS_PER_DAY
    return SimpleNamespace(
        data=data,
        model=model,
        n=int(((day >= _day(FIRST)) & (day <= _day(LAST))).sum()),
        labels=dict(zip(frame["tx_id"], frame["label"].astype(int), strict=True)),
        day=dict(zip(frame["tx_id"], day, strict=True)),
        last_day=_day(LAST),
    )


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def replay(broker, trained, topic: str, labels: str, start: str = FIRST, end: str = LAST) -> None:
    argv = [
        "replay", "--data", str(trained.data), "--bootstrap-servers", broker.bootstrap, "--topic", topic,
        "--labels-topic", labels, "--label-delay-days", "7", "--start", start, "--end", end, "--partitions", "4",
    ]  # fmt: skip
    assert main(argv) == 0


def serve(
    broker, model, topic: str, labels: str, *extra: str, group: str | None = None, u: str | None = None
):
    """A scorer built the way ``fraudlite serve`` builds it, from these flags (outputs named after ``u``)."""
    u = u or uuid.uuid4().hex[:8]
    argv = [
        "serve", "--model", str(model), "--bootstrap-servers", broker.bootstrap, "--input-topic", topic,
        "--labels-topic", labels, "--output-topic", f"decisions-{u}", "--alerts-topic", f"alerts-{u}",
        "--dlq-topic", f"dlq-{u}", "--group-id", group or f"outcomes-{u}", "--metrics-port", "0",
        "--batch-max-records", "500", *THRESHOLDS, *extra,
    ]  # fmt: skip
    return make_scorer(build_serve_config(build_parser().parse_args(argv)))


def value(scorer, name: str, **labels) -> float:
    return scorer.metrics.registry.get_sample_value(name, labels) or 0.0


def outcomes(scorer, version: str, name: str = "fraudlite_label_outcomes_total") -> dict[str, int]:
    return {o: int(value(scorer, name, outcome=o, model_version=version)) for o in OUTCOMES}


def decided(consume_all, scorer, n: int) -> tuple[dict[str, dict], set[str]]:
    """Every decision (tx -> message) and the alerted tx ids of a scorer's output topics."""
    topics = scorer.config.topics
    out = {}
    for r in consume_all(topics.output, min_count=n):
        msg = json.loads(r.value)
        assert msg["tx_id"] not in out
        out[msg["tx_id"]] = msg
    alerts = {json.loads(r.value)["tx_id"] for r in consume_all(topics.alerts)}
    return out, alerts


def expected(trained, decisions: dict[str, dict], alerted: set[str], last: str = LAST) -> dict[str, int]:
    """Outcome counts of the labels delivered by the end: days <= last day - delay."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for tx in decisions:
        if trained.day[tx] <= _day(last) - 7:
            a, fraud = tx in alerted, trained.labels[tx] == 1
            counts[OUTCOMES[(0 if a else 2) + (0 if fraud else 1)]] += 1
    return counts


def wait_consumed(runs: list, n: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(r.scorer.summary.consumed for r in runs) < n:
        for r in runs:
            if r.error is not None:
                raise r.error
        assert time.monotonic() < deadline, [r.scorer.summary.consumed for r in runs]
        time.sleep(0.1)


pytestmark = pytest.mark.integration


def test_replayed_labels_count_outcomes_as_the_labels_file_says(broker, trained, consume_all):
    u = uuid.uuid4().hex[:8]
    topic, labels = f"tx-{u}", f"labels-{u}"
    replay(broker, trained, topic, labels)
    full = serve(broker, trained.model, topic, labels)
    tiny = serve(broker, trained.model, topic, labels, "--label-join-capacity", "100")
    short = serve(broker, trained.model, topic, labels, "--label-horizon-days", "1")
    runs = [ScorerThread(s).start() for s in (full, tiny, short)]
    for r in runs:
        wait_consumed([r], trained.n)
    for r in runs:
        r.stop()

    version = full.model.version
    decisions, alerted = decided(consume_all, full, trained.n)
    assert len(decisions) == trained.n
    want = expected(trained, decisions, alerted)
    labeled = sum(want.values())
    print(f"{trained.n} decisions, {labeled} labeled: {want}")
    assert labeled > trained.n / 3 and all(want[o] > 0 for o in OUTCOMES), want
    assert outcomes(full, version) == want, full.outcomes.join.evicted
    assert value(full, "fraudlite_labels_unmatched_total") == 0
    assert value(full, "fraudlite_label_join_entries") == trained.n - labeled, "the rest await labels"
    assert value(full, "fraudlite_label_join_bytes") > 100 * (trained.n - labeled)
    assert value(full, "fraudlite_label_join_evictions_total", reason="capacity") == 0
    assert outcomes(full, version, "fraudlite_shadow_label_outcomes_total") == dict.fromkeys(OUTCOMES, 0)

    # 100 decisions held: most labels come after their decision was evicted, and say so
    got = outcomes(tiny, version)
    assert value(tiny, "fraudlite_label_join_entries") <= 100
    assert value(tiny, "fraudlite_label_join_evictions_total", reason="capacity") >= trained.n - 100 - sum(
        got.values()
    )
    assert sum(got.values()) + value(tiny, "fraudlite_labels_unmatched_total") == labeled
    assert value(tiny, "fraudlite_labels_unmatched_total") > labeled / 2
    # a one-day horizon: no decision waits the 7 days its label takes
    assert sum(outcomes(short, version).values()) == 0
    assert value(short, "fraudlite_labels_unmatched_total") == labeled
    assert value(short, "fraudlite_label_join_evictions_total", reason="horizon") > 0


def test_two_members_each_count_their_own_decisions(broker, trained, consume_all):
    """A second member joins mid-stream: partitions move, every label is counted once in all, by the
    member that decided it, and none counts as unmatched (labels of the other member's decisions are
    not this member's)."""
    u = uuid.uuid4().hex[:8]
    topic, labels = f"tx-{u}", f"labels-{u}"
    end = "2026-03-16"  # the generated data's last day
    n = sum(1 for d in trained.day.values() if _day(FIRST) <= d <= _day(end))
    replay(broker, trained, topic, labels, end="2026-03-07")
    group = f"members-{u}"
    a = ScorerThread(serve(broker, trained.model, topic, labels, group=group, u=u)).start()
    wait_consumed([a], n // 6)
    b = ScorerThread(serve(broker, trained.model, topic, labels, group=group, u=u)).start()
    deadline = time.monotonic() + 60
    while not b.scorer.online.states:
        assert time.monotonic() < deadline, "the second member never got partitions"
        time.sleep(0.1)
    replay(broker, trained, topic, labels, start="2026-03-08", end=end)
    wait_consumed([a, b], n)
    waiting = [r.scorer.outcomes.waiting for r in (a, b)]
    a.stop()
    b.stop()
    assert a.scorer.summary.scored > 0 and b.scorer.summary.scored > 0
    decisions, alerted = decided(consume_all, a.scorer, n)
    assert len(decisions) == n
    want = expected(trained, decisions, alerted, end)
    version = a.scorer.model.version
    got_a, got_b = outcomes(a.scorer, version), outcomes(b.scorer, version)
    assert sum(got_a.values()) > 0 and sum(got_b.values()) > 0, "both members decided labeled transactions"
    assert {o: got_a[o] + got_b[o] for o in OUTCOMES} == want, (got_a, got_b)
    assert waiting == [0, 0]
    assert value(a.scorer, "fraudlite_labels_unmatched_total") == 0
    assert value(b.scorer, "fraudlite_labels_unmatched_total") == 0


# -- which unmatched labels count (no broker) -----------------------------------------------------------


def _parts(rows: list[tuple[int, str, str, int]]) -> list:
    """``[(partition, tx_id, customer_id, ts)]`` -> the scorer's batch parts."""
    decoder, parts = TransactionDecoder(), []
    for p in sorted({r[0] for r in rows}):
        values = [
            json.dumps(
                {"tx_id": t, "timestamp": ts * 1000, "customer_id": c, "terminal_id": "T", "amount": 1}
            ).encode()
            for q, t, c, ts in rows
            if q == p
        ]
        parts.append((TopicPartition("in", p), [SimpleNamespace(offset=i) for i in range(len(values))],
                      decoder.decode(values)))  # fmt: skip
    return parts


def _labels(rows: list[tuple[str, str, int, int]]):
    """``[(tx_id, customer_id, ts, label)]`` -> decoded labels."""
    return LabelDecoder().decode([
        json.dumps({"tx_id": t, "customer_id": c, "terminal_id": "T", "timestamp": ts * 1000, "label": y}).encode()
        for t, c, ts, y in rows
    ])  # fmt: skip


def test_labels_join_after_the_batch_and_only_this_members_count_as_unmatched():
    customers = {p: next(f"c{i}" for i in range(1000) if input_partition(f"c{i}", 4) == p) for p in range(4)}
    owner = SimpleNamespace(assigned={TopicPartition("in", 0), TopicPartition("in", 1)})
    metrics = ScorerMetrics(CollectorRegistry(), process=False)
    outcomes = LabelOutcomes(metrics, (1000, 30 * SECONDS_PER_DAY), owner)
    outcomes.attach(SimpleNamespace(on_labels=None), 4)
    t0 = 1_767_225_600
    c0, c1, c2 = customers[0], customers[1], customers[2]
    model = SimpleNamespace(alert_threshold=0.5, version="v1")
    r = metrics.registry

    def count(outcome: str) -> float:
        labels = {"outcome": outcome, "model_version": "v1"}
        return r.get_sample_value("fraudlite_label_outcomes_total", labels) or 0.0

    def unmatched() -> float:
        return r.get_sample_value("fraudlite_labels_unmatched_total")

    parts = _parts([(0, "a", c0, t0 + 100), (0, "c", c0, t0 + 300), (1, "b", c1, t0 + 200)])
    outcomes.record(parts, np.array([0.9, 0.1, 0.1], np.float32), model)
    outcomes.on_labels(_labels([
        ("a", c0, t0 + 100, 1),  # matched: true positive
        ("b", c1, t0 + 200, 1),  # matched: false negative
        ("x", c0, t0 + 50, 0),  # partition 0, before this member's first decision there: not its own
        ("y", c0, t0 + 150, 0),  # partition 0 decided past it without it: unmatched
        ("z", c2, t0 + 150, 0),  # partition 2 is another member's
        ("w", "", t0 + 150, 0),  # no customer id: cannot tell whose
        ("a", c0, t0 + 100, 1),  # a second label for a: its decision is gone: unmatched
        ("q", c1, t0 + 250, 1),  # partition 1 has not decided that far yet: waits
    ]))  # fmt: skip
    assert count("true_positive") == 0 and unmatched() == 0, "labels wait for the batch's decisions"
    outcomes.settle()
    assert (count("true_positive"), count("false_negative"), unmatched()) == (1, 1, 2)
    assert outcomes.waiting == 1
    outcomes.record(_parts([(1, "q", c1, t0 + 250)]), np.array([0.7], np.float32), model)
    assert count("true_positive") == 2 and outcomes.waiting == 0, "q found its decision once it came"
    # a label waiting for a partition that goes to another member is that member's
    outcomes.on_labels(_labels([("v", c1, t0 + 900, 0)]))
    outcomes.settle()
    assert outcomes.waiting == 1
    owner.assigned = {TopicPartition("in", 0)}
    outcomes.settle()
    assert outcomes.waiting == 0 and unmatched() == 2
    # one whose partition decides past it without it is unmatched
    outcomes.on_labels(_labels([("s", c0, t0 + 400, 0)]))
    outcomes.record(_parts([(0, "t", c0, t0 + 500)]), np.array([0.1], np.float32), model)
    assert unmatched() == 3 and outcomes.waiting == 0
    assert r.get_sample_value("fraudlite_label_join_entries") == 2  # c and t await their labels


def test_no_labels_topic_or_zero_capacity_means_no_join(tmp_path):
    from fraudlite.streaming.config import ServeConfig, Topics

    base = dict(bootstrap_servers="h:1", model_dir=tmp_path)
    assert ServeConfig(**base).label_join(7) == (200_000, 8 * SECONDS_PER_DAY)
    assert ServeConfig(**base, label_horizon_days=30).label_join(7) == (200_000, 30 * SECONDS_PER_DAY)
    assert ServeConfig(**base, topics=Topics(labels=None)).label_join(7) is None
    assert ServeConfig(**base, label_join_capacity=0).label_join(7) is None
    off = LabelOutcomes(
        ScorerMetrics(CollectorRegistry(), process=False), None, SimpleNamespace(assigned=set())
    )
    feed = SimpleNamespace(on_labels=None)
    off.attach(feed, 4)
    assert not off.enabled and feed.on_labels is None
    off.record(_parts([(0, "a", "c", 1_767_225_600)]), np.array([0.9], np.float32), SimpleNamespace())
    off.on_labels(_labels([("a", "c", 1_767_225_600, 1)]))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--label-join-capacity", "-1"], "--label-join-capacity"),
        (["--label-horizon-days", "0"], "--label-horizon-days"),
    ],
)
def test_bad_label_join_flags_exit_2(tmp_path, capsys, flags, message):
    argv = ["serve", "--model", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
