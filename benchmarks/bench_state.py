"""Online feature state: bytes per customer at 1M customers, and ``OnlineFeatures.compute`` throughput.

Prints markdown table rows (``| metric | value | note |``) for benchmarks/RESULTS.md:

    .venv/bin/python benchmarks/bench_state.py [--customers 1000000] [--rows 200000] [--batch 500]

Bytes are the allocated numpy arrays (day-bucket ring, recent timestamps, bloom, key) plus the id index,
divided by the number of customers: this is what the scorer holds per partition. Throughput replays
random transactions (1M known customers, 10k terminals, 30 days) through ``compute`` in batches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fraudlite.features.online import CustomerState, OnlineFeatures, customer_keys
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec

T0 = 20_454 * SECONDS_PER_DAY  # 2026-01-01


def fill_state(spec: FeatureSpec, customers: int) -> tuple[CustomerState, list[str]]:
    """A state where every customer has one transaction (so every state page is really in memory)."""
    ids = [f"C{i:09d}" for i in range(customers)]
    state = CustomerState(spec)
    rng = np.random.default_rng(1)
    for i in range(0, customers, 65_536):
        chunk = ids[i : i + 65_536]
        n = len(chunk)
        ts = np.full(n, T0 - SECONDS_PER_DAY, dtype=np.int64)
        state.update(
            customer_keys(chunk), ts, rng.integers(100, 50_000, n), rng.integers(0, spec.bloom_bits, n)
        )
    return state, ids


def throughput(
    spec: FeatureSpec, state: CustomerState, ids: list[str], rows: int, batch: int
) -> tuple[float, float]:
    """Best of 3 passes: rows per wall second and per CPU second (the latter is robust to a busy machine).

    Warm state: every pass continues the same stream later in time.
    """
    rng = np.random.default_rng(0)
    features = OnlineFeatures(spec)
    features.set_state(0, state)
    cust = [ids[i] for i in rng.integers(0, len(ids), rows)]
    term = [f"T{t:05d}" for t in rng.integers(0, 10_000, rows)]
    cents = rng.integers(100, 50_000, rows)
    offsets = np.sort(rng.integers(0, 10 * SECONDS_PER_DAY, rows))
    features.terminals.add_transactions(T0 + offsets, term)  # terminals known, as a feeder would ensure
    best_wall = best_cpu = 0.0
    for p in range(3):
        ts = T0 + p * 10 * SECONDS_PER_DAY + offsets
        wall, cpu = time.perf_counter(), time.process_time()
        for s in range(0, rows, batch):
            e = s + batch
            features.compute(0, ts[s:e], cust[s:e], term[s:e], cents[s:e])
        best_wall = max(best_wall, rows / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, rows / (time.process_time() - cpu))
    return best_wall, best_cpu


def table(customers: int = 1_000_000, rows: int = 200_000, batch: int = 500) -> str:
    """Markdown rows: state bytes per customer and online compute rate."""
    spec = FeatureSpec()
    state, ids = fill_state(spec, customers)
    per_customer = state.nbytes / len(state)
    wall, cpu = throughput(spec, state, ids, rows, batch)
    return (
        f"| online state bytes per customer ({len(state):,} customers) | {per_customer:.1f} B "
        f"| target <= 256; {state.nbytes / 2**20:.1f} MiB allocated, capacity {state.capacity:,} |\n"
        f"| online features compute, batch {batch} | {wall:,.0f} rows/s "
        f"| {cpu:,.0f} rows per CPU-second; {rows:,} rows, {len(state):,} customers, 10k terminals; best of 3 |"
    )


def run(workdir: Path) -> str:
    """``make bench`` section."""
    return (
        "## Online feature state (issue 4)\n\n| measure | value | notes |\n|---|---|---|\n"
        + table()
        + "\n\nReproduce: `.venv/bin/python benchmarks/bench_state.py`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    print(table(args.customers, args.rows, args.batch))


if __name__ == "__main__":
    main()
