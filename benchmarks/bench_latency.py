"""Where a decision's time goes at 1,000 tx/s (issue 18): the scorer's per-stage latency beside the broker's floor.

A producer process (kafka-python, ``linger_ms=0``) sends RATE transactions/s for SECONDS into a fresh
4-partition topic of the embedded broker; one consumer process reads them. Consumers, alternated over
ROUNDS rounds (order flipped each round):

* **floor**: a bare read_committed group consumer that only takes each record's time (kafka-python and
  confluent-kafka): what any consumer of this broker sees, from the record's create time to the
  record in the consumer's hands;
* **scorer**: ``streaming.scorer.Scorer`` (features, model, outputs, commit) exactly-once and
  at-least-once, with each Kafka client (``--kafka-client``). Per record: create -> polled (producer, broker, fetch, and waiting for the scorer's
  next poll while it works on the batch before), polled -> released (the event-time sync's hold),
  released -> committed (the batch); per batch: the scorer's own stages. The worker times them by
  wrapping the scorer's poll and batch steps (instrumentation only: the scorer runs unchanged). A third
  process reads the decisions as a downstream consumer would (read_committed): create -> visible.

Records of the first WARMUP_S seconds (group join, first fetches) are left out. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

RATE, SECONDS, WARMUP_S, ROUNDS, PARTITIONS = 1000.0, 20.0, 2.0, 3, 4
TARGET_P99_MS = {"exactly-once": 25.0, "at-least-once": 10.0}
SCORER_CLIENTS = ("kafka-python", "confluent")  # serve --kafka-client
STAGES = ("decode", "features", "inference", "produce", "commit")
FLOOR_LABELS = {
    "create -> acked": "create -> acked by the broker (the producer's side)",
    "end to end": "create -> in the consumer's hands",
}
SCORER_LABELS = {"create -> visible": "create -> visible to a downstream read_committed reader"}
# Scorer runs: a separate reader process of the decisions (librdkafka), what a downstream consumer sees.
VISIBILITY = importlib.util.find_spec("confluent_kafka") is not None
PARTS = ("create -> polled", "polled -> released", "released -> committed", "end to end")


def _quantiles(ms: np.ndarray) -> dict:
    return {q: float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p90", "p99")}


def _after_warmup(create_s: np.ndarray, *series: np.ndarray) -> list[np.ndarray]:
    keep = create_s > create_s.min() + WARMUP_S
    return [s[keep] for s in series]


# -- workers (separate processes) ------------------------------------------------------------------------


def worker_produce(bootstrap: str, topic: str, n: int) -> dict:
    """RATE transactions/s, paced, kafka-python with no linger (each record sent as soon as it is made)."""
    from kafka import KafkaProducer

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_streaming import _data

    messages = _data(n, seed=11).messages()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    acked: list[tuple[float, float]] = []  # (sent, acknowledged by the broker), perf_counter seconds
    t0 = time.perf_counter()
    for i, (k, v) in enumerate(messages):
        wait = t0 + i / RATE - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        producer.send(topic, key=k, value=v).add_callback(
            lambda _, s=sent: acked.append((s, time.perf_counter()))
        )
    producer.flush()
    producer.close()
    a = np.array(acked)
    (ms,) = _after_warmup(a[:, 0], (a[:, 1] - a[:, 0]) * 1000)
    return {"n": n, "seconds": time.perf_counter() - t0, "create -> acked": _quantiles(ms)}


def _floor_kafka_python(bootstrap: str, topic: str, ready: Path, n: int) -> list[tuple[float, float]]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"floor-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", isolation_level="read_committed", fetch_max_wait_ms=50)  # fmt: skip
    while not c.assignment():
        c.poll(timeout_ms=100)
    ready.touch()
    seen: list[tuple[float, float]] = []
    while len(seen) < n:
        batch = c.poll(timeout_ms=50, max_records=2000)
        now = time.time()
        seen += [(r.timestamp / 1000, now) for records in batch.values() for r in records]
    c.close()
    return seen


def _floor_confluent(bootstrap: str, topic: str, ready: Path, n: int) -> list[tuple[float, float]]:
    from confluent_kafka import Consumer

    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex[:6]}",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed", "fetch.wait.max.ms": 50,
        "socket.nagle.disable": True, "enable.auto.commit": False, "log_level": 3,
    })  # fmt: skip
    c.subscribe([topic])
    while not c.assignment():
        c.poll(0.1)
    ready.touch()
    seen: list[tuple[float, float]] = []
    while len(seen) < n:
        m = c.poll(0.05)  # returns as soon as one record is there
        if m is not None and not m.error():
            seen.append((m.timestamp()[1] / 1000, time.time()))
    c.close()
    return seen


def worker_visible(bootstrap: str, topic: str, n: int, ready: str) -> dict:
    """A downstream reader of the scorer's decisions (``TOPIC-dec``, read_committed, librdkafka): when each
    became visible, against its transaction's create time (the input record's timestamp, matched by
    ``tx_id`` once all ``n`` are in)."""
    import msgspec
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    tx_id = msgspec.json.Decoder(msgspec.defstruct("Tx", [("tx_id", str)])).decode
    common = {"bootstrap.servers": bootstrap, "isolation.level": "read_committed", "enable.auto.commit": False,
              "fetch.wait.max.ms": 50, "socket.nagle.disable": True, "log_level": 3}  # fmt: skip
    c = Consumer({**common, "group.id": f"visible-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest"})
    c.subscribe([f"{topic}-dec"])
    while not c.assignment():
        c.poll(0.1)
    Path(ready).touch()
    visible: dict[str, float] = {}  # tx_id -> seen here
    while len(visible) < n:
        m = c.poll(0.05)  # returns as soon as one record is there
        if m is not None and not m.error():
            visible[tx_id(m.value()).tx_id] = time.time()
    c.close()
    source = Consumer({**common, "group.id": f"source-{uuid.uuid4().hex[:6]}"})
    source.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    created: dict[str, float] = {}
    while len(created) < n:
        for m in source.consume(10_000, 1.0):
            if not m.error():
                created[tx_id(m.value()).tx_id] = m.timestamp()[1] / 1000
    source.close()
    a = np.array([(created[k], t) for k, t in visible.items()])
    (ms,) = _after_warmup(a[:, 0], (a[:, 1] - a[:, 0]) * 1000)
    return {"create -> visible": _quantiles(ms)}


def worker_floor(client: str, bootstrap: str, topic: str, n: int, ready: str) -> dict:
    read = _floor_kafka_python if client == "kafka-python" else _floor_confluent
    a = np.array(read(bootstrap, topic, Path(ready), n))
    (lat,) = _after_warmup(a[:, 0], (a[:, 1] - a[:, 0]) * 1000)
    return {"n": int(len(lat)), "end to end": _quantiles(lat)}


def worker_scorer(
    bootstrap: str, topic: str, n: int, model: str, delivery: str, ready: str, client: str = "kafka-python"
) -> dict:
    import fraudlite.streaming.scorer as scorer_module
    from fraudlite.streaming.config import ServeConfig, Topics
    from fraudlite.streaming.reload import load_model

    u = uuid.uuid4().hex[:6]
    topics = Topics(
        input=topic, output=f"{topic}-dec", alerts=f"{topic}-al", dlq=f"{topic}-dlq", labels=f"{topic}-lab"
    )
    config = ServeConfig(bootstrap_servers=bootstrap, model_dir=Path(model), topics=topics, group_id=f"lat-{u}",
                         metrics_port=None, delivery=delivery, kafka_client=client)  # fmt: skip
    scorer = scorer_module.Scorer(config, load_model(model))
    polled: dict[tuple[int, int], float] = {}
    rows: list[tuple[float, float, float, float]] = []
    stages: list[np.ndarray] = []
    poll, process, record_batch = scorer.clients.poll, scorer._process, scorer_module.record_batch

    def timed_poll(timeout_ms: int, max_records: int) -> dict:
        batch = poll(timeout_ms, max_records)
        now = time.time()
        for tp, records in batch.items():
            for r in records:
                polled[tp.partition, r.offset] = now
        return batch

    def timed_process(parts: list, decode_seconds: float) -> None:
        released = time.time()
        process(parts, decode_seconds)
        committed = time.time()
        for tp, records, _ in parts:
            rows.extend(
                (r.timestamp / 1000, polled.pop((tp.partition, r.offset)), released, committed)
                for r in records
            )

    def timed_record_batch(m, summary, parts, scores, sent, stamps, now, sink=None) -> None:
        stages.append(np.diff(stamps) * 1000)
        record_batch(m, summary, parts, scores, sent, stamps, now, sink)

    scorer.clients.poll, scorer._process, scorer_module.record_batch = (
        timed_poll,
        timed_process,
        timed_record_batch,
    )

    def announce() -> None:  # traffic starts once the scorer owns its partitions
        while not scorer.online.states:
            time.sleep(0.05)
        Path(ready).touch()

    threading.Thread(target=announce, daemon=True).start()
    scorer.connect()
    scorer.run(until=lambda s: s.consumed >= n)
    scorer.close()
    a = np.array(rows)
    create, polled_at, released, committed = _after_warmup(a[:, 0], *a.T)
    out = {"n": int(len(create)), "batches": len(stages), "records per batch": n / max(len(stages), 1)}
    for name, (start, end) in zip(PARTS, ((create, polled_at), (polled_at, released), (released, committed),
                                          (create, committed)), strict=True):  # fmt: skip
        out[name] = _quantiles((end - start) * 1000)
    per_batch = np.array(stages[len(stages) // 10 :])  # the first tenth: warm-up
    for i, stage in enumerate(STAGES):
        out[f"stage {stage}"] = _quantiles(per_batch[:, i])
    return out


# -- driver ----------------------------------------------------------------------------------------------


def _spawn(*args: str):
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one(boot: str, consumer: list[str], n: int, tmp: Path) -> dict:
    """A fresh topic, the consumer worker started and in its group, then the paced producer; its result."""
    from fraudlite.testing.reliability import create_topics

    topic = f"lat-{uuid.uuid4().hex[:6]}"
    create_topics(boot, [topic, f"{topic}-lab"], PARTITIONS)
    ready = tmp / f"ready-{topic}"
    kind, rest = consumer[0], consumer[1:]
    proc = _spawn(kind, *rest[:1], boot, topic, str(n), *rest[1:], str(ready))
    _started(proc, ready, consumer)
    readers = []
    if kind == "scorer" and VISIBILITY:  # a downstream read_committed reader of the decisions
        seen = tmp / f"ready-{topic}-visible"
        readers.append(_spawn("visible", boot, topic, str(n), str(seen)))
        _started(readers[0], seen, "visibility reader")
    producer = _spawn("produce", boot, topic, str(n))
    out = {}
    for p, what, timeout in (
        (proc, consumer, 600),
        (producer, "producer", 60),
        *((r, "reader", 120) for r in readers),
    ):
        stdout, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{err[-3000:]}")
        out |= json.loads(stdout.strip().splitlines()[-1])
    return out


def _started(proc, ready: Path, what) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.1)


def _scorer_name(delivery: str, client: str) -> str:
    return f"scorer {delivery}" + ("" if client == "kafka-python" else f" {client}")


def _median(runs: list[dict], key: str, q: str) -> float:
    return float(np.median([r[key][q] for r in runs]))


def measure(model: str | None = None, model_note: str | None = None, rounds: int = ROUNDS) -> str:
    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.testing.streaming import feature_stats, write_model

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_streaming import _data

    try:
        import confluent_kafka  # noqa: F401

        floors, clients = ["kafka-python", "confluent-kafka"], SCORER_CLIENTS
    except ImportError:
        floors, clients = ["kafka-python"], SCORER_CLIENTS[:1]
    n = int(RATE * SECONDS)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        if model is None:
            model = str(write_model(Path(tmp) / "model", stats=feature_stats(_data(n))).path)
            model_note = "a small random MLP"
        runs: dict[str, list[dict]] = {}
        consumers = {f"floor {c}": ["floor", c] for c in floors}
        consumers |= {_scorer_name(d, c): ["scorer", model, d, c] for c in clients for d in TARGET_P99_MS}
        for r in range(rounds):
            for name in list(consumers)[:: 1 if r % 2 == 0 else -1]:
                print(f"  round {r + 1}/{rounds}: {name}", flush=True)
                runs.setdefault(name, []).append(_one(broker.bootstrap, consumers[name], n, Path(tmp)))
    return _section(runs, model_note or model, rounds)


def _section(runs: dict[str, list[dict]], model_note: str, rounds: int) -> str:
    q3 = ("p50", "p90", "p99")
    lines = [
        "## Latency at 1,000 tx/s: where the time goes (issue 18)",
        "",
        f"{RATE:,.0f} tx/s for {SECONDS:.0f} s from a kafka-python producer process (`linger_ms=0`) into a fresh "
        f"{PARTITIONS}-partition topic of the embedded broker (Tansu); one consumer process; the first "
        f"{WARMUP_S:.0f} s left out; medians of {rounds} rounds, consumers alternated. Scorer model: {model_note}.",
        "",
        "| consumer | part | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        floor = name.startswith("floor")
        parts = ["create -> acked", "end to end"] if floor else [*PARTS, *(f"stage {s}" for s in STAGES)]
        if not floor and "create -> visible" in rs[0]:
            parts.insert(len(PARTS), "create -> visible")
        for part in parts:
            label = (FLOOR_LABELS if floor else SCORER_LABELS).get(part, part)
            label += " (per batch)" if part.startswith("stage") else ""
            lines.append(
                f"| {name} | {label} | " + " | ".join(f"{_median(rs, part, q):.1f}" for q in q3) + " |"
            )
    for name, rs in runs.items():
        if name.startswith("scorer"):
            per = np.median([r["records per batch"] for r in rs])
            lines.append(f"\n{name}: {per:.0f} records per batch (median).")
    floor = {name: _median(rs, "end to end", "p99") for name, rs in runs.items() if name.startswith("floor")}
    best_floor = min(floor.values())
    checks = []
    clients = [c for c in SCORER_CLIENTS if any(k == _scorer_name(d, c) for k in runs for d in TARGET_P99_MS)]
    for client in clients:
        for delivery, target in TARGET_P99_MS.items():
            p99 = _median(runs[_scorer_name(delivery, client)], "end to end", "p99")
            checks.append(
                (f"{client}, {delivery}: end-to-end p99 {p99:.1f} ms <= {target:.0f} ms", p99 <= target)
            )
    verdict = "PASS" if all(ok for _, ok in checks) and len(clients) == len(SCORER_CLIENTS) else "FAILED"
    lines += ["", f"Acceptance (issue 18, {' and '.join(clients)}): **{verdict}**", ""]
    lines += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
    lines += [
        f"- the broker's floor: a bare consumer's p99 is {best_floor:.1f} ms at best ("
        + ", ".join(f"{k.removeprefix('floor ')} {v:.1f} ms" for k, v in floor.items())
        + "), before any feature, model or commit; no consumer of this broker meets a p99 below it",
        "",
        "Reproduce: `.venv/bin/python benchmarks/run.py --only bench_latency`.",
    ]
    return "\n".join(lines) + "\n"


def run(workdir: Path) -> str:
    """``make bench`` section: serves the model ``bench_shipping`` compressed in the same run when present."""
    compressed = workdir.parent / "bench_shipping" / "default-compressed"
    if (compressed / "manifest.json").is_file():
        return measure(str(compressed), "compressed by bench_shipping")
    return measure()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory to serve (default: a small random MLP)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds (default {ROUNDS})")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "produce":
            result = worker_produce(rest[0], rest[1], int(rest[2]))
        elif kind == "visible":
            result = worker_visible(rest[0], rest[1], int(rest[2]), rest[3])
        elif kind == "floor":
            result = worker_floor(rest[0], rest[1], rest[2], int(rest[3]), rest[4])
        else:
            result = worker_scorer(rest[1], rest[2], int(rest[3]), rest[0], rest[4], rest[6], rest[5])
        print(json.dumps(result))
        return
    print(measure(args.model, rounds=args.rounds))


if __name__ == "__main__":
    main()
