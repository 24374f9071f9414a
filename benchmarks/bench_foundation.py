"""Foundation: simulator rate, offline feature rate, training peak RSS at 5M rows, model quality table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fraudlite.cli.demo import default_windows
from fraudlite.compression.served import open_model
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import day_of, load_transactions, to_arrays, write_table
from fraudlite.features.offline import compute_features
from fraudlite.features.spec import FeatureSpec
from fraudlite.models.evaluation import evaluate_window, score_frame
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model

DEFAULT = SimulatorConfig()  # the "default generated dataset": 5000 customers, 10000 terminals, 180 days


def _time(fn, repeat: int = 3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def _peak_rss_train(workdir: Path, n_customers: int, n_days: int) -> dict:
    """Train in a child process on a large dataset; report its peak RSS (ru_maxrss)."""
    data = workdir / "large.parquet"
    write_table(
        simulate(SimulatorConfig(n_customers=n_customers, n_terminals=2 * n_customers, n_days=n_days)), data
    )
    code = f"""
import json, resource, time
import numpy as np
from fraudlite.features.spec import FeatureSpec
from fraudlite.data.transactions import load_transactions, day_of
from fraudlite.cli.demo import default_windows
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model
t0 = time.perf_counter()
df = load_transactions({str(data)!r}, require_label=True)
day = day_of(df["ts"].to_numpy())
w = default_windows(int(day.min()), int(day.max()))
cfg = TrainConfig(w.train_start, w.train_end, model_type="mlp", max_epochs=3)
prep = prepare_training_data(df, cfg, FeatureSpec())
train_model(prep, cfg, FeatureSpec(), {str(workdir / "large-model")!r})
print(json.dumps({{"rows": len(df), "train_rows": int(prep.train.sum()), "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["## Foundation (issue 2)", ""]

    df_1m, sim_s = _time(lambda: simulate(SimulatorConfig(n_customers=2800, n_terminals=5600, n_days=180)), 1)
    lines.append(
        f"- Simulator: {len(df_1m):,} transactions in {sim_s:.1f} s = **{len(df_1m) / sim_s:,.0f} tx/s** (target: 1M in <= 60 s)."
    )

    data = workdir / "default.parquet"
    write_table(simulate(DEFAULT), data)
    df = load_transactions(data, require_label=True)
    spec = FeatureSpec()
    tx = to_arrays(spec, df)
    _, feat_s = _time(lambda: compute_features(spec, tx))
    lines.append(
        f"- Offline features: {len(df):,} transactions x {spec.n_features} features in {feat_s:.2f} s (median of 3) = "
        f"**{len(df) / feat_s:,.0f} tx/s** (target: 1M in <= 30 s)."
    )

    rss = _peak_rss_train(workdir, n_customers=10_000, n_days=250)
    lines.append(
        f"- Training peak RSS: **{rss['peak_rss_mb']:,.0f} MB** for {rss['rows']:,} transactions "
        f"({rss['train_rows']:,} training rows, MLP, 3 epochs, load + features + train + export, {rss['seconds']:.0f} s)."
    )

    day = day_of(df["ts"].to_numpy())
    w = default_windows(int(day.min()), int(day.max()))
    lines += [
        "",
        f"Model quality on the default generated dataset ({len(df):,} transactions, fraud rate "
        f"{df['label'].mean():.2%}); {w.describe()}; known-compromised cards excluded from the test window:",
        "",
        "| model | ROC AUC | AP | CP@100 | recall@1% | train s |",
        "|---|---|---|---|---|---|",
    ]
    prepared = None
    for model_type in ("logreg", "hgb", "mlp"):
        cfg = TrainConfig(w.train_start, w.train_end, model_type=model_type)
        prepared = prepared or prepare_training_data(df, cfg, spec)
        t0 = time.perf_counter()
        md = train_model(prepared, cfg, spec, workdir / f"model-{model_type}")
        train_s = time.perf_counter() - t0
        m = evaluate_window(
            md, df, w.test_start, w.test_end, scores=score_frame(open_model(md), df, prepared.X)
        )
        lines.append(
            f"| {model_type} | {m['roc_auc']:.4f} | {m['average_precision']:.4f} | {m['card_precision_at_100']:.4f} "
            f"| {m['recall_at_0.01_budget']:.4f} | {train_s:.0f} |"
        )
    lines.append("")
    lines.append("Reproduce: `.venv/bin/python benchmarks/run.py --only bench_foundation`.")
    return "\n".join(lines)
