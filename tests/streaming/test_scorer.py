"""The streaming scorer against the real embedded broker (no Kafka mocks).

Exactly-once (N in -> exactly N decisions, read_committed), DLQ routing, restart with state restored,
two members in one group, at-least-once, hot reload, graceful shutdown of the CLI process and the
metrics it serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.streaming.config import AT_LEAST_ONCE, BatchConfig, ServeConfig, Topics
from fraudlite.streaming.scorer import Scorer
from fraudlite.streaming.serve import make_scorer
from fraudlite.testing.streaming import ScorerThread, feature_stats, make_transactions, produce, write_model

pytestmark = pytest.mark.integration

N = 3000


@pytest.fixture(scope="module")
def data():
    return make_transactions(N, customers=80, terminals=60, days=24, seed=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory, data):
    return write_model(tmp_path_factory.mktemp("model") / "m", stats=feature_stats(data), seed=1)


@pytest.fixture
def topics(make_topic):
    def make(partitions: int = 4) -> Topics:
        u = uuid.uuid4().hex[:8]
        return Topics(
            input=make_topic(partitions),
            output=f"decisions-{u}",
            alerts=f"alerts-{u}",
            dlq=f"dlq-{u}",
            labels=make_topic(partitions),
        )

    return make


def config(broker, topics: Topics, source: Path, **kw) -> ServeConfig:
    kw.setdefault("group_id", f"scorer-{uuid.uuid4().hex[:8]}")
    kw.setdefault("metrics_port", 0)
    kw.setdefault("batch", BatchConfig(max_records=300, max_ms=20))
    if "registry_dir" not in kw:
        kw["model_dir"] = source
    return ServeConfig(bootstrap_servers=broker.bootstrap, topics=topics, **kw)


def decisions(consume_all, topic: str, n: int, **kw) -> dict[str, dict]:
    records = consume_all(topic, min_count=n, **kw)
    out: dict[str, dict] = {}
    for r in records:
        msg = json.loads(r.value)
        assert msg["tx_id"] not in out, f"duplicate decision for {msg['tx_id']}"
        assert r.key == msg["customer_id"].encode()
        out[msg["tx_id"]] = msg
    return out


def reference_decisions(broker, t: Topics, model, consume_all) -> dict[str, dict]:
    """Decisions of an uninterrupted single-scorer run over ``t.input`` (own group, ``-ref`` outputs)."""
    ref_topics = Topics(input=t.input, output=t.output + "-ref", alerts=t.alerts + "-ref", dlq=t.dlq + "-ref",
                        labels=t.labels)  # fmt: skip
    ref = ScorerThread(Scorer(config(broker, ref_topics, model.path), _load(model.path))).start()
    ref.wait_scored(N)
    ref.stop()
    return decisions(consume_all, ref_topics.output, N)


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels) -> float:
    """Sum of the samples called ``name`` (or ``name_total``) whose labels include ``labels``."""
    names = (name, name + "_total")
    return sum(
        s.value
        for fam in families.values()
        for s in fam.samples
        if s.name in names and labels.items() <= s.labels.items()
    )


def test_exactly_once_n_in_n_decisions(broker, topics, model, data, consume_all, kafka_client):
    t = topics()
    produce(broker.bootstrap, t.input, data.messages())
    scorer = Scorer(config(broker, t, model.path, kafka_client=kafka_client), _load(model.path))
    run = ScorerThread(scorer).start()
    run.wait_scored(N)
    fams = scrape(scorer.metrics_port)  # live endpoint while serving
    run.stop()
    out = decisions(consume_all, t.output, N)
    assert sorted(out) == sorted(data.tx_id)
    version = model.version
    for tx_id, cust in zip(data.tx_id, data.customer_id, strict=True):
        d = out[tx_id]
        assert d["customer_id"] == cust and d["model_version"] == version and d["threshold"] == 0.5
        assert d["decision"] == ("fraud" if d["score"] >= 0.5 else "legit")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["scored_at"])
    alerts = decisions(consume_all, t.alerts, 0)
    assert set(alerts) == {k for k, d in out.items() if d["score"] >= 0.9}
    assert consume_all(t.dlq) == []
    assert sample(fams, "fraudlite_transactions_scored") == N
    assert sample(fams, "fraudlite_transactions_scored", decision="fraud") == sum(
        d["decision"] == "fraud" for d in out.values()
    )
    assert sample(fams, "fraudlite_messages_consumed") == N
    assert sample(fams, "fraudlite_alerts") == len(alerts)
    assert sample(fams, "fraudlite_end_to_end_latency_seconds_count") == N
    assert sample(fams, "fraudlite_stage_seconds_count", stage="inference") >= N / 300
    assert sample(fams, "fraudlite_model_info", version=version, model_type="mlp") == 1
    assert sample(fams, "fraudlite_scorer_ready") == 1
    assert sample(fams, "fraudlite_assigned_partitions") == 4
    assert sample(fams, "process_resident_memory_bytes") > 0


def test_dlq_routing_with_reasons(broker, topics, model, data, consume_all, kafka_client):
    t = topics(partitions=2)
    good = data.messages()[:400]
    bad = {
        b"not json at all": "bad_json",
        b'{"tx_id": "x", "timestamp": 1767225600000}': "missing_field",
        b'{"tx_id":"n","timestamp":1767225600000,"customer_id":"C1","terminal_id":"T1","amount":NaN}': "bad_amount",
        b'{"tx_id":"m","timestamp":1767225600000,"customer_id":"C1","terminal_id":"T1","amount":-5}': "bad_amount",
        b'{"tx_id":"f","timestamp":99999999999999,"customer_id":"C1","terminal_id":"T1","amount":5}': "bad_timestamp",
        b"\xff\xfe\x00garbage": "not_utf8",
        b"[1, 2, 3]": "not_object",
        b'{"tx_id":"s","timestamp":1767225600000,"customer_id":"C1","terminal_id":"T1","amount":"5"}': "bad_type",
        b"{" + b'"pad":"' + b"x" * 20000 + b'"}': "oversize",
    }
    messages = []
    for i, (value, _) in enumerate(bad.items()):
        messages += good[i * 40 : (i + 1) * 40] + [(b"C1", value)]
    messages += good[len(bad) * 40 :]
    produce(broker.bootstrap, t.input, messages)
    scorer = Scorer(config(broker, t, model.path, kafka_client=kafka_client), _load(model.path))
    run = ScorerThread(scorer).start()
    run.wait_scored(len(messages))
    fams = scrape(scorer.metrics_port)
    run.stop()
    out = decisions(consume_all, t.output, len(good))
    assert sorted(out) == sorted(json.loads(v)["tx_id"] for _, v in good)
    source = {(r.partition, r.offset): r.value for r in consume_all(t.input)}
    dlq = consume_all(t.dlq, min_count=len(bad))
    assert len(dlq) == len(bad)
    for r in dlq:
        h = {k: v.decode() for k, v in r.headers}
        assert h["fraudlite.source.topic"] == t.input
        original = source[(int(h["fraudlite.source.partition"]), int(h["fraudlite.source.offset"]))]
        assert r.value == original
        assert h["fraudlite.dlq.reason"] == bad[original]
    for reason in set(bad.values()):
        assert sample(fams, "fraudlite_dlq_messages", reason=reason) == list(bad.values()).count(reason)


@pytest.mark.parametrize(
    "interval,final_flush",
    [(0.0, True), (3600.0, False)],
    ids=["changelog-every-batch", "no-changelog-yet-replay-input"],
)
def test_restart_mid_stream_restores_state(
    broker, topics, model, data, consume_all, interval, final_flush, kafka_client
):
    """Stop after about half, start a new scorer: every decision equals an uninterrupted run's.

    Second case: nothing reached the changelog (as after a crash), so the new scorer rebuilds the
    customer state by replaying the committed input.
    """
    t = topics()
    produce(broker.bootstrap, t.input, data.messages())
    cfg = config(broker, t, model.path, changelog_interval_s=interval, kafka_client=kafka_client)
    first = ScorerThread(Scorer(cfg, _load(model.path))).start()
    if not final_flush:
        first.scorer._flush_changelog = lambda: None
    first.wait_scored(N // 2)
    first.stop()
    done = first.scorer.summary.consumed
    assert N // 2 <= done < N, "stopped mid-stream"
    second = Scorer(cfg, _load(model.path))
    run = ScorerThread(second).start()
    run.wait_scored(N - done)
    run.stop()
    assert second.summary.consumed == N - done, "resumed exactly at the committed offsets"
    out = decisions(consume_all, t.output, N)
    assert sorted(out) == sorted(data.tx_id)

    expected = reference_decisions(broker, t, model, consume_all)
    diff = [k for k in expected if out[k]["score"] != expected[k]["score"]]
    assert not diff, f"{len(diff)} decisions differ from an uninterrupted run, e.g. {diff[:3]}"


def test_two_members_share_partitions(broker, topics, model, data, consume_all, kafka_client):
    t = topics()
    half = N // 2
    messages = data.messages()
    produce(broker.bootstrap, t.input, messages[:half])
    cfg = config(broker, t, model.path, kafka_client=kafka_client)
    a = ScorerThread(Scorer(cfg, _load(model.path))).start()
    a.wait_scored(half // 3)
    b_cfg = config(broker, t, model.path, group_id=cfg.group_id, kafka_client=kafka_client)
    b = ScorerThread(Scorer(b_cfg, _load(model.path))).start()
    deadline = time.monotonic() + 30
    while not (b.scorer.online.states and a.scorer.summary.consumed >= half // 2):
        assert time.monotonic() < deadline, "second member never got partitions"
        time.sleep(0.1)
    # Day by day, as a live stream arrives: one burst holding days more than delay_days apart in different
    # partitions could show a member a later day before an earlier one of a partition the other member
    # owns (the terminal feed reads those only as far as the topic goes), which no live feed does.
    days = np.asarray(data.ts[half:]) // SECONDS_PER_DAY
    for day in np.unique(days):
        produce(
            broker.bootstrap, t.input, [m for m, d in zip(messages[half:], days, strict=True) if d == day]
        )
    deadline = time.monotonic() + 60
    while a.scorer.summary.consumed + b.scorer.summary.consumed < N:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    a.stop()
    b.stop()
    assert a.scorer.summary.scored > 0 and b.scorer.summary.scored > 0
    out = decisions(consume_all, t.output, N)
    assert sorted(out) == sorted(data.tx_id)
    expected = reference_decisions(broker, t, model, consume_all)
    diff = [k for k in expected if out[k]["score"] != expected[k]["score"]]
    assert not diff, f"{len(diff)} decisions differ from a single-member run, e.g. {diff[:3]}"


def test_at_least_once(broker, topics, model, data, consume_all, kafka_client):
    t = topics(partitions=2)
    produce(broker.bootstrap, t.input, data.messages()[:1000])
    cfg = config(broker, t, model.path, delivery=AT_LEAST_ONCE, kafka_client=kafka_client)
    first = ScorerThread(Scorer(cfg, _load(model.path))).start()
    first.wait_scored(500)
    first.stop()
    second = ScorerThread(Scorer(cfg, _load(model.path))).start()
    second.wait_scored(1000 - first.scorer.summary.consumed)
    second.stop()
    records = consume_all(t.output, min_count=1000, isolation_level="read_uncommitted")
    ids = [json.loads(r.value)["tx_id"] for r in records]
    assert sorted(set(ids)) == sorted(data.tx_id[:1000])
    assert len(ids) == 1000, "a clean stop/restart repeats nothing"


def test_hot_reload_from_registry(broker, topics, data, tmp_path, consume_all):
    registry = tmp_path / "registry"
    stats = feature_stats(data)
    v1 = write_model(registry / "versions" / "v1", stats=stats, seed=1)
    v2 = write_model(registry / "versions" / "v2", stats=stats, seed=2)
    bad = write_model(registry / "versions" / "v3", stats=stats, seed=3)
    with open(bad.onnx_path, "r+b") as f:  # tampered after writing: sha256 no longer matches
        f.seek(100)
        f.write(b"\x00\x01\x02")
    (registry / "champion").write_text("v1\n")
    t = topics(partitions=2)
    messages = data.messages()
    cfg = config(broker, t, None, registry_dir=registry, reload_interval_s=0.2)
    scorer = make_scorer(cfg)
    run = ScorerThread(scorer).start()
    produce(broker.bootstrap, t.input, messages[:1000])
    run.wait_scored(1000)
    (registry / "champion").write_text("v2\n")
    deadline = time.monotonic() + 20
    while scorer.model.version != v2.version:
        assert time.monotonic() < deadline, "v2 was not swapped in"
        time.sleep(0.05)
    produce(broker.bootstrap, t.input, messages[1000:2000])
    run.wait_scored(2000)
    (registry / "champion").write_text("v3\n")
    deadline = time.monotonic() + 20
    while sample(scrape(scorer.metrics_port), "fraudlite_model_reloads", result="failure") < 1:
        assert time.monotonic() < deadline, "the tampered version was not refused"
        time.sleep(0.05)
    produce(broker.bootstrap, t.input, messages[2000:])
    run.wait_scored(N)
    fams = scrape(scorer.metrics_port)
    run.stop()
    assert scorer.model.version == v2.version, "a refused model never replaces the current one"
    assert sample(fams, "fraudlite_model_info", version=v2.version) == 1
    assert sample(fams, "fraudlite_model_reloads", result="success") == 1
    out = decisions(consume_all, t.output, N)
    assert sorted(out) == sorted(data.tx_id)
    versions = [out[k]["model_version"] for k in data.tx_id]
    assert versions[:1000] == [v1.version] * 1000, "scored before the promotion"
    assert versions[1000:] == [v2.version] * (N - 1000), "scored after the swap"


def test_cli_serve_graceful_shutdown_and_metrics(broker, topics, model, data, consume_all, tmp_path):
    t = topics(partitions=2)
    group = f"cli-{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable, "-m", "fraudlite", "serve", "--model", str(model.path),
        "--bootstrap-servers", broker.bootstrap, "--input-topic", t.input, "--output-topic", t.output,
        "--alerts-topic", t.alerts, "--dlq-topic", t.dlq, "--labels-topic", t.labels, "--group-id", group,
        "--metrics-port", "0", "--batch-max-records", "200",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    env = {**os.environ, "FRAUDLITE_KAFKA_SASL_PASSWORD": "s3cret-never-logged"}
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        produce(broker.bootstrap, t.input, data.messages()[:1000])
        deadline = time.monotonic() + 60
        while sample(scrape(port), "fraudlite_transactions_scored") < 1000:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        fams = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "stopped:" in text and "s3cret" not in text
    assert sample(fams, "fraudlite_messages_consumed") == 1000
    assert "fraudlite_consumer_lag_messages" in fams and "fraudlite_state_entries" in fams
    assert len(decisions(consume_all, t.output, 1000)) == 1000
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t.input, p) for p in range(2)]
        ends = c.end_offsets(tps)
        committed = {tp: c.committed(tp) for tp in tps}
        assert sum(committed.values()) == 1000 and all(committed[tp] >= ends[tp] for tp in tps)
    finally:
        c.close(autocommit=False)


def test_model_dir_problems_are_user_errors(tmp_path, model):
    from fraudlite.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(model.path, broken)
    (broken / "model.onnx").write_bytes(b"not onnx")
    assert main(["serve", "--model", str(broken), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert main(["serve", "--model", str(tmp_path / "missing"), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert main(["serve", "--registry", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1"]) == 2


def _load(path):
    from fraudlite.streaming.reload import load_model

    return load_model(path)


def test_features_match_offline_end_to_end(broker, topics, model, data, tmp_path):
    """Replay a file with late labels through Kafka: every transaction's features as scored equal the
    offline computation over the whole file (max abs diff <= 1e-5), terminal risk included."""
    from fraudlite.features.offline import TransactionArrays, compute_features
    from fraudlite.streaming.replay import replay

    path = tmp_path / "tx.csv"
    data.to_frame().to_csv(path, index=False)
    t = topics()
    replay(
        str(path),
        bootstrap_servers=broker.bootstrap,
        topic=t.input,
        labels_topic=t.labels,
        label_delay_days=7,
    )
    scorer = Scorer(config(broker, t, model.path), _load(model.path))
    seen: dict[str, np.ndarray] = {}
    compute = scorer.online.compute

    def capture(partition, ts, customer_ids, terminal_ids, cents, **kw):
        x = compute(partition, ts, customer_ids, terminal_ids, cents, **kw)
        seen.update(zip(current["tx_ids"].pop(0), x, strict=True))
        return x

    current: dict = {}
    process = scorer._process

    def process_capturing(parts, decode_seconds):
        current["tx_ids"] = [d.tx_id for _, _, d in parts if len(d)]
        return process(parts, decode_seconds)

    scorer.online.compute = capture
    scorer._process = process_capturing
    run = ScorerThread(scorer).start()
    run.wait_scored(N)
    run.stop()
    spec = model.spec
    arrays = TransactionArrays.from_columns(
        spec, data.ts, np.array(data.customer_id), np.array(data.terminal_id), data.amount, data.label
    )
    offline = compute_features(spec, arrays)
    online = np.stack([seen[tx] for tx in data.tx_id])
    risk = [i for i, n in enumerate(spec.names) if n.startswith("terminal_risk")]
    assert online[:, risk].max() > 0, "labels reached the terminal table"
    diff = np.abs(online - offline).max(axis=0)
    assert diff.max() <= 1e-5, dict(zip(spec.names, diff.round(6).tolist(), strict=True))
