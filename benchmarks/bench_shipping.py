"""What ships and serves (issue 15): a compressed model directory against the fp32 model it came from, on
the default data and on a small dataset (2,000 customers x 90 days).

Per dataset: `fraudlite train` defaults, `fraudlite compress` with the built-in recipe and --max-ap-drop
0.005 (the default data's models are bench_compression's when it ran in the same `run.py` invocation;
otherwise compressed here with --keep-training-files); then

* bytes `serve` opens in the model directory (every file, counted with an audit hook in a fresh process);
* bytes a registry stores per version: now (the serve files) vs every file of the directory (what the
  registry copied before);
* the served scores vs the compressed weights (the decoded artifact's, and the state file's when the
  directory keeps one) and the served AP vs the AP compression reported;
* load time and RSS after load (`load_model` in fresh processes, median of 5, alternating fp32 and
  compressed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MAX_AP_DROP = 0.005
REPEATS = 5
SMALL = {"n_customers": 2000, "n_terminals": 4000, "n_days": 90, "start_date": "2025-01-01", "seed": 11}
SMALL_TRAIN = ("2025-02-01", "2025-03-01")

_LOAD_CODE = """
import json, sys, time
import psutil
from fraudlite.streaming.reload import load_model
rss = psutil.Process().memory_info().rss
t0 = time.perf_counter()
model = load_model(sys.argv[1])
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss": psutil.Process().memory_info().rss - rss, "form": model.form}))
"""


def load_probe(paths: dict[str, Path], repeats: int = REPEATS) -> dict[str, dict]:
    """Median load time and RSS added by ``load_model`` per directory, fresh processes, alternating."""
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, path in paths.items():
            out = subprocess.run([sys.executable, "-c", _LOAD_CODE, str(path)], check=True,
                                 capture_output=True, text=True)  # fmt: skip
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        name: {
            "seconds": float(np.median([r["seconds"] for r in rs])),
            "rss": float(np.median([r["rss"] for r in rs])),
            "form": rs[0]["form"],
        }
        for name, rs in runs.items()
    }


def _models(workdir: Path, name: str):
    """(df, source ModelDir, compressed ModelDir, seconds) for one dataset."""
    from bench_compression import default_data_and_model

    from fraudlite.compression.compress import compress_model_dir
    from fraudlite.data.simulator import SimulatorConfig, simulate
    from fraudlite.data.transactions import load_transactions, parse_day, write_table
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.modeldir import ModelDir
    from fraudlite.models.training import TrainConfig, prepare_training_data, train_model

    t0 = time.perf_counter()
    reuse = workdir.parent / "bench_compression"
    if name == "default" and (reuse / "compressed" / "manifest.json").is_file():  # this run's models
        df = load_transactions(reuse / "default.parquet", require_label=True)
        return df, ModelDir.load(reuse / "trained"), ModelDir.load(reuse / "compressed"), 0.0
    if name == "default":
        (workdir / "default").mkdir(parents=True, exist_ok=True)
        df, _day, _w, source, _X = default_data_and_model(workdir / "default")
    else:
        data = workdir / "small.parquet"
        write_table(simulate(SimulatorConfig(**SMALL)), data)
        df = load_transactions(data, require_label=True)
        cfg = TrainConfig(parse_day(SMALL_TRAIN[0], "s"), parse_day(SMALL_TRAIN[1], "e"))
        spec = FeatureSpec()
        source = train_model(prepare_training_data(df, cfg, spec), cfg, spec, workdir / "small-trained")
    compressed = compress_model_dir(source, df, workdir / f"{name}-compressed", None, MAX_AP_DROP,
                                    measure_memory=False, keep_training_files=True)  # fmt: skip
    return df, source, compressed, time.perf_counter() - t0


def _measure(workdir: Path, name: str) -> tuple[list[str], list[tuple[str, bool]]]:
    from fraudlite.compression.served import open_model
    from fraudlite.compression.state import CompressedMLP
    from fraudlite.data.transactions import parse_day, window_mask
    from fraudlite.models.evaluation import evaluate_scores, features_for
    from fraudlite.pipeline.registry import Registry
    from fraudlite.testing.opened import files_opened_by_serve

    df, source, compressed, seconds = _models(workdir, name)
    opened = {
        "fp32": files_opened_by_serve(source.path),
        "compressed": files_opened_by_serve(compressed.path),
    }
    total = {k: sum(v.values()) for k, v in opened.items()}
    every_file = sum(p.stat().st_size for p in compressed.path.iterdir() if p.is_file())
    version = Registry(workdir / f"{name}-registry", create=True).add(compressed)
    stored = sum(p.stat().st_size for p in version.path.iterdir() if p.is_file())

    served = open_model(compressed.path)
    w = compressed.manifest["data_window"]
    valid = window_mask(df, parse_day(w["valid_start"], "v"), parse_day(w["valid_end"], "v"), "validation")
    X = features_for(served.spec, df)
    scores = served.score(X)
    references = [served.state]  # the decoded artifact; and the state compress kept, an independent copy
    if compressed.has("state"):
        references.append(CompressedMLP.load(compressed.file("state")))
    calibrate = served.calibration or (lambda p: p)  # what the weights compute, then the stored calibration
    diff = max(
        float(np.max(np.abs(scores[valid] - calibrate(ref.predict_proba(X[valid]))))) for ref in references
    )
    served_ap = float(evaluate_scores(df, scores, valid)["average_precision"])
    reported_ap = float(compressed.manifest["metrics"]["validation"]["average_precision"])
    load = load_probe({"fp32": source.path, "compressed": compressed.path})

    def files(kind: str) -> str:
        return ", ".join(f"{n} {b:,}" for n, b in sorted(opened[kind].items()))

    c = compressed.manifest["compression"]
    lines = [
        f"### {name} data ({len(df):,} transactions; "
        + (f"train + compress {seconds:.0f} s)" if seconds else "the models of bench_compression, same run)"),
        "",
        f"Compressed: stages {', '.join(c['stages'])}, validation AP drop {c['ap_drop']:+.4f}, compact artifact "
        f"{compressed.bytes_by_role()['compact']:,} B ({c['compact_ratio']:.1f}x smaller than the fp32 ONNX; "
        f"{'with' if compressed.has('state') else 'without'} training files), served as "
        f"`{served.runtime['form']}` ({served.runtime['why']}).",
        "",
        "| | fp32 (trained) | compressed | compressed / fp32 |",
        "|---|---|---|---|",
        f"| bytes `serve` opens | {total['fp32']:,} | {total['compressed']:,} | "
        f"{total['compressed'] / total['fp32']:.3f} |",
        f"| files opened | {files('fp32')} | {files('compressed')} | |",
        f"| load time (median of {REPEATS} fresh processes) | {load['fp32']['seconds'] * 1e3:.1f} ms | "
        f"{load['compressed']['seconds'] * 1e3:.1f} ms | {load['compressed']['seconds'] / load['fp32']['seconds']:.2f} |",
        f"| RSS added by loading | {load['fp32']['rss'] / 2**20:.1f} MiB | {load['compressed']['rss'] / 2**20:.1f} MiB "
        f"| {load['compressed']['rss'] / max(load['fp32']['rss'], 1):.2f} |",
        f"| runnable form | {load['fp32']['form']} | {load['compressed']['form']} | |",
        "",
        f"Registry bytes per version of the compressed model: {stored:,} B stored (the serve files) vs "
        f"{every_file:,} B in the directory (every file: what a version stored before) = {stored / every_file:.3f}.",
    ]
    checks = [
        (f"{name}: serve opens <= 1/5 of the fp32 model's bytes: {total['compressed']:,} vs {total['fp32']:,} "
         f"({total['fp32'] / total['compressed']:.1f}x fewer)", total["compressed"] * 5 <= total["fp32"]),
        (f"{name}: registry bytes per compressed version <= 10% of every file's: {stored / every_file:.1%}",
         stored <= 0.1 * every_file),
        (f"{name}: served scores == the compressed weights' (<= 1e-6): max |diff| {diff:.1e} on "
         f"{int(valid.sum()):,} validation rows", diff <= 1e-6),
        (f"{name}: served validation AP == the AP compression reported: {served_ap:.6f} vs {reported_ap:.6f}",
         abs(served_ap - reported_ap) <= 1e-9),
    ]  # fmt: skip
    return lines, checks


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = ["## What ships and serves (issue 15)", ""]
    checks: list[tuple[str, bool]] = []
    for name in ("default", "small"):
        section, ok = _measure(workdir, name)
        lines += [*section, ""]
        checks += ok
    lines += ["Acceptance (issue 15):", ""]
    lines += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
    lines += [
        "",
        f"Reproduce: `.venv/bin/python benchmarks/run.py --only bench_shipping` ({time.perf_counter() - t0:.0f} s "
        "here; fp32 vs compressed serving throughput, latency and RSS are in the streaming section).",
    ]
    return "\n".join(lines) + "\n"
