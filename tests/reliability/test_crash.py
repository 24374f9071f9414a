"""Crash safety (issue 7): ``kill -9`` the scorer at random points, restart it each time.

Afterwards the decisions topic (read_committed) holds exactly one decision per transaction (alerts and
DLQ: exactly one per alerting / invalid message), and every decision equals the one an uninterrupted
run gives (same score, i.e. the same features: customer state restored from the changelog + replayed
input, terminal table rebuilt from the topic).

On the embedded broker a restarted scorer *commits* its dead predecessor's open transaction (outputs
without input offsets); ``fraudlite.streaming.idempotence`` keeps those from being emitted twice. The
test checks that this actually happened at least once (otherwise it would prove nothing).

Scale: ``FRAUDLITE_CRASH_N`` transactions (default the issue's 200 000, 1% of them poison; ~80 s here)
and ``FRAUDLITE_CRASH_KILLS`` kills (default 5).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from fraudlite.streaming.config import BatchConfig, ServeConfig
from fraudlite.streaming.reload import load_model
from fraudlite.streaming.scorer import Scorer
from fraudlite.testing.poison import mix_poison, poison_messages
from fraudlite.testing.reliability import (
    ServeProcess,
    committed_total,
    decision_counts,
    decision_scores,
    fraudlite_tracebacks,
    kill9_during_replay,
    make_transactions,
    offline_scores,
    produce,
    read_records,
    reference_scores,
    serve_args,
)
from fraudlite.testing.streaming import ScorerThread

pytestmark = pytest.mark.integration

N = int(os.environ.get("FRAUDLITE_CRASH_N", 200_000))
KILLS = int(os.environ.get("FRAUDLITE_CRASH_KILLS", 5))


def wait_committed(bootstrap: str, group: str, topic: str, total: int, proc: ServeProcess, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        done = committed_total(bootstrap, group, topic, 4)
        if done >= total:
            return
        assert proc.alive, proc.tail()
        assert time.monotonic() < deadline, f"committed {done} of {total}:\n{proc.tail()}"
        time.sleep(0.3)


def test_kill_9_at_random_points(rel_broker, rel_topics, rel_model, tmp_path, serve_client):
    bootstrap = rel_broker.bootstrap
    seed = int(os.environ.get("FRAUDLITE_CRASH_SEED", 7))
    rng = random.Random(seed)
    data = make_transactions(N, customers=3000, terminals=2000, days=30, seed=5)
    poison = poison_messages(N // 100, seed=seed)
    messages = mix_poison(data.messages(), poison)
    valid_ids = [json.loads(v)["tx_id"] for _, v in messages if v and v.startswith(b'{"tx_id": "tx')]
    t = rel_topics(partitions=4)
    produce(bootstrap, t.input, messages)

    group = f"crash-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "serve.log"
    args = serve_args(bootstrap, t, rel_model.path, group)
    proc, kills = kill9_during_replay(args, log, bootstrap, group, t.input, 4, len(messages), KILLS, rng)
    restart = time.monotonic()
    wait_committed(bootstrap, group, t.input, len(messages), proc, timeout_s=240)
    finished = time.monotonic()
    assert proc.terminate() == 0, proc.tail()
    text = log.read_text()
    assert not fraudlite_tracebacks(text), fraudlite_tracebacks(text)

    decisions = read_records(bootstrap, t.output, min_count=len(valid_ids), timeout_s=60)
    counts = decision_counts(decisions)
    dups = {k: v for k, v in counts.items() if v > 1}
    missing = set(valid_ids) - set(counts)
    print(
        f"crash test: n={len(messages)} kills={kills} decisions={len(decisions)} duplicates={len(dups)} "
        f"missing={len(missing)} last run {finished - restart:.1f}s seed={seed}"
    )
    assert not dups, f"{len(dups)} transactions decided more than once, e.g. {list(dups)[:5]}"
    assert not missing, f"{len(missing)} transactions never decided, e.g. {sorted(missing)[:5]}"
    assert len(decisions) == len(valid_ids)

    alerts = decision_counts(read_records(bootstrap, t.alerts))  # tx_id -> alerts
    assert all(v == 1 for v in alerts.values()), "one alert per alerting transaction"
    dlq = read_records(bootstrap, t.dlq, min_count=len(poison))
    offsets = Counter((dict(r.headers)["fraudlite.source.partition"], dict(r.headers)["fraudlite.source.offset"])
                      for r in dlq)  # fmt: skip
    assert len(dlq) == len(poison) and all(v == 1 for v in offsets.values()), (
        "each poison message in the DLQ once"
    )

    found = [int(x) for x in re.findall(r"outputs_already_there=(\d+)", text)]
    assert sum(found) > 0, "no kill left a half-committed batch behind: the test proved nothing"

    scores = decision_scores(decisions)
    offline = offline_scores(data, rel_model, scores)
    off = [k for k in scores if abs(offline[k] - scores[k]) > 1e-4]
    assert not off, f"{len(off)} scores differ from the offline features' (> 1e-4), e.g. {off[:5]}"
    expected = reference_scores(bootstrap, t, rel_model, len(messages))
    assert set(expected) == set(scores)
    diff = [k for k in expected if expected[k] != scores[k]]
    if diff:  # where: which partitions/offsets, and what each restart restored
        where = {
            json.loads(r.value)["tx_id"]: (r.partition, r.offset)
            for r in read_records(bootstrap, t.input)
            if r.value and r.value.startswith(b'{"tx_id": "tx')
        }
        print("differing (partition, offset):", sorted(where[k] for k in diff)[:20])
        print("\n".join(line for line in text.splitlines() if "restored" in line or "assigned" in line))
    assert not diff, f"{len(diff)} decisions differ from an uninterrupted run, e.g. {diff[:5]}"
    for a in alerts:
        assert scores[a] >= 0.9


def test_state_survives_a_restart_after_a_replayed_restore(rel_broker, rel_topics, rel_model, rel_data):
    """Restart twice: a restore that replays committed input (nothing in the changelog yet, as after a
    crash) must make the next changelog record carry the replayed customers; the third scorer restores
    from that record and must still compute an uninterrupted run's features.

    (Regression: the replayed customers were never marked dirty, so the third scorer lost them.)
    """
    bootstrap = rel_broker.bootstrap
    t = rel_topics(partitions=2)
    n = len(rel_data)
    produce(bootstrap, t.input, rel_data.messages())
    group = f"replay-{uuid.uuid4().hex[:8]}"

    def run(interval: float, flush: bool, until: int) -> int:
        cfg = ServeConfig(
            bootstrap_servers=bootstrap, model_dir=rel_model.path, topics=t, group_id=group, metrics_port=None,
            batch=BatchConfig(max_records=300, max_ms=20), changelog_interval_s=interval,
        )  # fmt: skip
        scorer = Scorer(cfg, load_model(rel_model.path))
        if not flush:
            scorer._flush_changelog = lambda: None  # as if killed: nothing persisted on the way out
        th = ScorerThread(scorer).start()
        th.wait_scored(until, timeout_s=60)
        th.stop()
        return scorer.summary.consumed

    done = run(3600.0, flush=False, until=n // 3)  # no changelog record at all
    done += run(0.0, flush=False, until=300)  # replays [0, done), then writes deltas every batch
    run(0.0, flush=True, until=n - done)  # restores from those deltas only
    decisions = read_records(bootstrap, t.output, min_count=n)
    counts = decision_counts(decisions)
    assert len(counts) == n and all(v == 1 for v in counts.values())
    scores = decision_scores(decisions)
    expected = reference_scores(bootstrap, t, rel_model, n)
    diff = [k for k in expected if expected[k] != scores[k]]
    assert not diff, f"{len(diff)} decisions differ from an uninterrupted run, e.g. {diff[:5]}"


def _changelog_run(n_batches: int, seed: int = 0):
    """Feed synthetic batches through OnlineFeatures + a ChangelogWriter; yield (state, records) per batch."""
    from fraudlite.features.online import OnlineFeatures
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.streaming.state_store import ChangelogWriter

    spec = FeatureSpec()
    online, writer = OnlineFeatures(spec), ChangelogWriter()
    rng = np.random.default_rng(seed)
    t, offset = 1_767_225_600, 0
    for _ in range(n_batches):
        ts = (t + np.sort(rng.integers(0, 86400, 400))).astype(np.int64)
        t = int(ts[-1])
        cust = [f"C{c}" for c in rng.integers(0, 3000, 400)]
        online.compute(
            0, ts, cust, [f"T{m}" for m in rng.integers(0, 50, 400)], rng.integers(100, 10**5, 400)
        )
        offset += 400
        yield online.state(0), writer.records(online.state(0), cust, offset), writer


@pytest.mark.parametrize("cut", ["snapshot", "delta"])
def test_restore_survives_a_partly_committed_changelog_write(monkeypatch, cut):
    """The embedded broker commits a crashed producer's open transaction as far as it got: the newest
    snapshot (or delta) may lack parts. Restore falls back to the newest complete data, and the writer
    then persists a fresh snapshot under a new id, which restores exactly."""
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.streaming import state_store
    from fraudlite.streaming.state_store import decode_value, restore_state

    monkeypatch.setattr(state_store, "PART_BYTES", 4_000)  # many parts per record
    monkeypatch.setattr(state_store, "MIN_SNAPSHOT_BYTES", 60_000)  # snapshots every few batches
    spec = FeatureSpec()
    log, states = [], []
    for state, records, _ in _changelog_run(14):
        states.append((state.to_bytes(), len(log)))
        log += records
    # the last write of the wanted kind, cut in the middle (as a crash mid-transaction leaves it)
    kinds = [decode_value(v)[0].kind if v else None for _, v in log]
    want = state_store.SNAPSHOT if cut == "snapshot" else state_store.DELTA
    last = max(i for i, k in enumerate(kinds) if k == want)
    header = decode_value(log[last][1])[0]
    first = last - header.part
    assert header.parts > 2, "the record to cut has several parts"
    partial = log[: first + header.parts // 2]
    batch = max(i for i, (_, at) in enumerate(states) if at <= first)  # the batch whose write was cut
    expected, _ = restore_state(spec, log[: states[batch][1]])  # the state before that batch

    restored, writer = restore_state(spec, partial)
    assert len(restored) == len(expected) > 0
    np.testing.assert_array_equal(_probe(restored), _probe(expected))
    assert writer.force_snapshot
    fresh = writer.records(restored, [], writer.input_offset)
    assert decode_value(fresh[0][1])[0].kind == state_store.SNAPSHOT
    assert decode_value(fresh[0][1])[0].snapshot_id > max(
        decode_value(v)[0].snapshot_id for _, v in partial if v
    ), "a new snapshot id: nothing incomplete is built upon"
    again, _ = restore_state(spec, partial + fresh)
    np.testing.assert_array_equal(_probe(again), _probe(expected))


def _probe(state):
    """Features of one more batch computed from a copy of ``state`` (compares states by behaviour)."""
    from fraudlite.features.online import CustomerState, OnlineFeatures
    from fraudlite.features.spec import FeatureSpec

    spec = FeatureSpec()
    online = OnlineFeatures(spec)
    online.set_state(0, CustomerState.from_bytes(spec, state.to_bytes()))
    rng = np.random.default_rng(99)
    ts = (1_767_225_600 + 20 * 86400 + np.sort(rng.integers(0, 86400, 500))).astype(np.int64)
    cust = [f"C{c}" for c in rng.integers(0, 3000, 500)]
    return online.compute(
        0, ts, cust, [f"T{m}" for m in rng.integers(0, 50, 500)], rng.integers(100, 10**5, 500)
    )
