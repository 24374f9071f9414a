"""Compression (issue 3): the default dataset, `fraudlite train` defaults, `fraudlite compress` with the
built-in recipe and --max-ap-drop 0.005; sizes, AP on the validation AND test windows, single-thread
speed at batch 1 and 256, RSS after load; ORT quantize_dynamic and torch dynamic quantization side by
side in the same run, and the same model compressed once more at ORT dynamic int8's validation AP (a size
comparison at equal accuracy).

Environment knobs (for quick local runs only; `make bench` uses the defaults):
FRAUDLITE_BENCH_DAYS (simulated days), FRAUDLITE_BENCH_MODEL (reuse a trained model directory),
FRAUDLITE_BENCH_DATA (reuse a generated file), FRAUDLITE_BENCH_RECIPE (another recipe file).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from fraudlite.cli.demo import default_windows
from fraudlite.compression import report as reporting
from fraudlite.compression.compress import compress_model_dir
from fraudlite.compression.quantize import (
    quantize_dynamic_onnx,
    quantize_static_onnx,
    torch_dynamic_quantize,
    torch_module_bytes,
)
from fraudlite.compression.recipe import default_recipe
from fraudlite.compression.search import SearchError
from fraudlite.compression.served import open_model, rss_after_open
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import day_of, format_day, load_transactions, write_table
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.models import load_mlp, predict_proba
from fraudlite.models.evaluation import evaluate_window, features_for
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model
from fraudlite.runtime import OnnxScorer

HERE = Path(__file__).resolve().parent
MAX_AP_DROP = 0.005
RELAXED_AP_DROP = 0.02
SCORE_BATCH = 256


def default_data_and_model(workdir: Path):
    """``(df, day, windows, source ModelDir, features of every row)``: the default generated data and the MLP
    `fraudlite train` makes of it (or FRAUDLITE_BENCH_DATA / FRAUDLITE_BENCH_DAYS / FRAUDLITE_BENCH_MODEL)."""
    data = Path(os.environ.get("FRAUDLITE_BENCH_DATA", workdir / "default.parquet"))
    if not data.exists():
        config = SimulatorConfig()
        if os.environ.get("FRAUDLITE_BENCH_DAYS"):
            config = SimulatorConfig(n_days=int(os.environ["FRAUDLITE_BENCH_DAYS"]))
        write_table(simulate(config), data)
    df = load_transactions(data, require_label=True)
    day = day_of(df["ts"].to_numpy())
    w = default_windows(int(day.min()), int(day.max()))
    if os.environ.get("FRAUDLITE_BENCH_MODEL"):
        source = ModelDir.load(os.environ["FRAUDLITE_BENCH_MODEL"])
        return df, day, w, source, features_for(source.spec, df)
    spec = FeatureSpec()
    cfg = TrainConfig(w.train_start, w.train_end)
    prepared = prepare_training_data(df, cfg, spec)
    return df, day, w, train_model(prepared, cfg, spec, workdir / "trained"), prepared.X


def _fair_metrics(md: ModelDir, df, w, scores: np.ndarray) -> tuple[dict, dict]:
    """(validation, test) metrics of full-file scores; test excludes known-compromised cards."""
    from fraudlite.data.transactions import parse_day

    dw = md.manifest["data_window"]
    valid = evaluate_window(
        md,
        df,
        parse_day(dw["valid_start"], "v"),
        parse_day(dw["valid_end"], "v"),
        scores=scores,
        known_fraud_days=0,
    )
    test = evaluate_window(md, df, w.test_start, w.test_end, scores=scores)
    return valid, test


def _paired_ap_diffs(md: ModelDir, df, w, a: np.ndarray, b: np.ndarray, n: int = 200) -> list[np.ndarray]:
    """AP(a) - AP(b) on ``n`` paired bootstrap resamples (rows drawn with replacement, both models scored on
    the same draw) of the validation and test windows: how much of a difference in AP is sampling noise
    of a window's few hundred frauds. One array per window, the same draws for every pair of models."""
    from fraudlite.data.transactions import parse_day, window_mask
    from fraudlite.models.evaluation import known_fraud_mask
    from fraudlite.models.metrics import average_precision

    dw = md.manifest["data_window"]
    y = df["label"].to_numpy()
    valid = window_mask(df, parse_day(dw["valid_start"], "v"), parse_day(dw["valid_end"], "v"), "validation")
    test = window_mask(df, w.test_start, w.test_end, "test") & ~known_fraud_mask(df, md.spec.delay_days, 28)
    rng = np.random.default_rng(0)
    out = []
    for mask in (valid, test):
        yy, sa, sb = y[mask], a[mask], b[mask]
        draws = (rng.integers(0, len(yy), len(yy)) for _ in range(n))
        out.append(
            np.array([average_precision(yy[i], sa[i]) - average_precision(yy[i], sb[i]) for i in draws])
        )
    return out


def ap_lost(source_ap: float, other_ap: float) -> float:
    """The validation AP another model loses, floored to 1e-4: the ``--max-ap-drop`` that asks the search for
    at least that model's AP."""
    return float(np.floor((source_ap - other_ap) * 1e4) / 1e4)


def beats_ort(ort: dict, ours: dict) -> bool:
    """The issue's point: ``ours`` is >= 5x smaller than ``ort`` with AP >= its AP on both windows (dicts of
    ``bytes``, ``valid`` and ``test`` AP; ``bytes`` None = no model)."""
    return (
        ours.get("bytes") is not None
        and ort["bytes"] / ours["bytes"] >= 5
        and all(ours[window] >= ort[window] for window in ("valid", "test"))
    )


def _at_ort_ap(workdir: Path, source: ModelDir, df, w, X, recipe, source_ap: float, ort: dict) -> dict:
    """Compare at equal accuracy: ask the search for ORT dynamic int8's validation AP (``--max-ap-drop`` = the
    AP ORT loses there, floored to 1e-4) and test the result on the test window, which no choice saw."""
    budget = ap_lost(source_ap, ort["valid"])
    result = {"budget": budget, "bytes": None}
    head = (
        f"Same size at equal accuracy: the same model compressed with `--max-ap-drop {budget}`, the validation AP "
        f"ORT dynamic int8 loses (floored to 1e-4), so the search must return a model at least as good as ORT's "
        "on validation; the test window checks that out of sample."
    )
    if budget <= 0:
        return {**result, "lines": [head, "", "ORT dynamic int8 loses no validation AP: nothing to compare."]}
    t0 = time.perf_counter()
    try:
        md = compress_model_dir(
            source, df, workdir / "compressed-at-ort", recipe, budget, measure_memory=False
        )
    except SearchError as exc:
        return {**result, "lines": [head, "", f"The search stopped (exit 2): {exc}"]}
    seconds = time.perf_counter() - t0
    compact = md.file("compact").read_bytes()
    scores = open_model(md.path).score(X)
    v, t = _fair_metrics(md, df, w, scores)
    result.update(bytes=len(compact), valid=v["average_precision"], test=t["average_precision"])
    diffs = _paired_ap_diffs(md, df, w, scores, ort["scores"])
    final = json.loads(md.file("compression_report").read_text())["summary"]["final"]
    result["lines"] = [
        head,
        "",
        "| model | compact B | x smaller than ORT dynamic int8 | valid AP | test AP | test AUC | AP - ORT's, test: mean "
        "[90% of 200 paired resamples] | student | kept | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| ORT quantize_dynamic int8 | {ort['bytes']:,} | 1.0 | {ort['valid']:.4f} | {ort['test']:.4f} | | | | | |",
        f"| ours, `--max-ap-drop {budget}` | {len(compact):,} | {ort['bytes'] / len(compact):.1f} "
        f"| {v['average_precision']:.4f} | {t['average_precision']:.4f} | {t['roc_auc']:.4f} "
        f"| {np.mean(diffs[1]):+.4f} [{np.quantile(diffs[1], 0.05):+.4f}, {np.quantile(diffs[1], 0.95):+.4f}] "
        f"| {final['hidden']} | {final['n_kept_weights']:,} ({final['sparsity']:.0%} sparse) | {seconds:.0f} |",
    ]
    return result


def _vs_ort_check(ort: dict, default: dict, at_ort: dict) -> tuple[str, bool]:
    """The acceptance line: >= 5x smaller than ORT dynamic int8 at equal or better AP on both windows, by the
    default run or, failing that, by the run asked for ORT's validation AP."""

    def describe(run: dict) -> str:
        if run.get("bytes") is None:
            return f"`--max-ap-drop {run['budget']}`: no model"
        return (
            f"`--max-ap-drop {run['budget']}`: {ort['bytes'] / run['bytes']:.1f}x smaller, validation "
            f"{run['valid']:.4f} vs {ort['valid']:.4f}, test {run['test']:.4f} vs {ort['test']:.4f}"
        )

    ok = [beats_ort(ort, run) for run in (default, at_ort)]
    verdict = "by the default run" if ok[0] else ("at ORT's validation AP" if ok[1] else "by neither run")
    return (
        f"compact >= 5x smaller than ORT dynamic int8 at equal or better AP on both windows, {verdict} "
        f"({describe(default)}; {describe(at_ort)})",
        any(ok),
    )


def _session_options(workdir: Path, model: bytes, X: np.ndarray) -> list[str]:
    """Evidence for the serving session options (fraudlite.runtime): arena off, one intra-op thread."""
    path = workdir / "options.onnx"
    path.write_bytes(model)
    rss = {
        (arena, batch): reporting.rss_after_load(path, X.shape[1], repeats=3, batch=batch, arena=arena)
        for arena in (False, True)
        for batch in (256, 65536)
    }
    speed = reporting.measure_speed(
        {"1 thread": model, "2 threads": model}, np.ascontiguousarray(X[-4096:]), batches=(256, 4096),
        rounds=11, threads={"1 thread": 1, "2 threads": 2},
    )  # fmt: skip
    return [
        "ONNX Runtime session options (`fraudlite.runtime.session_options`) on the fp32 model, measured here:",
        "",
        "| CPU memory arena | RSS after load + batch 256 | RSS after load + batch 65,536 |",
        "|---|---|---|",
        *[
            f"| {'on' if arena else 'off (ours)'} | {rss[(arena, 256)] / 1024:,.0f} KiB | "
            f"{rss[(arena, 65536)] / 1024:,.0f} KiB |"
            for arena in (False, True)
        ],
        "",
        f"Intra-op threads: 2 threads give {speed['2 threads'][256] / speed['1 thread'][256]:.2f}x the rows/s of 1 "
        f"thread at batch 256 and {speed['2 threads'][4096] / speed['1 thread'][4096]:.2f}x at batch 4,096 on this "
        "2-core machine; the scorer keeps 1 thread per process and scales by partitions/processes.",
    ]


def run(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    lines = ["## Compression (issue 3)", ""]

    # 1. data and the trained model (`fraudlite generate` / `fraudlite train` defaults)
    t0 = time.perf_counter()
    df, day, w, source, X = default_data_and_model(workdir)
    train_s = time.perf_counter() - t0

    # 2. compress with the built-in recipe
    t0 = time.perf_counter()
    out = workdir / "compressed"
    recipe = os.environ.get("FRAUDLITE_BENCH_RECIPE") or default_recipe()
    budget = MAX_AP_DROP
    try:
        compressed = compress_model_dir(source, df, out, recipe, budget, measure_memory=True)
    except SearchError as exc:
        lines += [
            f"**`fraudlite compress --max-ap-drop {MAX_AP_DROP}` stopped (exit 2):** {exc}",
            "",
            "| stage | setting | valid AP | drop |",
            "|---|---|---|---|",
            *[
                f"| {t.stage} | `{json.dumps(t.setting)}` | {t.metrics['average_precision']:.4f} | {t.ap_drop:+.4f} |"
                for t in exc.trials
            ],
            "",
            f"To still compare sizes and speed, the rest of this section uses `--max-ap-drop {RELAXED_AP_DROP}` "
            "(outside the acceptance budget; the AP checks below are judged against 0.005 regardless).",
            "",
        ]
        budget = RELAXED_AP_DROP
        try:
            compressed = compress_model_dir(source, df, out, recipe, budget, measure_memory=True)
        except SearchError as exc2:
            return "\n".join([*lines, f"`--max-ap-drop {budget}` stopped too: {exc2}"])
    compress_s = time.perf_counter() - t0
    report = json.loads(compressed.file("compression_report").read_text())

    # 3. the contenders, built from the same fp32 source; ours is what ships and serves: the compact
    # artifact, decoded and run in the form compression measured fastest (fraudlite.compression.served)
    source_onnx = source.onnx_path.read_bytes()
    served = open_model(compressed.path)
    ours_name = f"ours: compact artifact, served as {served.runtime['form']}"
    compact = compressed.file("compact").read_bytes()
    teacher = load_mlp(source.file("weights"))
    Xt = X[(day >= w.train_start) & (day <= w.train_end)]
    ort_dynamic = quantize_dynamic_onnx(source_onnx)
    ort_static = quantize_static_onnx(source_onnx, Xt, method="minmax", per_channel=True)
    torch_q = torch_dynamic_quantize(teacher)
    valid_rows = X[-4096:]
    compact_diff = float(
        np.max(np.abs(served.score_raw(valid_rows) - served.state.predict_proba(valid_rows)))
    )

    onnx_models = {
        "fp32 ONNX (trained)": source_onnx,
        "ORT quantize_dynamic int8": ort_dynamic,
        "ORT static QDQ int8 (MinMax, per-channel)": ort_static,
    }
    # batches of 256 as in serving: dynamic quantization picks activation ranges per batch, so its scores
    # (and AP) depend on the batch; fp32 models and ours score identically at any batch size
    scores = {name: OnnxScorer(m).score(X, batch_size=SCORE_BATCH) for name, m in onnx_models.items()}
    scores["torch dynamic int8"] = predict_proba(torch_q, X, batch_size=SCORE_BATCH)
    scores[ours_name] = served.score(X)
    sizes = {name: len(m) for name, m in onnx_models.items()}
    sizes["torch dynamic int8"] = torch_module_bytes(torch_q)
    sizes[ours_name] = len(compact)
    speed_rows = np.ascontiguousarray(X[-2048:])
    speed = reporting.measure_speed(
        onnx_models, speed_rows, rounds=21, torch_models={"torch dynamic int8": torch_q},
        scorers={ours_name: served.score},
    )  # fmt: skip
    # RSS that opening the model directory and scoring a batch adds to a fresh process (what serving costs)
    rss = {
        "fp32 ONNX (trained)": rss_after_open(source.path, repeats=5),
        ours_name: rss_after_open(compressed.path, repeats=5),
    }

    metrics = {name: _fair_metrics(compressed, df, w, s) for name, s in scores.items()}
    base_v, base_t = metrics["fp32 ONNX (trained)"]
    our_v, our_t = metrics[ours_name]
    base_speed = speed["fp32 ONNX (trained)"]
    ours_scores = scores[ours_name]

    rows = list(onnx_models) + ["torch dynamic int8", ours_name]
    names = {n: n for n in rows}
    lines += [
        f"Default generated dataset ({len(df):,} transactions, `SimulatorConfig()`), {w.describe()}. "
        f"Trained with `fraudlite train` defaults ({train_s:.0f} s incl. features); compressed with the built-in "
        f"recipe and `--max-ap-drop {budget}` ({compress_s:.0f} s). Validation = the model's validation window "
        f"({format_day(w.train_end - 6)}..{format_day(w.train_end)}); test = {format_day(w.test_start)}.."
        f"{format_day(w.test_end)} with known-compromised cards excluded; every model scores in batches of "
        f"{SCORE_BATCH} (dynamic quantization calibrates per batch). Speed: single-thread ONNX Runtime "
        "(serving session options) or torch with 1 thread, models alternating, median of 21 rounds.",
        "",
        "| model | bytes | x smaller | valid AP | test AP | test AUC | test CP@100 | rows/s b1 | rows/s b256 | "
        "x b1 | x b256 | RSS after load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        v, t = metrics[name]
        sp = speed[name]
        lines.append(
            f"| {names[name]} | {sizes[name]:,} | {len(source_onnx) / sizes[name]:.1f} | {v['average_precision']:.4f} "
            f"| {t['average_precision']:.4f} | {t['roc_auc']:.4f} | {t['card_precision_at_100']:.3f} "
            f"| {sp[1]:,.0f} | {sp[256]:,.0f} | {sp[1] / base_speed[1]:.2f} | {sp[256] / base_speed[256]:.2f} "
            f"| {(str(round(rss[name] / 1024)) + ' KiB') if name in rss else '-'} |"
        )
    s = report["summary"]
    final = s["final"]
    drop_v = base_v["average_precision"] - our_v["average_precision"]
    drop_t = base_t["average_precision"] - our_t["average_precision"]
    ort_ap_v = metrics["ORT quantize_dynamic int8"][0]["average_precision"]
    ort_ap_t = metrics["ORT quantize_dynamic int8"][1]["average_precision"]
    sd_v, sd_t = (
        np.std(d) for d in _paired_ap_diffs(compressed, df, w, scores["fp32 ONNX (trained)"], ours_scores)
    )
    vs_ort = _paired_ap_diffs(compressed, df, w, ours_scores, scores["ORT quantize_dynamic int8"])
    ort = {
        "bytes": len(ort_dynamic),
        "valid": ort_ap_v,
        "test": ort_ap_t,
        "scores": scores["ORT quantize_dynamic int8"],
    }
    ours_default = {"budget": budget, "bytes": len(compact), "valid": our_v["average_precision"],
                    "test": our_t["average_precision"]}  # fmt: skip
    at_ort = _at_ort_ap(workdir, source, df, w, X, recipe, base_v["average_precision"], ort)
    checks = [
        (
            f"compact >= 30x smaller than the fp32 ONNX: {len(source_onnx) / len(compact):.1f}x",
            len(source_onnx) / len(compact) >= 30,
        ),
        (
            f"validation AP drop <= {MAX_AP_DROP}: {drop_v:+.4f} (bootstrap SD of the drop {sd_v:.4f})",
            drop_v <= MAX_AP_DROP,
        ),
        (
            f"test-window AP drop <= {MAX_AP_DROP}: {drop_t:+.4f} (bootstrap SD of the drop {sd_t:.4f})",
            drop_t <= MAX_AP_DROP,
        ),
        (
            f"served model >= 2.5x rows/s at batch 256: {speed[ours_name][256] / base_speed[256]:.2f}x",
            speed[ours_name][256] / base_speed[256] >= 2.5,
        ),
        (
            f"served model not slower at batch 1: {speed[ours_name][1] / base_speed[1]:.2f}x",
            speed[ours_name][1] >= base_speed[1],
        ),
        _vs_ort_check(ort, ours_default, at_ort),
        (
            f"the served scores are the compressed weights': max |score diff| served vs decoded {compact_diff:.1e}",
            compact_diff <= 1e-6,
        ),
    ]
    lines += ["", "Acceptance (issue 3):", ""]
    lines += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
    lines.append(
        f"- (for information) serving opens {compressed.serve_bytes():,} B (manifest, spec, compact artifact) vs "
        f"{source.serve_bytes():,} B for the fp32 model; the registry stores the same files"
    )
    lines.append(
        "- (for information) AP(ours) - AP(ORT dynamic int8) over 200 paired bootstrap resamples: "
        + "; ".join(
            f"{window} {np.mean(d):+.4f}, 90% of resamples in [{np.quantile(d, 0.05):+.4f}, "
            f"{np.quantile(d, 0.95):+.4f}], ours >= ORT in {np.mean(d >= 0):.0%}"
            for window, d in zip(("validation", "test"), vs_ort, strict=True)
        )
    )
    lines += ["", *at_ort.get("lines", [])]
    lines += [
        "",
        f"Final model: hidden {final['hidden']}, {final['n_kept_weights']:,} of {final['n_params']:,} parameters kept "
        f"(sparsity {final['sparsity']:.0%}), k per layer {final['k']}; served as `{report['runtime']['form']}` "
        f"({report['runtime']['why']}). Compact artifact bytes by part: "
        + ", ".join(f"{k} {v}" for k, v in s["compact_breakdown"].items())
        + ".",
        "",
        "Per stage (validation window, from `report.md` of the compressed model directory):",
        "",
        reporting.stage_table(report["stages"]),
        "",
        "![compression pareto](compression_pareto.png)",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/run.py --only bench_compression` ({time.perf_counter() - t_all:.0f} s "
        "here), or `fraudlite generate --out d.parquet && fraudlite train --data d.parquet --train-start "
        f"{format_day(w.train_start)} --train-end {format_day(w.train_end)} --out m && fraudlite compress "
        "--model m --data d.parquet --out c`.",
    ]
    lines += ["", *_session_options(workdir, source_onnx, X)]
    shutil.copyfile(compressed.file("pareto"), HERE / "compression_pareto.png")
    return "\n".join(lines)
