"""Extra columns (issue 17): test-window quality with a bank's own signals vs the same training without.

``generate --extra-attributes`` data (mcc, channel, country, card_present, entry_mode, device_score,
merchant_id, in which some fraud scenarios leave a trace); ``fraudlite train`` on one window with and
without ``--extra-columns`` for three seeds, ``evaluate`` on a later untouched window. Pass: mean test AP
with the extra columns >= 0.02 above without, and no seed below.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from fraudlite.cli.foundation_commands import train
from fraudlite.compression.served import open_model
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import load_transactions, parse_day, write_table
from fraudlite.models.evaluation import evaluate_window

CUSTOMERS, DAYS, START = 2000, 120, "2026-01-01"
TRAIN = ("2026-02-01", "2026-03-31")
TEST = ("2026-04-08", "2026-04-30")  # after the label delay: nothing of it was seen in training
EXTRAS = (
    "mcc:categorical,channel:categorical,country:categorical,card_present:bool,entry_mode:categorical,"
    "device_score:numeric"
)
SEEDS = (0, 1, 2)
MIN_GAIN = 0.02


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "extras.parquet"
    sim = SimulatorConfig(
        n_customers=CUSTOMERS, n_terminals=2 * CUSTOMERS, n_days=DAYS, start_date=START, extra_attributes=True
    )
    write_table(simulate(sim), data)
    rows = []
    for seed in SEEDS:
        ap = {}
        for name, extras in (("with", EXTRAS), ("without", None)):
            out = workdir / f"{name}-{seed}"
            t0 = time.perf_counter()
            assert train(str(data), {}, *TRAIN, str(out), seed=seed, extra_columns=extras) == 0
            served = open_model(out)
            df = load_transactions(data, require_label=True, extras=served.spec.extra_columns)
            metrics = evaluate_window(served, df, parse_day(TEST[0], "test"), parse_day(TEST[1], "test"))
            ap[name] = (metrics, served.spec.n_features, time.perf_counter() - t0)
        rows.append((seed, ap))
    gains = [ap["with"][0]["average_precision"] - ap["without"][0]["average_precision"] for _, ap in rows]
    passed = statistics.mean(gains) >= MIN_GAIN and min(gains) > 0
    lines = [
        "## Extra columns (issue 17)",
        "",
        f"{CUSTOMERS:,} customers x {DAYS} days from {START} with `--extra-attributes`; `train` on "
        f"{TRAIN[0]}..{TRAIN[1]} (default validation: its last 7 days), test window {TEST[0]}..{TEST[1]} "
        f"(known-compromised cards excluded); `--extra-columns {EXTRAS}` vs none, same seed.",
        "",
        "| seed | inputs | test AP with | test AP without | gain | AUC with | AUC without | CP@100 with | "
        "CP@100 without |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (seed, ap), gain in zip(rows, gains, strict=True):
        w, wo = ap["with"][0], ap["without"][0]
        lines.append(
            f"| {seed} | {ap['with'][1]} vs {ap['without'][1]} | {w['average_precision']:.4f} | "
            f"{wo['average_precision']:.4f} | {gain:+.4f} | {w['roc_auc']:.4f} | {wo['roc_auc']:.4f} | "
            f"{w['card_precision_at_100']:.3f} | {wo['card_precision_at_100']:.3f} |"
        )
    lines += [
        "",
        f"**{'PASS' if passed else 'FAILED'}**: mean test-AP gain {statistics.mean(gains):+.4f} (min "
        f"{min(gains):+.4f}); required mean >= {MIN_GAIN:+.2f} and every seed positive.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/run.py --only bench_extras`.",
    ]
    print(json.dumps({"gains": gains}))
    return "\n".join(lines)
