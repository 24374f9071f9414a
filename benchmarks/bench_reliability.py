"""Reliability under injected faults: the ``benchmarks/RESULTS.md`` table of issue 7.

    .venv/bin/python benchmarks/bench_reliability.py [--crash-n 200000] [--kills 5] [--poison-n 60000]

Scenarios, each on the real embedded broker with ``fraudlite serve`` processes (so they can be
``kill -9``-ed) or in-process scorers, counted from the topics afterwards (read_committed):

* crash: replay N transactions (1% poison), ``kill -9`` the scorer at random points K times,
  restarting it each time; decisions must equal an uninterrupted run's;
* rebalance: three scorers in one group over 6 partitions, one ``kill -9``-ed and one added during
  traffic; resume time of the victim's partitions;
* broker restart: the scorer started before the broker, the broker stopped mid-run and started again
  (memory storage: topics gone), transactions sent again;
* poison: 10% poison (every kind) vs clean traffic, alternating rounds: throughput and CPU per message.

Every section module exposes ``run(workdir) -> markdown`` (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _count(records) -> tuple[int, int, set[str]]:
    """(decisions, duplicated transactions, tx ids)."""
    from fraudlite.testing.reliability import decision_counts

    c = decision_counts(records)
    return sum(c.values()), sum(1 for v in c.values() if v > 1), set(c)


def crash(bootstrap: str, model, work: Path, n: int, kills: int, seed: int = 7) -> dict:
    from fraudlite.testing.poison import mix_poison, poison_messages
    from fraudlite.testing.reliability import (
        committed_total,
        create_topics,
        decision_scores,
        kill9_during_replay,
        make_transactions,
        offline_scores,
        produce,
        read_records,
        reference_scores,
        serve_args,
        unique_topics,
    )

    rng = random.Random(seed)
    data = make_transactions(n, customers=max(3000, n // 20), terminals=2000, days=30, seed=5)
    poison = poison_messages(n // 100, seed=seed)
    messages = mix_poison(data.messages(), poison)
    valid = {json.loads(v)["tx_id"] for _, v in messages if v and v.startswith(b'{"tx_id": "tx')}
    t = unique_topics("crash")
    create_topics(bootstrap, [t.input, t.labels])
    produce(bootstrap, t.input, messages)
    group = f"crash-{uuid.uuid4().hex[:6]}"
    args = serve_args(bootstrap, t, model.path, group)
    log = work / "crash.log"
    t_start = time.monotonic()
    proc, kill_log = kill9_during_replay(args, log, bootstrap, group, t.input, 4, len(messages), kills, rng)
    restarted = time.monotonic()
    at_last_kill = kill_log[-1]["committed"]
    deadline = time.monotonic() + 300
    while committed_total(bootstrap, group, t.input, 4) <= at_last_kill:
        if time.monotonic() > deadline or not proc.alive:
            raise RuntimeError(f"no progress after the last restart:\n{proc.tail()}")
        time.sleep(0.05)
    recoveries = [k["successor_progress_s"] for k in kill_log if "successor_progress_s" in k]
    recoveries.append(time.monotonic() - restarted)
    deadline = time.monotonic() + 900
    while committed_total(bootstrap, group, t.input, 4) < len(messages):
        if time.monotonic() > deadline or not proc.alive:
            raise RuntimeError(f"crash scenario did not finish:\n{proc.tail()}")
        time.sleep(0.5)
    total_s = time.monotonic() - t_start
    proc.terminate()
    decisions = read_records(bootstrap, t.output, min_count=len(valid), timeout_s=120)
    out, dup, ids = _count(decisions)
    dlq = read_records(bootstrap, t.dlq, min_count=len(poison), timeout_s=60)
    expected = reference_scores(bootstrap, t, model, len(messages))
    got = decision_scores(decisions)
    differ = sum(1 for k, v in expected.items() if got.get(k) != v)
    offline = offline_scores(data, model, got)
    off = sum(1 for k, v in got.items() if abs(offline[k] - v) > 1e-4)
    return {
        "scenario": f"crash: kill -9 x{kills} at random points",
        "faults": f"{kills} x SIGKILL of `fraudlite serve` (restarted each time): "
                  + ", ".join(k["when"] for k in kill_log),
        "in": len(valid), "out": out, "lost": len(valid - ids), "dup": dup,
        "poison": f"{len(poison)} / {len(dlq)}",
        "recovery": f"restart to first new commit: median {statistics.median(recoveries):.1f} s, "
                    f"max {max(recoveries):.1f} s (process start + group join + restore)",
        "note": f"{differ} decisions differ from an uninterrupted run, {off} from the offline features' scores "
                f"(> 1e-4); {total_s:.0f} s in all",
    }  # fmt: skip


def rebalance(bootstrap: str, model, work: Path, n: int) -> dict:
    from fraudlite.testing.reliability import (
        ServeProcess,
        assigned_partitions,
        committed_offsets,
        committed_total,
        create_topics,
        decision_scores,
        make_transactions,
        offline_scores,
        produce,
        read_records,
        serve_args,
        unique_topics,
    )

    parts = 6
    t = unique_topics("rebal")
    create_topics(bootstrap, [t.input, t.labels], parts)
    group = f"rebal-{uuid.uuid4().hex[:6]}"
    data = make_transactions(n, customers=3000, terminals=2000, days=30, seed=8)
    messages = data.messages()
    args = serve_args(bootstrap, t, model.path, group, ["--partitions", str(parts)])
    members = [ServeProcess(args, work / f"rebal-{i}.log").start() for i in range(3)]

    def assigned(m) -> list[int]:
        return assigned_partitions(m.text()) or []

    deadline = time.monotonic() + 90
    while not all(assigned(m) for m in members):
        if time.monotonic() > deadline:
            raise RuntimeError("members did not join")
        time.sleep(0.2)
    produce(bootstrap, t.input, messages[:2000])

    def traffic() -> None:
        for i in range(2000, len(messages), 500):
            produce(bootstrap, t.input, messages[i : i + 500])
            time.sleep(0.2)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    time.sleep(2.0)
    victim = members[1]
    owned = assigned(victim)
    at_kill = committed_offsets(bootstrap, group, t.input, parts)
    victim.kill9()
    killed = time.monotonic()
    resumed: dict[int, float] = {}
    while len(resumed) < len(owned):
        now = committed_offsets(bootstrap, group, t.input, parts)
        for p in owned:
            if p not in resumed and (now[p] or 0) > (at_kill[p] or 0):
                resumed[p] = time.monotonic() - killed
        if time.monotonic() - killed > 120:
            raise RuntimeError(f"partitions {set(owned) - set(resumed)} stuck")
        time.sleep(0.2)
    members.append(ServeProcess(args, work / "rebal-new.log").start())
    feeder.join(300)
    deadline = time.monotonic() + 300
    while committed_total(bootstrap, group, t.input, parts) < len(messages):
        if time.monotonic() > deadline:
            raise RuntimeError("rebalance scenario did not finish")
        time.sleep(0.3)
    for m in members:
        if m.alive:
            m.terminate()
    decisions = read_records(bootstrap, t.output, min_count=len(messages), timeout_s=120)
    out, dup, ids = _count(decisions)
    got = decision_scores(decisions)
    offline = offline_scores(data, model, got)
    off = sum(1 for k, v in got.items() if abs(offline[k] - v) > 1e-4)
    return {
        "scenario": "rebalance: 3 members, kill one, add one",
        "faults": "1 x SIGKILL of a member during traffic, then a 4th member joins",
        "in": len(messages), "out": out, "lost": len(set(data.tx_id) - ids), "dup": dup, "poison": "-",
        "recovery": f"victim's partitions {owned} committing again after {max(resumed.values()):.1f} s "
                    "(survivors alone: session timeout 3 s + rebalance + restore)",
        "note": f"{off} decisions differ from the offline features' scores (> 1e-4)",
    }  # fmt: skip


def broker_restart(model, work: Path) -> dict:
    from fraudlite.kafkaio.broker import EmbeddedBroker, free_port
    from fraudlite.testing.reliability import ServeProcess, make_transactions, produce, read_records

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    args = ["--model", str(model.path), "--bootstrap-servers", bootstrap, "--group-id", "bf",
            "--session-timeout-ms", "3000"]  # fmt: skip
    first = make_transactions(5000, customers=500, terminals=300, days=30, seed=1, prefix="a")
    again = make_transactions(5000, customers=500, terminals=300, days=30, seed=2, prefix="b")
    proc = ServeProcess(args, work / "broker.log").start()
    broker = EmbeddedBroker(port=port)
    try:
        time.sleep(3.0)
        broker.start()
        t0 = time.monotonic()
        proc.wait_metric("fraudlite_scorer_ready", 1, timeout_s=90)
        first_connect = time.monotonic() - t0
        produce(bootstrap, "transactions", first.messages())
        proc.wait_metric("fraudlite_messages_consumed_total", len(first), timeout_s=120)
        before, before_dup, _ = _count(read_records(bootstrap, "fraud-decisions", min_count=len(first)))
        broker.stop()
        t0 = time.monotonic()
        while proc.value("fraudlite_scorer_healthy") != 0:
            time.sleep(0.1)
        detected = time.monotonic() - t0
        time.sleep(5.0)
        broker = EmbeddedBroker(port=port).start()
        t0 = time.monotonic()
        while not (proc.value("fraudlite_scorer_ready") == 1 and proc.value("fraudlite_scorer_healthy") == 1):
            if not proc.alive or time.monotonic() - t0 > 120:
                raise RuntimeError(f"no recovery:\n{proc.tail()}")
            time.sleep(0.1)
        recovered = time.monotonic() - t0
        produce(bootstrap, "transactions", again.messages())
        out, dup, ids = _count(
            read_records(bootstrap, "fraud-decisions", min_count=len(again), timeout_s=120)
        )
        alive = proc.alive
        proc.terminate()
    finally:
        if proc.alive:
            proc.kill9()
        broker.stop()
    return {
        "scenario": "broker: started late, stopped and restarted (memory: topics gone)",
        "faults": "scorer up 3 s before the broker; broker stopped mid-run for 5 s, restarted empty",
        "in": f"{len(first)} + {len(again)} re-sent", "out": f"{before} + {out}",
        "lost": len(set(again.tx_id) - ids), "dup": before_dup + dup, "poison": "-",
        "recovery": f"first connect {first_connect:.1f} s after the broker started; outage seen in "
                    f"{detected:.1f} s; ready again {recovered:.1f} s after the restart",
        "note": "the scorer never exited" if alive else "THE SCORER EXITED",
    }  # fmt: skip


def poison(bootstrap: str, model, n: int, rounds: int) -> tuple[dict, list[tuple[str, str, str]]]:
    from fraudlite.testing.poison import mix_poison, poison_messages
    from fraudlite.testing.reliability import (
        create_topics,
        make_transactions,
        produce_big,
        read_records,
        scorer_rate,
        unique_topics,
    )

    data = make_transactions(n, customers=5000, terminals=3000, days=30, seed=21)
    clean = data.messages()
    bad = poison_messages(n // 10, seed=3)
    mixed = mix_poison(clean, bad)
    rates: dict[str, list[tuple[float, float]]] = {"clean": [], "poison": []}
    last = None
    for _ in range(rounds):
        for name, messages in (("clean", clean), ("poison", mixed)):
            t = unique_topics(f"poison-{name}")
            create_topics(bootstrap, [t.input, t.labels])
            produce_big(bootstrap, t.input, messages)
            rates[name].append(scorer_rate(bootstrap, t, model, messages, len(messages)))
            if name == "poison":
                last = t
    rate = {k: statistics.median(r for r, _ in v) for k, v in rates.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in rates.items()}
    n_valid = len(mixed) - len(bad)
    out, dup, _ = _count(read_records(bootstrap, last.output, min_count=n_valid, timeout_s=120))
    dlq = read_records(bootstrap, last.dlq, min_count=len(bad), timeout_s=60)
    row = {
        "scenario": "poison: 10% of the traffic",
        "faults": f"{len(bad)} poison messages of every kind among {len(mixed)}",
        "in": n_valid, "out": out, "lost": n_valid - out + dup, "dup": dup, "poison": f"{len(bad)} / {len(dlq)}",
        "recovery": "-", "note": f"throughput x{rate['poison'] / rate['clean']:.2f} of clean traffic",
    }  # fmt: skip
    extra = [
        ("clean traffic", f"{rate['clean']:,.0f} msg/s", f"{cpu['clean'] * 1e6:.1f} us CPU/msg, median of {rounds}"),
        ("10% poison", f"{rate['poison']:,.0f} msg/s", f"{cpu['poison'] * 1e6:.1f} us CPU/msg, median of {rounds}"),
        ("poison / clean", f"{rate['poison'] / rate['clean']:.2f}x throughput",
         f"{cpu['clean'] / cpu['poison']:.2f}x by CPU per message; target >= 0.8x"),
    ]  # fmt: skip
    return row, extra


def measure(crash_n: int = 200_000, kills: int = 5, rebalance_n: int = 60_000, poison_n: int = 60_000,
            rounds: int = 3, workdir: Path | None = None) -> str:  # fmt: skip
    import tempfile

    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.testing.reliability import feature_stats, make_transactions, write_model

    rows: list[dict] = []
    extra: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        stats = feature_stats(make_transactions(20_000, customers=3000, terminals=2000, days=30, seed=5))
        model = write_model(work / "model", stats=stats, seed=1)
        with EmbeddedBroker() as broker:
            for name, fn in (
                ("crash", lambda: crash(broker.bootstrap, model, work, crash_n, kills)),
                ("rebalance", lambda: rebalance(broker.bootstrap, model, work, rebalance_n)),
                ("poison", lambda: poison(broker.bootstrap, model, poison_n, rounds)),
            ):
                print(f"-- {name}", flush=True)
                t0 = time.perf_counter()
                try:
                    result = fn()
                except Exception as e:  # noqa: BLE001 - report, go on with the other scenarios
                    result = {"scenario": name, "faults": "-", "in": "-", "out": "-", "lost": "-", "dup": "-",
                              "poison": "-", "recovery": "-", "note": f"FAILED: {e.__class__.__name__}: {e}"[:300]}  # fmt: skip
                if isinstance(result, tuple):
                    result, more = result
                    extra += more
                rows.append(result)
                print(f"-- {name}: {time.perf_counter() - t0:.0f} s {result}", flush=True)
        print("-- broker restart", flush=True)
        try:
            rows.append(broker_restart(model, work))
        except Exception as e:  # noqa: BLE001
            rows.append({"scenario": "broker restart", "faults": "-", "in": "-", "out": "-", "lost": "-",
                         "dup": "-", "poison": "-", "recovery": "-", "note": f"FAILED: {e}"[:300]})  # fmt: skip
    lines = [
        "## Reliability under injected faults (issue 7)",
        "",
        "| scenario | faults injected | transactions in | decisions out | lost | duplicated | poison sent / in DLQ "
        "| recovery | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['faults']} | {r['in']} | {r['out']} | {r['lost']} | {r['dup']} | {r['poison']} "
            f"| {r['recovery']} | {r['note']} |"
        )
    if extra:
        lines += ["", "| poison throughput | value | note |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in extra]
    lines += [
        "",
        'Reliability: counts read back from the topics with `read_committed` after each scenario; "lost" = '
        'valid transactions without a decision, "duplicated" = transactions with more than one. Exactly-once '
        "on the embedded broker relies on the scorer's idempotent outputs (a restarted producer *commits* its "
        "dead predecessor's open transaction there) and on host-slot transactional ids (survivors end a dead "
        "member's transaction). Recovery times include Python start-up and the consumer-group join "
        "(session timeout 3 s). Shared 2-core machine: times are indicative.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/run.py --only bench_reliability`.",
    ]
    return "\n".join(lines) + "\n"


def run(workdir: Path) -> str:
    """``make bench`` section (the issue's 200 000 transactions and 5 kills)."""
    return measure(workdir=workdir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crash-n", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--rebalance-n", type=int, default=60_000)
    ap.add_argument("--poison-n", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating clean/poison rounds")
    args = ap.parse_args(argv)
    print(measure(args.crash_n, args.kills, args.rebalance_n, args.poison_n, args.rounds))


if __name__ == "__main__":
    main()
