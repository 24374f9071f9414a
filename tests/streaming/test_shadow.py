"""``serve --shadow-model``: a second real trained model scores the same batches, decides nothing, writes
one shadow decision per decision, and its metrics agree with what the topics hold.

Two models trained on the same generated data (``train_small``, different epochs), the embedded broker,
the CLI's flags. A reference scorer without a shadow runs over the same input: the served decisions
must be identical. The transaction order (shadow records inside the batch's transaction, checked like
every output) is pinned without a broker by a logging producer.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from fraudlite.cli import build_parser, main
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudlite.kafkaio.clients import KafkaIOError
from fraudlite.kafkaio.wire import TransactionDecoder
from fraudlite.monitoring.outcomes import OUTCOMES
from fraudlite.streaming.checkpoint import Checkpoint
from fraudlite.streaming.config import Topics, build_serve_config
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.serve import make_scorer
from fraudlite.streaming.settings import CheckpointSettings, OutputSettings
from fraudlite.streaming.shadow import Shadow
from fraudlite.testing.streaming import ScorerThread, write_model

FIRST, LAST = "2026-03-01", "2026-03-14"


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


@pytest.fixture(scope="module")
def trained(train_small):
    data, served = train_small("shadow-served", 2)
    shadow = data.parent / "challenger"  # another seed and window, as a retrain would give
    argv = ["train", "--data", str(data), "--train-start", "2026-02-07", "--train-end", "2026-02-28",
            "--seed", "3", "--max-epochs", "3", "--out", str(shadow)]  # fmt: skip
    assert main(argv) == 0
    from fraudlite.data.transactions import load_transactions

    frame = load_transactions(str(data), {}, require_label=True)
    day = frame["ts"] // SECONDS_PER_DAY
    return SimpleNamespace(
        data=data,
        served=served,
        shadow=shadow,
        n=int(((day >= _day(FIRST)) & (day <= _day(LAST))).sum()),
        labels=dict(zip(frame["tx_id"], frame["label"].astype(int), strict=True)),
        day=dict(zip(frame["tx_id"], day, strict=True)),
    )


def serve_argv(broker, model, topic: str, labels: str, *extra: str) -> list[str]:
    u = uuid.uuid4().hex[:8]
    return [
        "serve", "--model", str(model), "--bootstrap-servers", broker.bootstrap, "--input-topic", topic,
        "--labels-topic", labels, "--output-topic", f"decisions-{u}", "--alerts-topic", f"alerts-{u}",
        "--dlq-topic", f"dlq-{u}", "--group-id", f"shadow-{u}", "--metrics-port", "0",
        "--batch-max-records", "500", "--threshold", "0.02", "--alert-threshold", "0.05", *extra,
    ]  # fmt: skip


def value(scorer, name: str, **labels) -> float:
    return scorer.metrics.registry.get_sample_value(name, labels) or 0.0


def records(consume_all, topic: str, n: int = 0) -> dict[str, tuple]:
    """tx -> (partition, key, message) of every record of ``topic``; each tx once."""
    out = {}
    for r in consume_all(topic, min_count=n):
        msg = json.loads(r.value)
        assert msg["tx_id"] not in out, f"two records for {msg['tx_id']} in {topic}"
        out[msg["tx_id"]] = (r.partition, r.key, msg)
    return out


def expected(trained, alerted: dict[str, bool]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for tx, a in alerted.items():
        if trained.day[tx] <= _day(LAST) - 7:
            counts[OUTCOMES[(0 if a else 2) + (0 if trained.labels[tx] == 1 else 1)]] += 1
    return counts


pytestmark = pytest.mark.integration


def test_the_shadow_scores_every_decision_and_never_changes_one(broker, trained, consume_all):
    u = uuid.uuid4().hex[:8]
    topic, labels, shadow_topic = f"tx-{u}", f"labels-{u}", f"decisions-shadow-{u}"
    argv = [
        "replay", "--data", str(trained.data), "--bootstrap-servers", broker.bootstrap, "--topic", topic,
        "--labels-topic", labels, "--start", FIRST, "--end", LAST, "--partitions", "4",
    ]  # fmt: skip
    assert main(argv) == 0
    with_shadow = serve_argv(broker, trained.served, topic, labels, "--shadow-model", str(trained.shadow),
                             "--shadow-topic", shadow_topic)  # fmt: skip
    scorer = make_scorer(build_serve_config(build_parser().parse_args(with_shadow)))
    reference = make_scorer(
        build_serve_config(build_parser().parse_args(serve_argv(broker, trained.served, topic, labels)))
    )
    assert reference.shadow is None and reference.config.topics.shadow is None
    runs = [ScorerThread(s).start() for s in (scorer, reference)]
    for r in runs:
        r.wait_scored(trained.n, timeout_s=120)
    for r in runs:
        r.stop()

    served, shadow = scorer.model, scorer.shadow.model
    assert shadow.version != served.version and shadow.spec == served.spec
    assert (shadow.threshold, shadow.alert_threshold) == (0.02, 0.05), "the serve overrides apply to it too"
    decisions = records(consume_all, scorer.config.topics.output, trained.n)
    ref = records(consume_all, reference.config.topics.output, trained.n)
    assert len(decisions) == trained.n
    assert {tx: m for tx, (_, _, m) in decisions.items()} == {
        tx: {**m, "scored_at": decisions[tx][2]["scored_at"]} for tx, (_, _, m) in ref.items()
    }, "the served decisions are those of a scorer without a shadow"
    shadowed = records(consume_all, shadow_topic, trained.n)
    assert sorted(shadowed) == sorted(decisions), "one shadow decision per decision"
    for tx, (p, key, msg) in shadowed.items():
        assert (p, key) == decisions[tx][:2], "same key, same partition as the decision"
        assert msg["model_version"] == shadow.version and msg["threshold"] == shadow.threshold
        assert msg["decision"] == ("fraud" if msg["score"] >= shadow.threshold else "legit")
        assert set(msg) == set(decisions[tx][2]), "the decision JSON, nothing more"

    alerts = {json.loads(r.value)["tx_id"] for r in consume_all(scorer.config.topics.alerts)}
    served_score = {tx: m["score"] for tx, (_, _, m) in decisions.items()}
    shadow_score = {tx: m["score"] for tx, (_, _, m) in shadowed.items()}
    shadow_alert = {tx: s >= shadow.alert_threshold for tx, s in shadow_score.items()}
    decision_differs = sum(decisions[tx][2]["decision"] != shadowed[tx][2]["decision"] for tx in decisions)
    alert_differs = sum((tx in alerts) != shadow_alert[tx] for tx in decisions)
    print(f"{trained.n} decisions, {len(alerts)} alerts; shadow disagrees on {decision_differs} decisions, "
          f"{alert_differs} alerts")  # fmt: skip
    assert 0 < alert_differs < trained.n / 2
    assert value(scorer, "fraudlite_shadow_scored_total") == trained.n
    assert value(scorer, "fraudlite_shadow_disagreements_total", kind="decision") == decision_differs
    assert value(scorer, "fraudlite_shadow_disagreements_total", kind="alert") == alert_differs
    assert value(scorer, "fraudlite_shadow_score_delta_count") == trained.n
    delta = sum(abs(shadow_score[tx] - served_score[tx]) for tx in decisions)
    assert value(scorer, "fraudlite_shadow_score_delta_sum") == pytest.approx(delta, abs=1e-5 * trained.n)
    assert value(scorer, "fraudlite_shadow_model_info", version=shadow.version, form=shadow.form) == 1
    batches = scorer.summary.batches
    assert value(scorer, "fraudlite_stage_seconds_count", stage="shadow") == batches
    assert value(reference, "fraudlite_stage_seconds_count", stage="shadow") == 0
    assert value(reference, "fraudlite_shadow_scored_total") == 0

    # realized quality of both, from the same late labels
    want_served = expected(trained, {tx: tx in alerts for tx in decisions})
    want_shadow = expected(trained, shadow_alert)
    assert all(want_shadow[o] > 0 for o in ("true_positive", "false_positive", "true_negative")), want_shadow

    def got(name: str, version: str) -> dict[str, int]:
        return {o: int(value(scorer, name, outcome=o, model_version=version)) for o in OUTCOMES}

    assert got("fraudlite_label_outcomes_total", served.version) == want_served
    assert got("fraudlite_shadow_label_outcomes_total", shadow.version) == want_shadow
    assert value(scorer, "fraudlite_labels_unmatched_total") == 0


def test_shadow_model_problems_exit_2(tmp_path, trained, capsys):
    other = write_model(tmp_path / "other-spec", spec=FeatureSpec(delay_days=3))
    base = ["serve", "--model", str(trained.served), "--bootstrap-servers", "127.0.0.1:1"]
    cases = [
        (["--shadow-model", str(other.path)], "--shadow-model"),
        (["--shadow-model", str(other.path)], "feature spec differs from the served model's"),
        (["--shadow-model", str(tmp_path / "missing")], "--shadow-model: not a directory"),
        (["--shadow-model", str(trained.shadow), "--shadow-topic", "fraud-decisions"], "must be distinct"),
        (["--shadow-model", str(trained.shadow), "--shadow-topic", "bad topic"], "--shadow-topic"),
    ]
    for flags, message in cases:
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


# -- the batch's transaction (no broker) ----------------------------------------------------------------


class LoggingProducer:
    """Records every call; sends to ``failing`` complete with an error."""

    def __init__(self, failing: tuple = ()) -> None:
        self.log: list = []
        self.failing = failing

    def begin_transaction(self):
        self.log.append(("begin",))

    def send(self, topic, value=None, key=None, headers=None, partition=None):
        self.log.append(("send", topic))
        error = KafkaError("broker said no") if topic in self.failing else None
        return SimpleNamespace(
            failed=lambda: error is not None, succeeded=lambda: error is None, exception=error,
            value=SimpleNamespace(offset=0),
        )  # fmt: skip

    def flush(self, timeout=None):
        self.log.append(("flush",))

    def send_offsets_to_transaction(self, offsets, group_metadata):
        self.log.append(("send_offsets",))

    def commit_transaction(self):
        self.log.append(("commit",))


def _batch():
    values = [
        json.dumps({"tx_id": f"t{i}", "timestamp": 1_767_225_600_000 + i, "customer_id": f"c{i}",
                    "terminal_id": "m", "amount": 5.0}).encode()
        for i in range(3)
    ]  # fmt: skip
    recs = [SimpleNamespace(offset=i, key=None, value=v, timestamp=0) for i, v in enumerate(values)]
    return [(TopicPartition("in", 0), recs, TransactionDecoder().decode(values))]


@pytest.mark.parametrize("eos", [True, False], ids=["exactly-once", "at-least-once"])
def test_shadow_decisions_are_sent_inside_the_batch_before_its_commit(eos, trained):
    from fraudlite.streaming.reload import load_model

    topics = Topics(input="in", output="out", alerts="alerts", dlq="dlq", labels=None, shadow="shadow")
    partitions = {"in": 1, "out": 1, "alerts": 1, "dlq": 1, "shadow": 1}
    metrics = ScorerMetrics(CollectorRegistry(), process=False)
    served = load_model(trained.served, 0.02, 0.05)
    shadow = Shadow(load_model(trained.shadow, 0.02, 0.05), topics, metrics)
    for failing in ((),) if eos else ((), ("shadow",)):
        producer = LoggingProducer(failing)
        log = producer.log
        consumer = SimpleNamespace(commit=lambda offsets, log=log: log.append(("consumer_commit",)),
                                   group_metadata=lambda: "meta")  # fmt: skip
        clients = SimpleNamespace(producer=producer, consumer=consumer, partitions=partitions)
        checkpoint = Checkpoint(
            CheckpointSettings(eos, None, 3600.0), OutputSettings(topics, False, False, 4096), clients,
            PartitionBook(), dict, metrics,
        )  # fmt: skip
        parts = _batch()
        x = np.zeros((3, served.spec.n_features), np.float32)
        batch = shadow.batch(x, parts, partitions)
        assert len(batch.scores) == 3 and batch.seconds >= 0
        if failing and not eos:
            with pytest.raises(KafkaIOError):
                checkpoint.commit(parts, served.scorer.score(x), served, None, batch.send)
            assert ("consumer_commit",) not in producer.log, "a failed shadow send stops the commit"
            continue
        checkpoint.commit(parts, served.scorer.score(x), served, None, batch.send)
        kinds = [e[1] if e[0] == "send" else e[0] for e in producer.log]
        end = kinds.index("commit") if eos else kinds.index("consumer_commit")
        assert kinds.count("shadow") == 3 and kinds.index("shadow") > kinds.index("out")
        assert max(i for i, k in enumerate(kinds) if k == "shadow") < end
        assert kinds[0] == ("begin" if eos else "out")
