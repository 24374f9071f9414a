"""Streaming scorer vs a plain transactional kafka-python passthrough, same broker, same data, same run.

    .venv/bin/python benchmarks/bench_streaming.py [--n 60000] [--rounds 3] [--model DIR] [--fp32-model DIR]

Prints markdown (``| metric | value | note |`` rows). What is measured:

* throughput, messages/s from the first record consumed to the last batch committed (the group join is
  excluded), median of ``--rounds`` alternating runs, each in its own process with a fresh group:
  - passthrough: read_committed consumer group, ``msgspec`` decode of each record, one small JSON per
    record produced to the partition it came from, ``send_offsets_to_transaction`` + commit per poll;
  - scorer: ``fraudlite.streaming.Scorer`` (decode + validation, online features, terminal feed,
    ONNX, decisions + alerts, changelog, one transaction per batch) with the same batch size;
* peak RSS (VmHWM) of the scorer process (the serving footprint: no torch, no pandas);
* end-to-end latency (producer create time -> batch committed), p50/p99, with a producer process
  sending at half (and a quarter of) the scorer's measured maximum rate.

Absolute rates on the shared 2-core machines are noise; the ratio (same run, same broker, same data)
is the number to read. Workers are this script re-run with ``--worker``; they import nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

BATCH = 2000
PARTITIONS = 4


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM), read last by each worker."""
    from fraudlite.testing.streaming import proc_status_mb

    return proc_status_mb("VmHWM")


def _has_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def _data(n: int, seed: int = 7):
    from fraudlite.testing.streaming import make_transactions

    return make_transactions(n, customers=5000, terminals=3000, days=30, seed=seed)


# -- workers (separate processes) ------------------------------------------------------------------------


def worker_passthrough(bootstrap: str, topic: str, n: int, out_topic: str) -> dict:
    import msgspec
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata

    group = f"bench-pass-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest", session_timeout_ms=6000,
        heartbeat_interval_ms=1000, max_poll_records=BATCH, fetch_max_wait_ms=50,
    )  # fmt: skip
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=group, linger_ms=5, batch_size=256 * 1024
    )
    producer.init_transactions()
    decode = msgspec.json.decode
    encode = msgspec.json.encode
    done = 0
    start = None
    while done < n:
        batch = consumer.poll(timeout_ms=50, max_records=BATCH)
        if not batch:
            continue
        if start is None:
            start, cpu0 = time.perf_counter(), time.process_time()
        producer.begin_transaction()
        for tp, records in batch.items():
            for r in records:
                msg = decode(r.value)
                out = encode({"tx_id": msg["tx_id"], "customer_id": msg["customer_id"], "ok": True})
                producer.send(out_topic, value=out, key=r.key, partition=tp.partition)
            done += len(records)
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()}
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        producer.commit_transaction()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    consumer.close(autocommit=False)
    producer.close()
    return {
        "n": done,
        "seconds": seconds,
        "rate": done / seconds,
        "cpu_us": cpu / done * 1e6,
        "rss_mb": _peak_rss_mb(),
    }


def worker_scorer(
    bootstrap: str, topic: str, n: int, model: str, latency: bool, labels: str, client: str = "kafka-python"
) -> dict:
    from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.scorer import Scorer

    u = uuid.uuid4().hex[:8]
    topics = Topics(input=topic, output=f"{topic}-dec-{u}", alerts=f"{topic}-al-{u}", dlq=f"{topic}-dlq-{u}",
                    labels=labels)  # fmt: skip
    config = ServeConfig(
        bootstrap_servers=bootstrap, model_dir=Path(model), topics=topics, group_id=f"bench-scorer-{u}",
        metrics_port=None, batch=BatchConfig(max_records=BATCH, max_ms=50), kafka_client=client,
    )  # fmt: skip
    from fraudlite.testing.streaming import proc_status_mb

    rss_before = proc_status_mb("VmRSS")
    t_load = time.perf_counter()
    loaded = load_model(model)
    load_seconds = time.perf_counter() - t_load
    rss_after_load = proc_status_mb("VmRSS")
    scorer = Scorer(config, loaded)
    sink: list[np.ndarray] = []
    if latency:
        scorer.latency_sink = sink
    ready_file = os.environ.get("BENCH_READY_FILE")
    if ready_file:  # tell the driver once partitions are assigned (and state restored)

        def announce() -> None:
            while not scorer.online.states:
                time.sleep(0.05)
            Path(ready_file).touch()

        threading.Thread(target=announce, daemon=True).start()
    scorer.connect()
    scorer.run(until=lambda s: s.consumed >= 1)
    first, batches0 = scorer.summary.consumed, scorer.summary.batches
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = scorer.run(until=lambda s: s.consumed >= n)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    scorer.close()
    out = {
        "n": summary.consumed - first,
        "seconds": seconds,
        "rate": (summary.consumed - first) / seconds,
        "cpu_us": cpu / (summary.consumed - first) * 1e6,
        "rss_mb": _peak_rss_mb(),
        "load_seconds": load_seconds,
        "rss_after_load_mb": rss_after_load,
        "rss_load_added_mb": rss_after_load - rss_before,
        "form": loaded.form,
        "alerts": summary.alerts,
        "fraud": summary.fraud,
        "records_per_batch": (summary.consumed - first) / max(1, summary.batches - batches0),
        "modules_torch_pandas": sorted(m for m in ("torch", "pandas") if m in sys.modules),
    }
    if latency and sink:
        lat = np.concatenate(sink)
        out["latency_p50_ms"] = float(np.percentile(lat, 50) * 1000)
        out["latency_p99_ms"] = float(np.percentile(lat, 99) * 1000)
        out["latency_n"] = int(len(lat))
    return out


def worker_produce(bootstrap: str, topic: str, n: int, rate: float, seed: int) -> dict:
    from kafka import KafkaProducer

    messages = _data(n, seed).messages()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, batch_size=256 * 1024)
    t0 = time.perf_counter()
    for i, (k, v) in enumerate(messages):
        if rate > 0:
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        producer.send(topic, key=k, value=v)
    producer.flush()
    producer.close()
    return {"n": n, "seconds": time.perf_counter() - t0}


# -- driver ----------------------------------------------------------------------------------------------


def run_worker_script(script: str | Path, *args: str, timeout: float = 600) -> dict:
    """Run ``script --worker ARGS`` in a fresh process; its last stdout line, parsed as JSON."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_worker(*args: str, timeout: float = 600) -> dict:
    return run_worker_script(__file__, *args, timeout=timeout)


def _spawn_worker(*args: str, ready: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    env = {**os.environ, "BENCH_READY_FILE": str(ready)} if ready else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def measure(
    n: int = 60_000,
    rounds: int = 3,
    model_dir: str | None = None,
    fp32_model: str | None = None,
    latency_seconds: float = 20.0,
    fractions: tuple[float, ...] = (0.5, 0.25),
    model_label: str | None = None,
    latency_rounds: int = 3,
) -> str:
    """Run every measurement on a fresh embedded broker; returns the markdown section."""
    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.testing.streaming import feature_stats, produce, write_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        boot = broker.bootstrap
        data = _data(n)
        model = model_dir or str(write_model(Path(tmp) / "model", stats=feature_stats(data)).path)
        model_note = model_label or model_dir or "a small random MLP (no trained model given)"
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=boot)
        topic, labels = "bench-transactions", "bench-labels"
        admin.create_topics(
            {
                t: {"num_partitions": PARTITIONS, "replication_factor": 1}
                for t in (topic, labels, "bench-pass-out")
            },
            wait_for_metadata=True,
        )
        admin.close()
        produce(boot, topic, data.messages())

        runs: dict[str, list[dict]] = {"passthrough": [], "scorer": []}
        models = {"scorer": model}
        if fp32_model:
            runs["scorer-fp32"] = []
            models["scorer-fp32"] = fp32_model
        confluent = _has_confluent()
        if confluent:
            runs["scorer-confluent"] = []
        for _ in range(rounds):
            runs["passthrough"].append(_run_worker("passthrough", boot, topic, str(n), "bench-pass-out"))
            for name, path in models.items():
                runs[name].append(_run_worker("scorer", boot, topic, str(n), path, "0", labels))
            if confluent:  # the same queued transactions and model through librdkafka (issue 18)
                args = ("scorer", boot, topic, str(n), model, "0", labels, "confluent")
                runs["scorer-confluent"].append(_run_worker(*args))
        med = {k: float(np.median([r["rate"] for r in v])) for k, v in runs.items()}
        cpu = {k: float(np.median([r["cpu_us"] for r in v])) for k, v in runs.items()}
        ratio = med["scorer"] / med["passthrough"]
        rows.append(("passthrough throughput", f"{med['passthrough']:,.0f} msg/s", f"median of {rounds}"))
        rows.append(("scorer throughput", f"{med['scorer']:,.0f} msg/s", f"median of {rounds}"))
        rows.append(("scorer / passthrough", f"{ratio:.2f}x", "target >= 0.8x, aim 1.0x"))
        rows.append(
            ("CPU per message, passthrough / scorer", f"{cpu['passthrough']:.1f} / {cpu['scorer']:.1f} us",
             f"process CPU (all threads); ratio {cpu['passthrough'] / cpu['scorer']:.2f}x, steadier than wall "
             "time on a loaded machine")
        )  # fmt: skip
        rss = max(r["rss_mb"] for r in runs["scorer"])
        rows.append(("scorer peak RSS", f"{rss:.0f} MB", "VmHWM; target <= 150 MB"))
        client_check = None
        if confluent:
            speedup = med["scorer-confluent"] / med["scorer"]
            client_check = (speedup, med["scorer-confluent"])
            rows.append(
                (
                    "scorer throughput, `--kafka-client confluent`",
                    f"{med['scorer-confluent']:,.0f} msg/s",
                    f"median of {rounds}: "
                    + ", ".join(f"{r['rate']:,.0f}" for r in runs["scorer-confluent"]),
                )
            )
            rows.append(("confluent / kafka-python scorer", f"{speedup:.2f}x", "target >= 2x (issue 18)"))
            rows.append(
                (
                    "CPU per message, confluent scorer",
                    f"{cpu['scorer-confluent']:.1f} us",
                    f"kafka-python scorer {cpu['scorer']:.1f} us",
                )
            )
            rss_c = max(r["rss_mb"] for r in runs["scorer-confluent"])
            rows.append(("confluent scorer peak RSS", f"{rss_c:.0f} MB", "VmHWM; librdkafka prefetches"))
        side = _side_by_side(runs, models) if fp32_model else None
        heavy = sorted({m for r in runs["scorer"] for m in r["modules_torch_pandas"]})
        rows.append(("torch/pandas imported by the scorer", ", ".join(heavy) or "none", ""))

        # Latency at half the scorer's maximum rate (and a quarter): a live producer process and a
        # scorer process; on a shared 2-core machine the producer competes with the scorer for CPU.
        # With an fp32 model: latency_rounds rounds, the two models alternating (order flipped each round).
        latency: dict[tuple[str, float], list[dict]] = {}
        rounds_lat = latency_rounds if fp32_model else 1
        order = [
            (f, m)
            for r in range(rounds_lat)
            for f in fractions
            for m in (list(models)[:: 1 if r % 2 == 0 else -1])
        ]
        for fraction, name in order:
            rate = med["scorer"] * fraction  # the same offered rate for both models
            n_live = max(1000, int(rate * latency_seconds))
            live = f"bench-live-{uuid.uuid4().hex[:6]}"
            admin = KafkaAdminClient(bootstrap_servers=boot)
            admin.create_topics(
                {live: {"num_partitions": PARTITIONS, "replication_factor": 1}}, wait_for_metadata=True
            )
            admin.close()
            ready = Path(tmp) / f"ready-{live}"
            scorer = _spawn_worker("scorer", boot, live, str(n_live), models[name], "1", labels, ready=ready)
            deadline = time.monotonic() + 120
            while not ready.exists():  # traffic starts once the scorer owns its partitions
                if scorer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"latency scorer did not start:\n{scorer.communicate()[1][-3000:]}")
                time.sleep(0.1)
            _run_worker("produce", boot, live, str(n_live), f"{rate:.1f}", "11")
            out, err = scorer.communicate(timeout=600)
            if scorer.returncode != 0:
                raise RuntimeError(f"latency scorer failed:\n{err[-3000:]}")
            lat = json.loads(out.strip().splitlines()[-1])
            latency.setdefault((name, fraction), []).append(lat)
        for fraction in fractions:
            lats = latency["scorer", fraction]
            rate = med["scorer"] * fraction
            rows.append(
                (f"end-to-end latency p50 / p99 at {fraction:g} x max",
                 f"{np.median([x['latency_p50_ms'] for x in lats]):.1f} / "
                 f"{np.median([x['latency_p99_ms'] for x in lats]):.1f} ms",
                 f"{rate:,.0f} msg/s for {latency_seconds:.0f} s, median of {len(lats)}, n={lats[0]['latency_n']}")
            )  # fmt: skip

    lines = ["## Streaming scorer (issue 4)", "", "| metric | value | note |", "| --- | --- | --- |"]
    lines += [f"| {metric} | {value} | {note} |" for metric, value, note in rows]
    if client_check is not None:
        speedup, rate = client_check
        lines += [
            "",
            f"- [{'x' if speedup >= 2 else ' '}] `--kafka-client confluent`: {rate:,.0f} msg/s, "
            f"{speedup:.2f}x the kafka-python scorer's on the same {n:,} queued transactions, model and "
            "exactly-once (target >= 2x, issue 18)",
        ]
    if side is not None:
        lines += ["", *_side_table(side, latency, fractions)]
    which = f"model {model_note}" + (
        ", fp32 comparison: the uncompressed model it came from" if fp32_model else ""
    )
    lines += [
        "",
        f"Streaming: {n} synthetic transactions (5000 customers, 3000 terminals, 30 days), {PARTITIONS} "
        f"partitions, batches of up to {BATCH}, embedded broker, exactly-once for both sides; {which}. "
        "Passthrough = read_committed group consumer, msgspec decode, one small JSON per record to the "
        "record's partition, send_offsets_to_transaction + commit per poll (no features, no model).",
    ]
    return "\n".join(lines) + "\n"


def _side_by_side(runs: dict[str, list[dict]], models: dict[str, str]) -> dict[str, dict]:
    """Per model (``scorer`` = compressed, ``scorer-fp32``): the values of every throughput run, bytes opened."""
    from fraudlite.testing.opened import bytes_opened_by_serve

    return {
        name: {
            "bytes": [bytes_opened_by_serve(models[name])],
            "load_ms": [r["load_seconds"] * 1e3 for r in runs[name]],
            "rss_after_load": [r["rss_after_load_mb"] for r in runs[name]],
            "rate": [r["rate"] for r in runs[name]],
            "form": runs[name][0]["form"],
        }
        for name in ("scorer-fp32", "scorer")
    }


def _side_table(side: dict[str, dict], latency: dict, fractions: tuple[float, ...]) -> list[str]:
    """fp32 vs compressed, same run. "Not worse": the compressed model's median is no worse than fp32's
    median by more than fp32's own spread over its runs (max - min; 0 for deterministic rows), the noise
    this machine shows between two runs of the same model."""
    fp, co = side["scorer-fp32"], side["scorer"]
    rows = [  # (metric, fp32 values, compressed values, format, lower is better)
        ("bytes `serve` opens in the model directory", fp["bytes"], co["bytes"], "{:,.0f} B", True),
        ("load time (load_model in the scorer process)", fp["load_ms"], co["load_ms"], "{:.1f} ms", True),
        ("RSS after load (VmRSS of the scorer process)", fp["rss_after_load"], co["rss_after_load"],
         "{:.1f} MB", True),
        ("scorer throughput", fp["rate"], co["rate"], "{:,.0f} msg/s", False),
    ]  # fmt: skip
    for f in fractions:
        a, b = latency.get(("scorer-fp32", f)), latency.get(("scorer", f))
        if a and b:
            rows.append((f"end-to-end p99 at {f:g} x max (same offered rate)", [x["latency_p99_ms"] for x in a],
                         [x["latency_p99_ms"] for x in b], "{:.1f} ms", True))  # fmt: skip
    lines = [
        f"fp32 vs compressed, same run (runnable forms: fp32 `{fp['form']}`, compressed `{co['form']}`); "
        "medians, fp32's spread over its runs in brackets:",
        "",
        "| metric | fp32 (the source) | compressed | compressed / fp32 | compressed not worse |",
        "| --- | --- | --- | --- | --- |",
    ]
    worse = []
    for metric, a_values, b_values, fmt, lower in rows:
        a, b = float(np.median(a_values)), float(np.median(b_values))
        spread = max(a_values) - min(a_values)
        ok = b <= a + spread if lower else b >= a - spread
        if not ok:
            worse.append(metric)
        band = f" [{fmt.format(spread)}]" if len(a_values) > 1 else ""
        lines.append(
            f"| {metric} | {fmt.format(a)}{band} | {fmt.format(b)} | {b / a:.3f} | {'yes' if ok else 'NO'} |"
        )
    lines += [
        "",
        f"- [{' ' if worse else 'x'}] the compressed model is not worse than fp32 in any of them (issue 15)"
        + (f"; FAILED: worse in {', '.join(worse)}" if worse else ""),
    ]
    return lines


def run(workdir: Path) -> str:
    """``make bench`` section. Serves the compressed model that ``bench_compression`` (or else
    ``bench_shipping``) wrote into the same bench run and compares it with its fp32 source, when present;
    else a small random MLP."""
    for bench, compressed, trained in (
        ("bench_compression", "compressed", "trained"),
        ("bench_shipping", "default-compressed", "default/trained"),
    ):
        compressed, trained = workdir.parent / bench / compressed, workdir.parent / bench / trained
        if (compressed / "manifest.json").is_file() and (trained / "manifest.json").is_file():
            return measure(
                model_dir=str(compressed), fp32_model=str(trained), model_label=f"compressed by {bench}"
            )
    return measure()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000, help="transactions per run (default 60000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each (default 3)")
    ap.add_argument("--model", help="model directory to serve (default: a small random MLP)")
    ap.add_argument("--fp32-model", help="also run the scorer with this (uncompressed) model")
    ap.add_argument("--latency-seconds", type=float, default=20.0, help="length of each latency run")
    ap.add_argument(
        "--latency-fractions",
        type=float,
        nargs="+",
        default=[0.5, 0.25],
        help="rates, as x the max (0.5 0.25)",
    )
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "passthrough":
            result = worker_passthrough(rest[0], rest[1], int(rest[2]), rest[3])
        elif kind == "scorer":
            result = worker_scorer(
                rest[0], rest[1], int(rest[2]), rest[3], rest[4] == "1", rest[5], *rest[6:]
            )
        else:
            result = worker_produce(rest[0], rest[1], int(rest[2]), float(rest[3]), int(rest[4]))
        print(json.dumps(result))
        return
    print(
        measure(
            args.n,
            args.rounds,
            args.model,
            args.fp32_model,
            args.latency_seconds,
            tuple(args.latency_fractions),
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
