"""Broker faults (issue 7): a ``fraudlite serve`` process started before the broker, then the broker
stopped mid-run and started again (memory storage: every topic, offset and transaction is gone).

The scorer retries with backoff, logs each transition clearly, shows ``fraudlite_scorer_healthy`` /
``fraudlite_scorer_ready`` going to 0 and back, never exits, and when the broker is back it recreates
its topics and scores what is sent again -- exactly once. What was scored before the restart is lost
with the broker (nothing can be asserted on it but the process surviving).
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from fraudlite.kafkaio.broker import EmbeddedBroker, free_port
from fraudlite.testing.reliability import (
    ServeProcess,
    decision_counts,
    fraudlite_tracebacks,
    make_transactions,
    produce,
    read_records,
)

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s: float, what: str, proc: ServeProcess) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert proc.alive, f"serve died:\n{proc.tail()}"
        assert time.monotonic() - t0 < timeout_s, f"{what} not within {timeout_s}s:\n{proc.tail()}"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_scorer_outlives_the_broker(rel_model, tmp_path, serve_client):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    group = f"bf-{uuid.uuid4().hex[:6]}"
    args = ["--model", str(rel_model.path), "--bootstrap-servers", bootstrap, "--group-id", group,
            "--session-timeout-ms", "3000"]  # fmt: skip
    first = make_transactions(3000, customers=300, terminals=200, days=30, seed=1, prefix="a")
    again = make_transactions(2000, customers=300, terminals=200, days=30, seed=2, prefix="b")
    proc = ServeProcess(args, tmp_path / "serve.log").start()
    broker = EmbeddedBroker(port=port)
    timings = {}
    try:
        # 1. No broker yet: retrying with backoff, unhealthy, not ready, alive.
        _wait(lambda: len(re.findall(r"kafka not reachable at .* retrying in", proc.text())) >= 2, 40, "retries",
              proc)  # fmt: skip
        delays = [float(x) for x in re.findall(r"retrying in ([\d.]+)s", proc.text())]
        assert delays == sorted(delays) and delays[-1] > delays[0], f"backoff grows: {delays}"
        assert proc.value("fraudlite_scorer_healthy") == 0 and proc.value("fraudlite_scorer_ready") == 0

        # 2. The broker starts: the scorer connects, creates its topics, scores.
        broker.start()
        t0 = time.monotonic()
        _wait(lambda: proc.value("fraudlite_scorer_ready") == 1, 60, "ready", proc)
        timings["first_connect_s"] = time.monotonic() - t0
        produce(bootstrap, "transactions", first.messages())
        _wait(lambda: proc.value("fraudlite_messages_consumed_total") >= 3000, 60, "scoring", proc)
        assert len(decision_counts(read_records(bootstrap, "fraud-decisions", min_count=3000))) == 3000

        # 3. The broker goes away mid-run: unhealthy, not ready, a clear log line, still alive.
        produce(bootstrap, "transactions", first.messages()[:1500])  # traffic in flight
        broker.stop()
        t0 = time.monotonic()
        _wait(lambda: proc.value("fraudlite_scorer_healthy") == 0, 30, "unhealthy", proc)
        timings["outage_detected_s"] = time.monotonic() - t0
        assert proc.value("fraudlite_scorer_ready") == 0
        assert "kafka connection lost" in proc.text()
        time.sleep(6.0)  # a while without a broker
        assert proc.alive

        # 4. The broker is back, empty: new session, topics recreated, what is sent again is scored once.
        broker = EmbeddedBroker(port=port).start()
        t0 = time.monotonic()
        _wait(lambda: proc.value("fraudlite_scorer_ready") == 1 and proc.value("fraudlite_scorer_healthy") == 1, 90,
              "recovery", proc)  # fmt: skip
        timings["recovered_s"] = time.monotonic() - t0
        produce(bootstrap, "transactions", again.messages())
        records = read_records(bootstrap, "fraud-decisions", min_count=2000, timeout_s=90)
        timings["rescored_s"] = time.monotonic() - t0
        counts = decision_counts(records)
        assert set(counts) == set(again.tx_id) and max(counts.values()) == 1, "each re-sent one decided once"
        text = proc.text()
        assert "kafka connection back" in text and "came back without our topics" in text
        assert proc.terminate() == 0, proc.tail()
    finally:
        if proc.alive:
            proc.kill9()
        broker.stop()
    text = proc.log.read_text()
    assert not fraudlite_tracebacks(text), fraudlite_tracebacks(text)
    print(f"broker faults: {timings}")
