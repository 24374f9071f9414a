"""Training past memory (issue 20): `fraudlite train` on 1M, 5M and 20M generated transactions.

The data: a directory of Parquet files, one per "region" (``simulate`` runs of ~5,640 customers and twice
as many terminals over 180 days, ~2M rows each, different seeds; customer, terminal and tx ids prefixed or
offset so that no two regions share one), so the generator never holds more than one region. Each
`fraudlite train` runs as a child process of a small wrapper that reports the child's peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and wall time. Quality: AP / ROC AUC on the test window (the
last 14 days, known-compromised cards excluded as in `evaluate`), scored from the feature store the run
kept (``--features-dir``). At 1M rows the in-memory path runs too, on the same rows as one Parquet file.

Run alone: ``.venv/bin/python benchmarks/run.py --only bench_scale`` (~30 min; not in `make bench`).
``FRAUDLITE_SCALE_SIZES=1000000,5000000`` runs fewer sizes (then the section says so).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fraudlite.cli.demo import default_windows
from fraudlite.compression.served import open_model
from fraudlite.data.feature_store import FeatureStore
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import format_day, parse_day
from fraudlite.models.evaluation import known_fraud_mask
from fraudlite.models.metrics import average_precision, roc_auc

SIZES = (1_000_000, 5_000_000, 20_000_000)
CUSTOMERS_PER_FILE = 5_640  # ~2.0M rows over 180 days
ROWS_PER_CUSTOMER = 359.7  # measured mean of the default simulator over 180 days
MAX_EPOCHS = 20
FRAUDLITE = str(Path(sys.executable).with_name("fraudlite"))
_WRAP = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[-1] + ".log", "w")).returncode
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def generate(folder: Path, rows: int) -> dict:
    """Regions of ~2M rows as separate files until ``rows``; returns rows, frauds, days, seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    customers = math.ceil(rows / ROWS_PER_CUSTOMER)
    files = math.ceil(customers / CUSTOMERS_PER_FILE)
    t0, total, frauds, offset = time.perf_counter(), 0, 0, 0
    for k in range(files):
        n_cust = min(CUSTOMERS_PER_FILE, customers - k * CUSTOMERS_PER_FILE)
        df = simulate(SimulatorConfig(n_customers=n_cust, n_terminals=2 * n_cust, n_days=180, seed=1000 + k))
        table = pa.Table.from_pandas(df.drop(columns=["scenario"]), preserve_index=False)
        del df
        prefix = pa.scalar(f"R{k:02d}-")
        table = table.set_column(0, "tx_id", pc.add(table["tx_id"], offset))
        for name in ("customer_id", "terminal_id"):
            col = pc.binary_join_element_wise(prefix, table[name].cast(pa.string()), "")
            table = table.set_column(table.schema.get_field_index(name), name, col)
        pq.write_table(table, folder / f"region-{k:02d}.parquet")
        total, frauds, offset = (
            total + table.num_rows,
            frauds + pc.sum(table["label"]).as_py(),
            offset + table.num_rows,
        )
    return {"rows": total, "frauds": frauds, "files": files, "seconds": time.perf_counter() - t0}


def _as_one_file(folder: Path, path: Path) -> None:
    tables = [pq.read_table(f) for f in sorted(folder.glob("*.parquet"))]
    pq.write_table(pa.concat_tables(tables), path)


def train(workdir: Path, data: Path, name: str, *flags: str) -> dict:
    """`fraudlite train` on the default windows in a measured child process."""
    first = parse_day(SimulatorConfig().start_date, "start")
    w = default_windows(first, first + 179)
    out = workdir / f"model-{name}"
    cmd = [FRAUDLITE, "train", "--data", str(data), "--train-start", format_day(w.train_start),
           "--train-end", format_day(w.train_end), "--max-epochs", str(MAX_EPOCHS), *flags, "--out", str(out)]  # fmt: skip
    result = json.loads(subprocess.run([sys.executable, "-c", _WRAP, *cmd], check=True, capture_output=True,
                                       text=True).stdout)  # fmt: skip
    if result["rc"] != 0:
        raise RuntimeError(f"train {name} failed: {Path(str(out) + '.log').read_text()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    result.update(model=out, training=manifest.get("training", {}), valid=manifest["metrics"]["validation"])
    return result


def test_quality(model: Path, store_dir: Path) -> dict:
    """AP and ROC AUC of ``model`` on the last 14 days, known-compromised cards excluded (as `evaluate`)."""
    store, served = FeatureStore.open(store_dir), open_model(model)
    day, customer, label = store.column("day"), store.column("customer"), store.column("label")
    w = default_windows(int(day.min()), int(day.max()))
    frame = pd.DataFrame({"ts": day.astype(np.int64) * 86_400, "customer_id": customer, "label": label})
    mask = (day >= w.test_start) & (day <= w.test_end) & ~known_fraud_mask(frame, served.spec.delay_days)
    del frame
    scores = []
    for b in store.blocks():
        m = mask[b.start : b.start + len(b.day)]
        if m.any():
            scores.append(served.score(b.X[m]))
    s, y = np.concatenate(scores), label[mask]
    return {
        "ap": average_precision(y, s),
        "auc": roc_auc(y, s),
        "n": int(mask.sum()),
        "n_fraud": int(y.sum()),
    }


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = tuple(int(s) for s in os.environ.get("FRAUDLITE_SCALE_SIZES", "").split(",") if s) or SIZES
    rows, notes = [], []
    for size in sizes:
        folder = workdir / f"data-{size}"
        gen = generate(folder, size)
        print(f"generated {gen['rows']:,} rows in {gen['files']} files, {gen['seconds']:.0f} s", flush=True)
        store = workdir / f"store-{size}"
        runs = {"out of core": train(workdir, folder, f"ooc-{size}", "--features-dir", str(store))}
        if size == sizes[0]:
            one = workdir / f"one-{size}.parquet"
            _as_one_file(folder, one)
            runs["in memory"] = train(workdir, one, f"mem-{size}")
            runs["out of core, r=0.2"] = train(workdir, folder, f"ooc02-{size}", "--negative-rate", "0.2")
        for path, r in runs.items():
            q = test_quality(r["model"], store)
            rows.append((gen, path, r, q))
            print(
                f"{size:,} {path}: {r['peak_rss_mb']:,.0f} MB, {r['seconds']:.0f} s, test AP {q['ap']:.4f}",
                flush=True,
            )
        shutil.rmtree(store)
        shutil.rmtree(folder)
    lines = [
        "## Training past memory (issue 20)",
        "",
        "`fraudlite train` (MLP, `--max-epochs 20`, default `--memory-limit 2G`) on generated data given as a "
        "directory of Parquet files (regions of ~2M rows, disjoint ids); the out-of-core path is chosen "
        "automatically for a directory. Peak RSS of the train process (`ru_maxrss` of the child), wall time "
        "(generation excluded), rows/s = input rows / wall time. Test AP/AUC: last 14 days, known-compromised "
        "cards excluded. r = the negative rate (share of legit training rows kept; each weighs 1/r in the loss).",
        "",
        "| rows | path | r | training rows used | peak RSS | wall time | rows/s | test AP | test AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for gen, path, r, q in rows:
        t = r["training"]
        rate = t.get("negative_rate", 1.0)
        used = t.get("n_sampled")
        lines.append(
            f"| {gen['rows']:,} | {path} | {rate:.3g} | {f'{used:,}' if used else 'all'} | {r['peak_rss_mb']:,.0f} MB "
            f"| {r['seconds']:.0f} s | {gen['rows'] / r['seconds']:,.0f} | {q['ap']:.4f} | {q['auc']:.4f} |"
        )
    if sizes != SIZES:
        notes.append(f"- Partial run: sizes {', '.join(f'{s:,}' for s in sizes)} only.")
    biggest = [x for x in rows if x[1] == "out of core"][-1]
    notes.append(
        f"- Acceptance: {biggest[0]['rows']:,} rows, peak RSS {biggest[2]['peak_rss_mb']:,.0f} MB "
        f"({'<=' if biggest[2]['peak_rss_mb'] <= 3072 else '>'} 3 GB)."
    )
    return "\n".join(lines + [""] + notes) + "\n"
