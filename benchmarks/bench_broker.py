"""The test broker over time (issue 18): does a bare consumer's latency stay flat as Tansu holds more records?

The soak's end-to-end p99 creeps up over its 10 minutes while the scorer's per-batch work stays flat, and a
bare consumer of the soak's input topic sees the same creep. This isolates the broker: the embedded Tansu
(memory storage, as in every test and benchmark), one paced producer (librdkafka, the soak's rate order)
and one bare consumer (librdkafka, ``fetch.wait.max.ms`` 50) of the same topic, nothing else; then the
same with a transactional producer committing ~8 transactions a second beside it (the scorer's
exactly-once cadence). Latency = the record's create time -> the consumer has it, p50 / p99 per 30 s.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np

RATE = 8_000  # records/s: the soak's input rate on these machines
SECONDS = 240
WINDOW = 30
VALUE = b"x" * 120  # about a transaction's JSON


def _feed(boot: str, topic: str, stop: threading.Event) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": boot, "linger.ms": 5, "log_level": 3})
    t0, i = time.perf_counter(), 0
    while not stop.is_set():
        for _ in range(RATE // 20):
            p.produce(topic, VALUE, str(i % 20_000).encode())
            i += 1
        p.poll(0)
        wait = t0 + i / RATE - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    p.flush(10)


def _transactions(boot: str, topic: str, stop: threading.Event) -> None:
    from confluent_kafka import Producer

    p = Producer(
        {"bootstrap.servers": boot, "transactional.id": f"tx-{uuid.uuid4().hex[:6]}", "log_level": 3}
    )
    p.init_transactions(30)
    while not stop.is_set():
        p.begin_transaction()
        for k in range(500):
            p.produce(topic, VALUE, str(k).encode())
        p.commit_transaction(30)
        time.sleep(0.12)


def _variant(with_transactions: bool) -> list[tuple[int, float, float, int]]:
    """(end of window s, p50 ms, p99 ms, records held) per WINDOW seconds."""
    from confluent_kafka import Consumer

    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.testing.reliability import create_topics

    with EmbeddedBroker() as broker:
        boot = broker.bootstrap
        create_topics(boot, ["feed", "txn"])
        c = Consumer({
            "bootstrap.servers": boot, "group.id": f"bare-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "latest",
            "enable.auto.commit": False, "fetch.wait.max.ms": 50, "socket.nagle.disable": True, "log_level": 3,
        })  # fmt: skip
        c.subscribe(["feed"])
        while not c.assignment():
            c.poll(0.1)
        stop = threading.Event()
        threads = [threading.Thread(target=_feed, args=(boot, "feed", stop), daemon=True)]
        if with_transactions:
            threads.append(threading.Thread(target=_transactions, args=(boot, "txn", stop), daemon=True))
        for t in threads:
            t.start()
        rows, latencies, seen, start = [], [], 0, time.monotonic()
        try:
            while time.monotonic() - start < SECONDS:
                batch = c.consume(2000, 0.01)  # waits at most 10 ms for a full batch
                wall = time.time()
                latencies += [wall - m.timestamp()[1] / 1000 for m in batch if not m.error()]
                seen += len(batch)
                if time.monotonic() - start >= WINDOW * (len(rows) + 1) and latencies:
                    ms = np.array(latencies) * 1000
                    rows.append((WINDOW * (len(rows) + 1), *np.percentile(ms, [50, 99]), seen))
                    latencies = []
        finally:
            stop.set()
            for t in threads:
                t.join(15)
            c.close()
    return rows


def run(workdir: Path) -> str:
    results = {name: _variant(txn) for name, txn in (("producer only", False), ("+ transactions", True))}
    lines = [
        "## Test broker over time (issue 18)",
        "",
        f"Embedded Tansu (memory storage, as in every test and benchmark): a paced producer at {RATE:,} "
        f"records/s and a bare consumer of its topic (librdkafka both), {SECONDS} s; then the same with a "
        "transactional producer committing ~8 transactions/s beside them (the scorer's exactly-once cadence). "
        "Latency: the record's create time -> the consumer has it, per 30 s window.",
        "",
        "| window end | records in the topic | " + " | ".join(f"{n}: p50 / p99 ms" for n in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    first = next(iter(results.values()))
    for i, (end, _p50, _p99, held) in enumerate(first):
        cells = [f"{r[i][1]:.0f} / {r[i][2]:.0f}" if i < len(r) else "" for r in results.values()]
        lines.append(f"| {end} s | {held:,} | " + " | ".join(cells) + " |")
    growth = {n: r[-1][2] / r[0][2] for n, r in results.items() if r}
    grows = min(growth.values()) >= 1.5
    lines += [
        "",
        "p99 last window / first: "
        + ", ".join(f"{n} {g:.1f}x" for n, g in growth.items())
        + ". "
        + (
            "With nothing but a producer and a consumer the broker's latency grows with the records it holds: "
            "a long run's end-to-end latency creeps whatever the scorer does (the soak's topics hold ~10M "
            "records at its end: the input and the decisions)."
            if grows
            else "The broker's latency stays within 1.5x as it fills: it does not explain a creep."
        ),
        "",
        "Reproduce: `.venv/bin/python benchmarks/run.py --only bench_broker`.",
    ]
    return "\n".join(lines) + "\n"
