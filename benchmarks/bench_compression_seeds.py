"""How much of a compressed model's AP drop is the luck of one training run: `fraudlite compress` with the
built-in recipe and `--max-ap-drop 0.005`, once per seed (every stage's seed shifted; the cluster
stage's restarts shift with it), from the same trained model as `bench_compression`. Reports each run's
size and its validation and test-window AP drop, then the spread.

Not part of `make bench` (about 10 minutes per seed here); run it with
`.venv/bin/python benchmarks/run.py --only bench_compression_seeds` (FRAUDLITE_BENCH_SEEDS, default
"0 3 6": restarts use seed..seed+2, so these runs share no training seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_compression import MAX_AP_DROP, _fair_metrics, default_data_and_model

from fraudlite.compression.pipeline import compress_model_dir
from fraudlite.compression.recipe import default_recipe
from fraudlite.compression.search import SearchError
from fraudlite.runtime import OnnxScorer


def _seeded(seed: int):
    recipe = default_recipe()
    stages = tuple(
        dataclasses.replace(s, settings={**s.settings, "seed": seed + int(s.settings.get("seed", 0))})
        for s in recipe.stages
    )
    return dataclasses.replace(recipe, stages=stages)


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in os.environ.get("FRAUDLITE_BENCH_SEEDS", "0 3 6").split()]
    df, _, w, source, X = default_data_and_model(workdir)
    base_v, base_t = _fair_metrics(source, df, w, OnnxScorer(source.onnx_path).score(X, batch_size=256))
    source_bytes = source.bytes_by_role()["onnx"]
    rows, drops_v, drops_t = [], [], []
    for seed in seeds:
        t0 = time.perf_counter()
        out = workdir / f"compressed-{seed}"
        try:
            md = compress_model_dir(source, df, out, _seeded(seed), MAX_AP_DROP, measure_memory=False)
        except SearchError as exc:
            rows.append(f"| {seed} | stopped: {exc} | | | | | | | | |")
            continue
        report = json.loads(md.file("compression_report").read_text())
        v, t = _fair_metrics(md, df, w, OnnxScorer(md.onnx_path).score(X, batch_size=256))
        dv = base_v["average_precision"] - v["average_precision"]
        dt = base_t["average_precision"] - t["average_precision"]
        drops_v.append(dv)
        drops_t.append(dt)
        compact = md.bytes_by_role()["compact"]
        final = report["summary"]["final"]
        rows.append(
            f"| {seed} | {compact:,} | {source_bytes / compact:.1f} | {final['hidden']} | {final['sparsity']:.0%} | "
            f"{', '.join(s['stage'] for s in report['skipped_stages']) or '-'} | "
            f"{report['stages'][-1]['top_agreement']:.3f} | {dv:+.4f} | {dt:+.4f} | {time.perf_counter() - t0:.0f} |"
        )
    lines = [
        "## Compression: run-to-run spread (issue 3)",
        "",
        f"The trained model of `bench_compression` (validation AP {base_v['average_precision']:.4f}, test AP "
        f"{base_t['average_precision']:.4f}), compressed with the built-in recipe and `--max-ap-drop {MAX_AP_DROP}` "
        "once per seed (every stage's seed + the run's seed; the teacher ensemble's member seeds stay 1, 2, so "
        "every run learns from the same teacher). Same windows as above.",
        "",
        "| seed | compact B | x smaller | student | sparsity | stages skipped | top-1% agree | valid AP drop | "
        "test AP drop | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if drops_t:
        within = sum(d <= MAX_AP_DROP for d in drops_t)
        lines += [
            "",
            f"Test-window AP drop over {len(drops_t)} runs: mean {np.mean(drops_t):+.4f}, min {min(drops_t):+.4f}, "
            f"max {max(drops_t):+.4f}; within {MAX_AP_DROP}: {within} of {len(drops_t)}. Validation drop: mean "
            f"{np.mean(drops_v):+.4f}, max {max(drops_v):+.4f}.",
        ]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/run.py --only bench_compression_seeds`."]
    return "\n".join(lines)
