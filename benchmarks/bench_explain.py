"""Reason codes (issue 19): how faithful the top reason is, what explaining alerts costs the scorer, and
how calibrated the served scores are.

    .venv/bin/python benchmarks/bench_explain.py [--rounds 3] [--n 60000]

On generated data (2,000 customers x 90 days, the windows ``fraudlite demo`` uses: 30 days of history,
train up to a delay gap before the last 14 days, test on those 14), an MLP as ``fraudlite train`` makes it:

* fidelity over the test window's alerts (score >= the model's alert threshold): setting the top
  reason's feature to its reference value (the training mean) lowers the score more than setting a
  random other feature does (one draw per alert, seeded), and more than the average other feature; the
  top reason with 2, 6 (served) and 20 permutations against 200 permutations (how stable it is);
* cost: the scorer's msg/s with reasons vs without (``Scorer.explainer = None``) at a 1% alert rate
  (the alert threshold overridden to the 99th percentile of the streamed transactions' offline scores,
  and the decision threshold lowered to it if above: serving alerts only at or above both),
  the test window replayed with late labels into the embedded broker, each run its own process and
  group, the two alternating (order flipped each round), the harness of ``bench_streaming`` (rate from
  the first record consumed to the last batch committed); CPU per message beside it;
* ECE (10 equal-width bins) of the raw network output vs the served (calibrated) score on the test window.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

DATA = {"n_customers": 2000, "n_terminals": 4000, "n_days": 90, "start_date": "2025-01-01", "seed": 11}
BATCH = 2000
PARTITIONS = 4
ALERT_RATE = 0.01


# -- the worker (a separate process, imports nothing heavy) -----------------------------------------------


def worker_scorer(
    bootstrap: str, topic: str, labels: str, n: int, model: str, threshold: float, alert: float, explain: bool
):
    from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.scorer import Scorer

    u = uuid.uuid4().hex[:8]
    topics = Topics(input=topic, output=f"{topic}-dec-{u}", alerts=f"{topic}-al-{u}", dlq=f"{topic}-dlq-{u}",
                    labels=labels)  # fmt: skip
    config = ServeConfig(
        bootstrap_servers=bootstrap, model_dir=Path(model), topics=topics, group_id=f"bench-explain-{u}",
        metrics_port=None, batch=BatchConfig(max_records=BATCH, max_ms=50), threshold=threshold,
        alert_threshold=alert,
    )  # fmt: skip
    scorer = Scorer(config, load_model(model, threshold, alert))  # alerts are at or above both thresholds
    if not explain:
        scorer.explainer = None
    scorer.connect()
    scorer.run(until=lambda s: s.consumed >= 1)
    first, alerts0 = scorer.summary.consumed, scorer.summary.alerts
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = scorer.run(until=lambda s: s.consumed >= n)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    get = scorer.metrics.registry.get_sample_value
    out = {
        "n": summary.consumed - first,
        "rate": (summary.consumed - first) / seconds,
        "cpu_us": cpu / (summary.consumed - first) * 1e6,
        "alerts": summary.alerts - alerts0,
        "consumed": summary.consumed,
        "alerts_total": summary.alerts,
        "explained": get("fraudlite_explained_total") or 0.0,
        "explain_seconds": get("fraudlite_stage_seconds_sum", {"stage": "explain"}) or 0.0,
        "explain_batches": get("fraudlite_stage_seconds_count", {"stage": "explain"}) or 0.0,
        "inference_seconds": get("fraudlite_stage_seconds_sum", {"stage": "inference"}) or 0.0,
        "batches": summary.batches,
        "form": scorer.model.form,
    }
    scorer.close()
    return out


def _run_worker(*args: str, timeout: float = 900) -> dict:
    from bench_streaming import run_worker_script

    return run_worker_script(__file__, *args, timeout=timeout)


# -- driver ------------------------------------------------------------------------------------------------


def _data_and_model(workdir: Path):
    """(data path, df, model dir, windows): the generated data and the MLP trained on it, compressed
    with the built-in recipe (what ships and serves)."""
    from fraudlite.cli.demo import default_windows
    from fraudlite.compression.compress import compress_model_dir
    from fraudlite.data.simulator import SimulatorConfig, simulate
    from fraudlite.data.transactions import day_of, load_transactions, write_table
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.models.training import TrainConfig, prepare_training_data, train_model

    data = workdir / "tx.parquet"
    write_table(simulate(SimulatorConfig(**DATA)), data)
    df = load_transactions(data, require_label=True)
    day = day_of(df["ts"].to_numpy())
    w = default_windows(int(day.min()), int(day.max()))
    cfg, spec = TrainConfig(w.train_start, w.train_end), FeatureSpec()
    model = train_model(prepare_training_data(df, cfg, spec), cfg, spec, workdir / "trained")
    compressed = compress_model_dir(model, df, workdir / "compressed", None, 0.005, measure_memory=False)
    return data, df, compressed.path, w


def _fidelity(served, X: np.ndarray, alerts: np.ndarray) -> dict:
    from fraudlite.monitoring.reasons import DEFAULT_PERMUTATIONS, shapley_values

    ref = served.normalization()[0]
    f = X.shape[1]
    xa = X[alerts]
    base = served.log_odds(xa)  # the score's log-odds: a probability of 1.0 (float32) hides every drop
    t0 = time.perf_counter()
    phi = shapley_values(served.log_odds, xa, ref, DEFAULT_PERMUTATIONS)
    us_per_row = (time.perf_counter() - t0) / max(len(alerts), 1) * 1e6
    drops = np.empty((len(alerts), f))  # log-odds drop when feature j alone goes to its reference value
    for j in range(f):
        x = xa.copy()
        x[:, j] = ref[j]
        drops[:, j] = base - served.log_odds(x)
    top = phi.argmax(axis=1)
    rows = np.arange(len(alerts))
    rng = np.random.default_rng(0)
    rand = np.array([rng.choice([j for j in range(f) if j != k]) for k in top])
    d_top = drops[rows, top]
    beats_random = float((d_top > drops[rows, rand]).mean())
    others = np.ones_like(drops, bool)
    others[rows, top] = False
    beats_each = float((d_top[:, None] > drops)[others].mean())
    movable = drops.max(axis=1) > 1e-6  # some single feature's ablation lowers the score at all
    beats_movable = float((d_top > drops[rows, rand])[movable].mean()) if movable.any() else float("nan")
    best = shapley_values(served.log_odds, xa, ref, 200, seed=1).argmax(axis=1)
    stable = {p: float((shapley_values(served.log_odds, xa, ref, p, seed=2).argmax(axis=1) == best).mean())
              for p in (2, DEFAULT_PERMUTATIONS, 20)}  # fmt: skip
    efficiency = float(np.abs(phi.sum(axis=1) - (base - served.log_odds(ref[None])[0])).max())
    names = np.array(served.spec.names)
    values, counts = np.unique(names[top], return_counts=True)
    common = ", ".join(
        f"`{v}` {c}" for v, c in sorted(zip(values, counts, strict=True), key=lambda t: -t[1])[:4]
    )
    return {"random": beats_random, "each": beats_each, "stable": stable, "efficiency": efficiency,
            "us_per_row": us_per_row, "common": common, "n": len(alerts), "movable": int(movable.sum()),
            "beats_movable": beats_movable}  # fmt: skip


def measure(workdir: Path, n: int = 60_000, rounds: int = 3) -> str:
    from kafka import KafkaAdminClient

    from fraudlite.compression.served import open_model
    from fraudlite.data.transactions import day_of, write_table
    from fraudlite.kafkaio.broker import EmbeddedBroker
    from fraudlite.models.evaluation import features_for
    from fraudlite.monitoring.calibration import expected_calibration_error
    from fraudlite.monitoring.reasons import DEFAULT_PERMUTATIONS
    from fraudlite.streaming.replay import replay

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, df, model, w = _data_and_model(workdir)
    served = open_model(model)
    X = features_for(served.spec, df).astype(np.float32)
    scores = served.score(X)
    day = day_of(df["ts"].to_numpy())
    test = (day >= w.test_start) & (day <= w.test_end)
    alert_threshold = served.model_dir.alert_threshold
    alerts = np.flatnonzero(test & (scores >= alert_threshold))
    fid = _fidelity(served, X, alerts)
    y = df["label"].to_numpy()
    ece = None
    if served.calibration is not None:
        ece = (expected_calibration_error(served.score_raw(X[test]), y[test]),
               expected_calibration_error(scores[test], y[test]))  # fmt: skip
    setup = time.perf_counter() - t0

    # the stream: the test window's first n transactions, replayed with late labels
    stream = df[test].iloc[:n]
    path = workdir / "stream.csv"
    frame = stream[["tx_id", "customer_id", "terminal_id", "amount", "label"]].copy()
    frame.insert(1, "timestamp", stream["ts"].to_numpy() * 1000)
    write_table(frame, path)
    offline = served.score(features_for(served.spec, stream).astype(np.float32))
    live_alert = float(np.quantile(offline, 1 - ALERT_RATE))
    live_threshold = min(served.model_dir.threshold, live_alert)  # serving alerts only at or above it too
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    with EmbeddedBroker() as broker:
        topic, labels = "bench-explain-tx", "bench-explain-labels"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics({t: {"num_partitions": PARTITIONS, "replication_factor": 1} for t in (topic, labels)},
                            wait_for_metadata=True)  # fmt: skip
        admin.close()
        replay(str(path), bootstrap_servers=broker.bootstrap, topic=topic, labels_topic=labels)
        for r in range(rounds):
            for kind in ("without", "with")[:: 1 if r % 2 == 0 else -1]:
                runs[kind].append(
                    _run_worker(broker.bootstrap, topic, labels, str(len(stream)), str(model), repr(live_threshold),
                                repr(live_alert),
                                "1" if kind == "with" else "0")
                )  # fmt: skip
    rate = {k: float(np.median([x["rate"] for x in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([x["cpu_us"] for x in v])) for k, v in runs.items()}
    spread = {k: (min(x["rate"] for x in v), max(x["rate"] for x in v)) for k, v in runs.items()}
    ratio = rate["with"] / rate["without"]
    w_runs = runs["with"]
    alert_rate = float(np.median([x["alerts_total"] / x["consumed"] for x in w_runs]))
    explained = float(np.median([x["explained"] for x in w_runs]))
    per_row_us = float(np.median([x["explain_seconds"] / max(x["explained"], 1) * 1e6 for x in w_runs]))
    per_batch_ms = float(
        np.median([x["explain_seconds"] / max(x["explain_batches"], 1) * 1e3 for x in w_runs])
    )
    inference_ms = float(np.median([x["inference_seconds"] / max(x["batches"], 1) * 1e3 for x in w_runs]))
    loss = 1 - ratio
    stable = fid["stable"]
    rows = [
        ("fidelity: top reason vs a random other feature", f"{100 * fid['random']:.1f}%",
         f"{fid['n']} test-window alerts (score >= alert threshold {alert_threshold:.3f}); drops in the score's "
         "log-odds (same order as in probability; a float32 probability of 1.0 would tie them); target >= 90%"),
        ("fidelity on the alerts a single ablation can move", f"{100 * fid['beats_movable']:.1f}%",
         f"{fid['movable']} of {fid['n']}; on the others no single feature set to its reference moves the score "
         "at all (a tie, counted as a miss above)"),
        ("fidelity: top reason vs each other feature", f"{100 * fid['each']:.1f}%",
         "share of (alert, other feature) pairs where ablating the top reason lowers the score more"),
        ("top reason = the 200-permutation estimate's", " / ".join(f"{100 * stable[p]:.0f}%" for p in stable),
         f"with {' / '.join(str(p) for p in stable)} permutations (serving uses {DEFAULT_PERMUTATIONS})"),
        ("efficiency: max abs(sum of contributions - (score - reference score))", f"{fid['efficiency']:.1e}",
         "per alert, log-odds units"),
        ("most frequent top reasons", fid["common"], "alerts per feature"),
        ("explain time offline", f"{fid['us_per_row']:.0f} us per alert", f"{served.runtime.get('form')}, one call"),
        ("scorer throughput without reasons", f"{rate['without']:,.0f} msg/s",
         f"median of {rounds} (min-max {spread['without'][0]:,.0f}-{spread['without'][1]:,.0f})"),
        ("scorer throughput with reasons", f"{rate['with']:,.0f} msg/s",
         f"median of {rounds} (min-max {spread['with'][0]:,.0f}-{spread['with'][1]:,.0f})"),
        ("with / without", f"{ratio:.3f}x", f"msg/s loss {100 * loss:.1f}%; target <= 10%"),
        ("CPU per message, without / with", f"{cpu['without']:.1f} / {cpu['with']:.1f} us",
         f"process CPU; ratio {cpu['without'] / cpu['with']:.3f}x"),
        ("live alert rate (with reasons)", f"{100 * alert_rate:.2f}%",
         f"alert threshold {live_alert:.4f} = 99th percentile of the stream's offline scores (decision "
         f"threshold {live_threshold:.4f}: serving alerts only at or above both); "
         f"{explained:,.0f} alerts explained per run"),
        ("explain stage in the scorer", f"{per_batch_ms:.2f} ms per batch with alerts, {per_row_us:.0f} us per alert",
         f"inference stage {inference_ms:.2f} ms per batch"),
    ]  # fmt: skip
    if ece is not None:
        rows.append(("ECE on the test window, raw / calibrated", f"{ece[0]:.4f} / {ece[1]:.4f}",
                     f"10 equal-width bins, {int(test.sum()):,} transactions; "
                     f"calibration {served.calibration.record()}"))  # fmt: skip
    else:
        rows.append(("ECE on the test window, raw / calibrated", "n/a", "the model has no calibration"))
    lines = ["## Reason codes (issue 19)", "", "| metric | value | note |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v} | {note} |" for m, v, note in rows]
    lines += [
        "",
        f"- [{'x' if fid['random'] >= 0.9 else ' '}] fidelity >= 90% of alerts",
        f"- [{'x' if loss <= 0.10 else ' '}] cost <= 10% msg/s at a 1% alert rate",
        "",
        f"Generated data ({len(df):,} transactions: {DATA['n_customers']} customers, {DATA['n_terminals']} "
        f"terminals, {DATA['n_days']} days), an MLP trained by `train_model` defaults and compressed with the "
        f"built-in recipe (stages {', '.join(served.manifest['compression']['stages'])}; served as "
        f"`{w_runs[0]['form']}`); reasons = Shapley values of the served (calibrated) score's log-odds "
        f"by permutation sampling against the training means, {DEFAULT_PERMUTATIONS} permutations in "
        f"antithetic pairs, one batched score call. Stream: {len(stream):,} test-window transactions "
        f"replayed with late labels, {PARTITIONS} partitions, batches of up to {BATCH}, exactly-once, "
        f"embedded broker; setup (data, training, compression, fidelity) {setup:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def run(workdir: Path) -> str:
    """``make bench`` section."""
    return measure(workdir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000, help="streamed transactions per run (default 60000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each (default 3)")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        b, topic, labels, n, model, threshold, alert, explain = args.worker
        result = worker_scorer(
            b, topic, labels, int(n), model, float(threshold), float(alert), explain == "1"
        )
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(measure(Path(tmp), args.n, args.rounds))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
