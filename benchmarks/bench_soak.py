"""Soak: ``fraudlite serve`` for 10 minutes at half its measured maximum rate (``make soak``; not in
``make bench`` or ``make test``).

    .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--fraction 0.5] [--no-write]

1. The maximum rate: an in-process scorer over 60 000 pre-produced transactions (group join excluded).
2. A ``fraudlite serve`` process and a paced producer (a thread here) sending fresh transactions at
   ``fraction`` x that rate: 20 000 customers, 5 000 terminals, event time advancing 8 days a minute,
   so customer state saturates and the terminal table keeps recycling days.
3. Every 10 s: the scorer's RSS (``/proc``), its consumer lag (metric) and the producer-vs-consumed gap,
   and its end-to-end latency histogram (p99 of each 60 s window, interpolated in the buckets).
4. After a warm-up (the first 20%, or longer until event time has covered the longest feature-state ring
   once, the terminal table's 37 days: before that the state is still filling; measured: RSS rose
   157 -> 171 MB until ~33 days of event time, then stayed within 0.2 MB): RSS growth <= 5%, no lag
   growth (the post-warm-up trend adds less than 2 s worth of traffic), p99 steady (last quarter's
   median p99 <= 1.5 x the second quarter's + 10 ms).

Writes its section into ``benchmarks/RESULTS.md`` (``<!-- section: bench_soak -->``) unless --no-write.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from bench_broker import BareConsumer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

T0 = 1_767_225_600  # 2026-01-01
DAYS_PER_MINUTE = 8  # event time per wall minute


def _buckets(samples: dict[str, float]) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of the end-to-end latency histogram."""
    out = []
    for key, value in samples.items():
        m = re.fullmatch(r"fraudlite_end_to_end_latency_seconds_bucket\{le=([^}]+)\}", key)
        if m:
            out.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), value))
    return sorted(out)


def _quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """histogram_quantile over the counts added between two scrapes (linear within a bucket)."""
    if not before or not after:
        return None
    counts = [(b, a[1] - p[1]) for (b, _), a, p in zip(after, after, before, strict=True)]
    total = counts[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, prev = 0.0, 0.0
    for bound, cum in counts:
        if cum >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - prev) / max(cum - prev, 1e-9))
        lower, prev = bound, cum
    return lower


def _sender(bootstrap: str, topic: str):
    """``(send(key, value), close())`` of the feed: librdkafka when installed (a few us of CPU per record,
    on the cores the scorer and the broker share), else kafka-python (~4x that)."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
        return (lambda k, v: producer.send(topic, key=k, value=v)), lambda: (
            producer.flush(),
            producer.close(),
        )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 256 * 1024, "log_level": 3}
    )

    def send(key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value, key)
                return
            except BufferError:  # the local queue is full: let it deliver
                producer.poll(0.01)

    return send, lambda: producer.flush(60)


def feed_client() -> str:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "librdkafka"


class _Feed:
    """Paced producer of fresh transactions (one thread)."""

    def __init__(self, bootstrap: str, topic: str, rate: float, seconds: float) -> None:
        self.bootstrap, self.topic, self.rate, self.seconds = bootstrap, topic, rate, seconds
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)

    def _run(self) -> None:
        try:
            import msgspec

            encode = msgspec.json.Encoder().encode
            rng = np.random.default_rng(1)
            send, close = _sender(self.bootstrap, self.topic)
            total = int(self.rate * self.seconds)
            span = 86_400 * DAYS_PER_MINUTE * self.seconds / 60  # event time (the terminal ring turns)
            t0 = time.perf_counter()
            step = max(1, int(self.rate / 20))  # 20 sends bursts a second
            i = 0
            while i < total:
                n = min(step, total - i)
                cust = rng.integers(0, 20_000, n)
                term = rng.integers(0, 5_000, n)
                amount = np.round(rng.gamma(2.0, 30.0, n), 2)
                for j in range(n):
                    k = i + j
                    ts_ms = int((T0 + span * k / total) * 1000)
                    c = f"C{cust[j]}"
                    value = encode({"tx_id": f"s{k}", "timestamp": ts_ms, "customer_id": c,
                                    "terminal_id": f"T{term[j]}", "amount": float(amount[j])})  # fmt: skip
                    send(c.encode(), value)
                i += n
                self.sent = i
                wait = t0 + i / self.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            close()
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e


def _stage_sums(m: dict[str, float]) -> dict[str, float]:
    """Cumulative per-stage seconds, batches and batched rows of a scrape."""
    from fraudlite.streaming.metrics import STAGES
    from fraudlite.testing.reliability import metric

    out = {stage: metric(m, "fraudlite_stage_seconds_sum", stage=stage) for stage in STAGES}
    out["batches"] = metric(m, "fraudlite_batch_size_count")
    out["rows"] = metric(m, "fraudlite_batch_size_sum")
    return out


def _per_batch(samples: list[dict], a: int, b: int) -> dict[str, float]:
    """Mean ms per batch of each stage, mean batch size and batches/s between samples a and b."""
    d = {k: samples[b]["stages"][k] - samples[a]["stages"][k] for k in samples[b]["stages"]}
    n = max(d.pop("batches"), 1.0)
    out = {k: v / n * 1000 for k, v in d.items() if k != "rows"}
    out["batch"] = d["rows"] / n
    out["batches/s"] = n / (samples[b]["t"] - samples[a]["t"])
    return out


def measure(minutes: float = 10.0, fraction: float = 0.5, sample_s: float = 10.0) -> str:
    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.testing.reliability import (
        ServeProcess,
        create_topics,
        feature_stats,
        make_transactions,
        metric,
        produce,
        scorer_rate,
        serve_args,
        unique_topics,
        write_model,
    )
    from fraudlite.testing.streaming import proc_status_mb

    with tempfile.TemporaryDirectory(prefix="fraudlite-soak-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        boot = broker.bootstrap
        data = make_transactions(60_000, customers=20_000, terminals=5_000, days=30, seed=3)
        model = write_model(work / "model", stats=feature_stats(data), seed=1)

        # 1. maximum rate (in-process, the whole machine)
        t = unique_topics("max")
        create_topics(boot, [t.input, t.labels])
        produce(boot, t.input, data.messages())
        max_rate, _ = scorer_rate(boot, t, model, None, len(data))
        rate = max_rate * fraction
        print(f"max rate {max_rate:,.0f} msg/s -> soak at {rate:,.0f} msg/s for {minutes} min", flush=True)

        # 2. soak
        t = unique_topics("soak")
        create_topics(boot, [t.input, t.labels])
        group = f"soak-{uuid.uuid4().hex[:6]}"
        proc = ServeProcess(serve_args(boot, t, model.path, group), work / "serve.log").start()
        proc.wait_metric("fraudlite_scorer_ready", 1, timeout_s=90)
        seconds = minutes * 60
        feed = _Feed(boot, t.input, rate, seconds)
        probe = BareConsumer(boot, t.input, 60) if feed_client() == "librdkafka" else None
        samples: list[dict] = []
        start = time.monotonic()
        if probe is not None:
            probe.thread.start()
        feed.thread.start()
        try:
            while feed.thread.is_alive():
                time.sleep(sample_s)
                if not proc.alive:
                    raise RuntimeError(f"fraudlite serve died during the soak:\n{proc.tail()}")
                m = proc.metrics()
                consumed = metric(m, "fraudlite_messages_consumed_total")
                lag = metric(m, "fraudlite_consumer_lag_messages")
                samples.append({
                    "t": time.monotonic() - start, "rss_mb": proc_status_mb("VmRSS", proc.proc.pid), "lag": lag,
                    "gap": feed.sent - consumed, "buckets": _buckets(m), "consumed": consumed,
                    "stages": _stage_sums(m),
                })  # fmt: skip
                print(f"t={samples[-1]['t']:.0f}s rss={samples[-1]['rss_mb']:.1f}MB lag={lag:.0f} "
                      f"gap={feed.sent - consumed:.0f} consumed={consumed:.0f}", flush=True)  # fmt: skip
            if feed.error is not None:
                raise RuntimeError(f"producer failed: {feed.error}")
            proc.wait_metric("fraudlite_messages_consumed_total", feed.sent, timeout_s=120)
            failures = proc.value("fraudlite_commit_failures_total")
            assert proc.terminate() == 0
        finally:
            if probe is not None:
                probe.stop.set()
                probe.thread.join(10)
            if proc.alive:
                proc.kill9()

    # 3. analysis
    from fraudlite.features.spec import FeatureSpec

    ring_days = max(FeatureSpec().terminal_ring_days, FeatureSpec().customer_ring_days)
    warm_s = max(0.2 * seconds, 60 * ring_days / DAYS_PER_MINUTE)
    warm = [s for s in samples if s["t"] > warm_s]
    rss0 = statistics.median(s["rss_mb"] for s in warm[: max(1, len(warm) // 8)])
    rss1 = statistics.median(s["rss_mb"] for s in warm[-max(1, len(warm) // 8) :])
    growth = rss1 / rss0 - 1
    ts = np.array([s["t"] for s in warm])
    gap = np.array([s["gap"] for s in warm], dtype=float)
    slope = float(np.polyfit(ts, gap, 1)[0]) if len(ts) > 2 else 0.0
    added = slope * (ts[-1] - ts[0]) if len(ts) > 2 else 0.0
    per_window = max(1, int(round(60 / sample_s)))
    p99 = []
    for i in range(per_window, len(samples), per_window):
        q = _quantile(samples[i - per_window]["buckets"], samples[i]["buckets"], 0.99)
        if q is not None:
            p99.append((samples[i]["t"], q))
    p99_warm = [q for t_, q in p99 if t_ > warm_s]
    quarter = max(1, len(p99_warm) // 4)
    early = statistics.median(p99_warm[quarter : 2 * quarter] or p99_warm[:1]) if p99_warm else float("nan")
    late = statistics.median(p99_warm[-quarter:]) if p99_warm else float("nan")
    # where a p99 change comes from: the scorer's own per-batch work, or the broker path (the probe)
    n_warm = len(samples) - len(warm)
    q_len = max(1, len(warm) // 4)
    second = _per_batch(samples, n_warm + q_len - 1, n_warm + 2 * q_len - 1)
    last = _per_batch(samples, len(samples) - 1 - q_len, len(samples) - 1)
    probe_p99 = [(end, p99) for end, _p50, p99, _seen in (probe.rows if probe is not None else [])]
    broker = [(t_, q) for t_, q in probe_p99 if t_ > warm_s]
    bq = max(1, len(broker) // 4)
    broker_early = statistics.median(q for _, q in broker[bq : 2 * bq]) if len(broker) >= 4 else float("nan")
    broker_late = statistics.median(q for _, q in broker[-bq:]) if broker else float("nan")
    ok_rss = growth <= 0.05
    ok_lag = added < 2 * rate
    ok_p99 = late <= 1.5 * early + 0.010
    verdict = lambda ok: "ok" if ok else "**FAILED**"  # noqa: E731
    rows = [
        ("maximum rate (in-process, 60 000 tx)", f"{max_rate:,.0f} msg/s", ""),
        (
            "soak rate",
            f"{rate:,.0f} msg/s for {minutes:g} min",
            f"{fraction:g} x max; {feed.sent:,} transactions",
        ),
        (
            "RSS after warm-up -> end",
            f"{rss0:.1f} -> {rss1:.1f} MB ({growth * 100:+.1f}%)",
            f"{verdict(ok_rss)} (<= +5%); warm-up = first {warm_s:.0f} s ({ring_days} days of event time, "
            "the longest state ring, fill once)",
        ),  # fmt: skip
        (
            "backlog trend after warm-up",
            f"{slope:+.2f} msg/s ({added:+,.0f} messages over the run)",
            f"{verdict(ok_lag)} (< 2 s of traffic); max backlog {max(gap):,.0f}",
        ),  # fmt: skip
        ("scorer lag metric, max after warm-up", f"{max(s['lag'] for s in warm):,.0f} messages", ""),
        (
            "end-to-end p99 per minute",
            " / ".join(f"{q * 1000:.0f}" for _, q in p99) + " ms",
            f"{verdict(ok_p99)}: last quarter {late * 1000:.0f} ms vs second {early * 1000:.0f} ms",
        ),  # fmt: skip
        (
            "broker: create -> fetched p99 per minute",
            " / ".join(f"{q * 1000:.0f}" for _, q in probe_p99) + " ms",
            f"a bare librdkafka consumer of the input topic (read {probe.seen:,} of {feed.sent:,}): last quarter "
            f"{broker_late * 1000:.0f} ms vs second {broker_early * 1000:.0f} ms"
            if probe is not None
            else "n/a (needs confluent-kafka)",
        ),  # fmt: skip
        (
            "scorer per batch, second -> last quarter",
            ", ".join(
                f"{k} {second[k]:.2f} -> {last[k]:.2f} ms" for k in second if k not in ("batch", "batches/s")
            ),
            f"batch {second['batch']:.0f} -> {last['batch']:.0f} rows, {second['batches/s']:.1f} -> "
            f"{last['batches/s']:.1f} batches/s",
        ),  # fmt: skip
        ("commit/transaction failures", f"{failures:.0f}", ""),
    ]
    lines = ["## Soak (issue 7)", "", "| soak | value | verdict / note |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += [
        "",
        f"Soak (`make soak`): `fraudlite serve` (a separate process, exactly-once, compact changelog every 1 s) "
        f"fed by a paced producer thread ({feed_client()}) at {fraction:g} x the scorer's measured maximum rate; 20 000 customers, "
        f"5 000 terminals, event time {DAYS_PER_MINUTE} days per minute (in 10 minutes the 30-day windows and the terminal ring turn over twice); samples every "
        f"{sample_s:g} s. The producer shares the 2 cores with the scorer and the broker.",
        "",
        "Reproduce: `make soak` (= `.venv/bin/python benchmarks/bench_soak.py`).",
    ]
    return "\n".join(lines) + "\n"


def run(workdir: Path) -> str:
    """Section entry point (benchmarks/run.py ``--only bench_soak``)."""
    return measure()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fraction", type=float, default=0.5, help="of the measured maximum rate (0.5)")
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update RESULTS.md")
    args = ap.parse_args(argv)
    markdown = measure(args.minutes, args.fraction, args.sample_seconds)
    print(markdown)
    if not args.no_write:
        from run import write_section

        write_section("bench_soak", markdown)
    return 0 if "**FAILED**" not in markdown else 1


if __name__ == "__main__":
    raise SystemExit(main())
