"""Measurements and the compression report: speed, memory, ``report.json``, ``report.md``, ``pareto.png``.

Speed is single-thread ONNX Runtime rows/s at batch 1 and 256 (the serving session options of
:mod:`fraudlite.runtime`), models timed in alternation, median of several rounds: on shared 2-core
machines only ratios measured in the same run mean anything. Memory is the RSS a loaded model adds to
a fresh process (session created and one batch scored), measured in a child process per model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "measure_speed",
    "rss_after_load",
    "stage_table",
    "write_report",
    "pareto_plot",
]


REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PARETO_PNG = "pareto.png"


def _session(model: bytes, threads: int = 1):
    import onnxruntime as ort

    from fraudlite.runtime import session_options

    return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


def measure_speed(
    models: Mapping[str, bytes],
    X: np.ndarray,
    batches: Sequence[int] = (1, 256),
    rounds: int = 15,
    seconds_per_round: float = 0.03,
    torch_models: Mapping[str, object] | None = None,
    threads: Mapping[str, int] | None = None,
    scorers: Mapping[str, Callable[[np.ndarray], object]] | None = None,
) -> dict[str, dict[int, float]]:
    """Single-thread rows/s of each model at each batch size: alternating rounds, median.

    Args:
        models: name -> ONNX bytes (input ``features``).
        X: rows to score, float32 raw features (repeated when fewer than a batch).
        batches: batch sizes.
        rounds: timed rounds per model and batch size (models alternate within a round).
        seconds_per_round: target duration of one timed round (the call count is calibrated once).
        torch_models: optional name -> torch module (logits), timed the same way with one torch thread.
        threads: optional name -> ONNX Runtime intra-op threads (default 1: the serving setting).
        scorers: optional name -> callable scoring a batch (a served model's ``score``), timed the same way.

    Returns:
        name -> {batch: rows per second (median over rounds)}.
    """
    runners = {}
    for name, model in models.items():
        sess = _session(model, (threads or {}).get(name, 1))
        in_name = sess.get_inputs()[0].name
        runners[name] = lambda x, s=sess, n=in_name: s.run(None, {n: x})
    runners.update(scorers or {})
    previous_threads = None
    if torch_models:
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        for name, module in torch_models.items():

            def run(x, m=module):
                with torch.inference_mode():
                    return m(torch.from_numpy(x))

            runners[name] = run
    try:
        out: dict[str, dict[int, float]] = {name: {} for name in runners}
        for batch in batches:
            x = np.ascontiguousarray(X[:batch], dtype=np.float32)
            if len(x) < batch:  # repeat rows so a batch really has ``batch`` rows
                x = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])))
            calls = {}
            for name, run in runners.items():  # warm up and calibrate the call count
                run(x)
                t0 = time.perf_counter()
                n = 0
                while time.perf_counter() - t0 < seconds_per_round / 4:
                    run(x)
                    n += 1
                per_call = (time.perf_counter() - t0) / n
                calls[name] = max(1, int(seconds_per_round / per_call))
            times: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(rounds):
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    for _ in range(calls[name]):
                        run(x)
                    times[name].append((time.perf_counter() - t0) / calls[name])
            for name in runners:
                out[name][batch] = batch / float(np.median(times[name]))
        return out
    finally:
        if previous_threads is not None:
            import torch

            torch.set_num_threads(previous_threads)


_RSS_CODE = """
import sys, numpy as np, onnxruntime as ort
from fraudlite.runtime import session_options
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
path, n_features, batch, arena = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
x = np.zeros((batch, n_features), dtype=np.float32)
opts = session_options(1)
opts.enable_cpu_mem_arena = arena
before = rss()
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
s.run(None, {s.get_inputs()[0].name: x})
print(rss() - before)
"""


def rss_after_load(
    model_path: str | Path, n_features: int, repeats: int = 3, batch: int = 256, arena: bool = False
) -> int:
    """Bytes of resident memory that creating a session for the model and scoring one batch adds to a
    fresh Python process with onnxruntime imported (median of ``repeats`` child processes).

    Args:
        model_path: the ONNX file.
        n_features: input width.
        repeats: child processes (median).
        batch: rows of the one scored batch.
        arena: enable ORT's CPU memory arena (the serving options keep it off).
    """
    values = []
    for _ in range(repeats):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _RSS_CODE,
                str(model_path),
                str(n_features),
                str(batch),
                "1" if arena else "0",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        values.append(int(out.stdout.strip().splitlines()[-1]))
    return int(np.median(values))


# --------------------------------------------------------------------------- tables and files

_COLUMNS = [
    ("stage", "{}"),
    ("hidden", "{}"),
    ("params", "{:,}"),
    ("kept", "{:,}"),
    ("compact B", "{:,}"),
    ("runnable B", "{:,}"),
    ("AP", "{:.4f}"),
    ("AP drop", "{:+.4f}"),
    ("AUC", "{:.4f}"),
    ("CP@100", "{:.3f}"),
    ("top-1% agree", "{:.3f}"),
    ("rows/s b1", "{:,.0f}"),
    ("rows/s b256", "{:,.0f}"),
]


def stage_table(rows: Sequence[Mapping]) -> str:
    """A markdown table of per-stage rows (keys: stage, hidden, n_params, n_kept_weights, compact_bytes,
    runnable_bytes, average_precision, ap_drop, roc_auc, card_precision_at_100, top_agreement (share of
    the teacher's top-1% training rows also in this model's top 1%), rows_per_s_b1, rows_per_s_b256; a
    missing value prints as ``-``)."""
    keys = [
        "stage",
        "hidden",
        "n_params",
        "n_kept_weights",
        "compact_bytes",
        "runnable_bytes",
        "average_precision",
        "ap_drop",
        "roc_auc",
        "card_precision_at_100",
        "top_agreement",
        "rows_per_s_b1",
        "rows_per_s_b256",
    ]
    header = "| " + " | ".join(title for title, _ in _COLUMNS) + " |"
    lines = [header, "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for row in rows:
        cells = []
        for key, (_, fmt) in zip(keys, _COLUMNS, strict=True):
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif key == "hidden":
                cells.append("x".join(str(h) for h in value) or "-")
            else:
                cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_plot(rows: Sequence[Mapping], path: Path, title: str = "fraudlite compression") -> None:
    """Validation AP against compact bytes (log scale) for every evaluated model; the accepted path
    as a line, rejected search trials as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    accepted = [
        r for r in rows if r.get("accepted", True) and r.get("compact_bytes") and "index" not in r
    ]  # stage rows (trial records carry an index; accepted trials are already stage rows)
    accepted = [r for r in accepted if not str(r["stage"]).startswith("runnable")]
    rejected = [r for r in rows if not r.get("accepted", True) and r.get("compact_bytes")]
    if accepted:
        ax.plot(
            [r["compact_bytes"] for r in accepted],
            [r["average_precision"] for r in accepted],
            "o-",
            color="tab:blue",
            label="pipeline stages",
        )
        for r in accepted:
            ax.annotate(r["stage"], (r["compact_bytes"], r["average_precision"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    if rejected:
        ax.plot(
            [r["compact_bytes"] for r in rejected],
            [r["average_precision"] for r in rejected],
            "x",
            color="tab:red",
            label="search trials over the AP budget",
        )
    floor = next((r.get("ap_floor") for r in rows if r.get("ap_floor") is not None), None)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label="AP floor (original - max drop)")
    ax.set_xscale("log")
    ax.set_xlabel("compact artifact bytes (log)")
    ax.set_ylabel("validation average precision")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: Path, report: dict) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``pareto.png`` into ``out_dir``; returns {file: role}."""
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / REPORT_MD).write_text(report_markdown(report))
    pareto_plot(report["stages"] + report.get("trials", []), out_dir / PARETO_PNG)
    return {REPORT_JSON: "compression_report", REPORT_MD: "compression_report_md", PARETO_PNG: "pareto"}


def report_markdown(report: dict) -> str:
    """The human-readable report: summary, the per-stage table, runtime choice, memory, search log."""
    s = report["summary"]
    lines = [
        "# Compression report",
        "",
        f"Source model `{report['source']['version']}` -> `{report.get('version', '(this directory)')}`; "
        f"max AP drop {report['max_ap_drop']}.",
        "",
        f"- compact artifact: **{s['compact_bytes']:,} B**, {s['compact_ratio']:.1f}x smaller than the source "
        f"fp32 ONNX ({s['source_onnx_bytes']:,} B)",
        f"- what ships and serves: the compact artifact, decoded at load and run as **{s['served_form']}**: "
        f"{s['speedup_b256']:.2f}x rows/s at batch 256, {s['speedup_b1']:.2f}x at batch 1 (single thread)",
        f"- validation AP {s['average_precision']:.4f} (source {s['source_average_precision']:.4f}, "
        f"drop {s['ap_drop']:+.4f}), of the served form's scores; max |score difference| served form vs "
        f"compressed weights {s['max_abs_score_diff']:.2e}",
        f"- runtime: {report['runtime']['why']}",
    ]
    if report.get("teacher"):
        t = report["teacher"]
        lines.append(
            f"- teacher: an ensemble of {t['members']} models (the source + {t['members'] - 1} more seeds), "
            f"validation AP {t['average_precision']:.4f}, trained in {t['seconds']:.0f} s; the source's "
            f"top-1% agreement with it {t['source_agreement']:.3f}"
        )
    for skip in report.get("skipped_stages") or []:
        lines.append(
            f"- stage {skip['index'] + 1} ({skip['stage']}) skipped: optional, and no candidate stayed within the "
            f"budget (smallest AP drop {skip['smallest_ap_drop']:+.4f})"
        )
    if report.get("memory"):
        m = report["memory"]
        lines.append(
            f"- RSS added by opening the directory + one batch: source {m['source_rss_bytes'] / 1024:,.0f} KiB, "
            f"compressed {m['served_rss_bytes'] / 1024:,.0f} KiB"
        )
    lines += ["", "## Stages (validation window)", "", stage_table(report["stages"]), ""]
    if report.get("trials"):
        lines += [
            "## Search trials",
            "",
            "| stage | setting | AP | AP drop | accepted |",
            "|---|---|---|---|---|",
        ]
        for t in report["trials"]:
            lines.append(
                f"| {t['stage']} | `{json.dumps(t.get('setting', {}))}` | {t['average_precision']:.4f} | "
                f"{t['ap_drop']:+.4f} | {'yes' if t.get('accepted') else 'no'} |"
            )
        lines.append("")
    if report.get("runtime", {}).get("rows_per_s"):
        speed = report["runtime"]["rows_per_s"]
        batches = sorted({b for rates in speed.values() for b in rates}, key=int)
        lines += [
            "## Runnable forms (decoded compact artifact, single thread, rows/s)",
            "",
            "| form | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches),
        ]
        for name, rates in speed.items():
            chosen = " (serves)" if name == report["runtime"].get("form") else ""
            lines.append(f"| {name}{chosen} | " + " | ".join(f"{rates[b]:,.0f}" for b in batches) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
