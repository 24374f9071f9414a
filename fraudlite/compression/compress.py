"""`fraudlite compress`: a trained model directory in, a compressed model directory out.

Steps: validate everything the user gave (recipe, model directory, ``--max-ap-drop``) before any work;
features of the whole file (the model's FeatureSpec); the training and validation windows from the
source manifest's ``data_window``; the accuracy-bounded search over the recipe's stages
(:mod:`fraudlite.compression.search`); the entropy-coded compact artifact (:mod:`compact`), which is
what ships; its runnable forms timed side by side (:func:`served.choose_runtime`) and the served form's
scores and AP checked against the compressed weights; per-stage measurements; one atomic model directory
(:func:`served.write_compressed_dir`): serve files ``compact`` and ``spec``, doc files ``report``,
``compression_report`` (report.json), ``compression_report_md`` and ``pareto``, and with
``keep_training_files`` the train files ``state`` and ``weights``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudlite.compression import report as reporting
from fraudlite.compression.compact import compact_breakdown, decode_compact, encode_compact
from fraudlite.compression.ensemble import train_teacher_ensemble
from fraudlite.compression.export import fp32_runnable
from fraudlite.compression.recipe import Recipe, default_recipe, load_recipe
from fraudlite.compression.search import run_search
from fraudlite.compression.served import (
    COMPACT_FILE,
    choose_runtime,
    manifest_runtime,
    rss_after_open,
    write_compressed_dir,
)
from fraudlite.compression.state import CompressedMLP, StageData
from fraudlite.errors import ConfigError, ModelDirError
from fraudlite.modeldir import ModelDir
from fraudlite.runtime.forms import build_forms

__all__ = [
    "COMPACT_FILE",
    "STATE_FILE",
    "check_max_ap_drop",
    "compress_model_dir",
    "headline_metrics",
    "load_source",
]

logger = logging.getLogger(__name__)

STATE_FILE = "compressed.safetensors"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
_PROBE_ROWS = 1024


def check_max_ap_drop(value: Any) -> float:
    """``--max-ap-drop`` as a float in [0, 1).

    Raises:
        ConfigError: NaN, infinite, negative or >= 1 (AP lies in [0, 1]: such a bound is impossible or
            meaningless).
    """
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--max-ap-drop: expected a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or x >= 1:
        raise ConfigError(
            f"--max-ap-drop must be a finite AP difference in [0, 1) (for example 0.005), got {value!r}"
        )
    return x


def _resolve_recipe(recipe: Recipe | str | Path | None) -> Recipe:
    if recipe is None:
        return default_recipe()
    if isinstance(recipe, Recipe):
        return recipe
    return load_recipe(recipe)


def load_source(model_dir: ModelDir | str | Path) -> ModelDir:
    md = model_dir if isinstance(model_dir, ModelDir) else ModelDir.load(model_dir)
    if not md.has("weights"):
        raise ConfigError(
            f"{md.path}: compression needs an MLP model directory with weights (model_type "
            f"{md.manifest.get('model_type')!r} has no 'weights' file)"
        )
    window = md.manifest.get("data_window") or {}
    missing = [k for k in ("train_start", "train_end", "valid_start", "valid_end") if k not in window]
    if missing:
        raise ModelDirError(f"{md.path}: manifest data_window lacks {', '.join(missing)}")
    return md


def _windows(md: ModelDir, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from fraudlite.data.transactions import parse_day, window_mask

    w = md.manifest["data_window"]
    train = window_mask(df, parse_day(w["train_start"], "train_start"), parse_day(w["train_end"], "train_end"),
                        "training window (from the model's manifest)")  # fmt: skip
    valid = window_mask(df, parse_day(w["valid_start"], "valid_start"), parse_day(w["valid_end"], "valid_end"),
                        "validation window (from the model's manifest)")  # fmt: skip
    return train, valid


def _sample(idx: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    if max_rows <= 0 or len(idx) <= max_rows:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, max_rows, replace=False))


def compress_model_dir(
    model_dir: ModelDir | str | Path,
    df: pd.DataFrame,
    out: str | Path,
    recipe: Recipe | str | Path | None = None,
    max_ap_drop: float = 0.005,
    progress: Callable[[str], None] | None = None,
    *,
    measure_memory: bool = True,
    keep_training_files: bool = False,
) -> ModelDir:
    """Compress a trained MLP model directory within an AP budget and write the result atomically.

    Args:
        model_dir: the trained model (a :class:`ModelDir` or its path); needs the ``weights`` role.
        df: the standard transactions frame (``fraudlite.data.transactions.load_transactions``) covering the
            model's training and validation windows (plus feature history).
        out: directory to write (replaced atomically; nothing is left behind on failure).
        recipe: a :class:`Recipe`, a TOML path, or None for the built-in recipe.
        max_ap_drop: largest validation AP loss allowed, absolute.
        progress: receives progress lines (they are also logged at INFO).
        measure_memory: measure RSS after load of source and compressed directories in child processes.
        keep_training_files: also write the training files (kind ``train``, never opened to serve): the
            compression state with its stage history (``compressed.safetensors``) and the fp32 weights of
            the compressed network (``weights.safetensors``, so it can be compressed or fine-tuned again).
            Off by default: the compact artifact decodes to the same weights, masks and codebooks.

    Returns:
        The written, verified :class:`ModelDir`; ``manifest["compression"]`` holds the stages, the AP drop
        and the headline sizes; ``report.json`` everything measured.

    Raises:
        ConfigError: bad recipe, bad ``max_ap_drop``, a model directory without weights.
        ModelDirError: not a model directory (or a corrupt one).
        DataError: the data does not cover the model's windows.
        SearchError: no setting of some stage fits the budget (nothing is written).
    """
    from fraudlite.models import load_mlp
    from fraudlite.models.evaluation import evaluate_scores, features_for
    from fraudlite.models.metrics import choose_thresholds
    from fraudlite.runtime import OnnxScorer

    t_start = time.perf_counter()
    max_ap_drop = check_max_ap_drop(max_ap_drop)
    recipe = _resolve_recipe(recipe)
    md = load_source(model_dir)
    say = _sayer(progress)

    # data: features of the whole file, rows of the model's windows
    spec = md.spec
    t0 = time.perf_counter()
    X = features_for(spec, df)
    say(f"compress: features rows={len(X):,} features={X.shape[1]} seconds={time.perf_counter() - t0:.1f}")
    train_mask, valid_mask = _windows(md, df)
    y = df["label"].to_numpy().astype(np.float32)
    train_idx = _sample(np.flatnonzero(train_mask), int(recipe.data.max_train_rows), int(recipe.data.seed))
    source_state = CompressedMLP.from_model(load_mlp(md.file("weights")))
    data = StageData(X[train_idx], y[train_idx], X[valid_mask], y[valid_mask], teacher=source_state,
                     groups=spec.extra_inputs)  # fmt: skip

    def metrics_of(scores_valid: np.ndarray) -> dict:
        full = np.zeros(len(df), dtype=np.float32)
        full[valid_mask] = scores_valid
        return evaluate_scores(df, full, valid_mask)

    source_scores = OnnxScorer(md.onnx_path).score(data.X_valid)
    source_metrics = metrics_of(source_scores)
    source_ap = float(source_metrics["average_precision"])
    say(
        f"compress: source {md.version} valid AP={source_ap:.4f} params={source_state.n_params():,} "
        f"onnx={md.bytes_by_role()['onnx']:,} B; budget: AP >= {source_ap - max_ap_drop:.4f}; "
        f"{len(recipe.stages)} stage(s), fine-tuning on {len(train_idx):,} rows"
    )

    def evaluate(state: CompressedMLP) -> dict:
        return metrics_of(state.predict_proba(data.X_valid))

    teacher_report = None
    if recipe.teacher.members > 1:
        t0 = time.perf_counter()
        say(f"compress: teacher: training {recipe.teacher.members - 1} more model(s) like the source")
        data = dataclasses.replace(
            data, teacher=train_teacher_ensemble(source_state, data, recipe.teacher, say)
        )
        teacher_report = {
            "members": recipe.teacher.members,
            "average_precision": float(evaluate(data.teacher)["average_precision"]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        say(
            f"compress: teacher: {recipe.teacher.members}-model ensemble valid AP="
            f"{teacher_report['average_precision']:.4f} (source {source_ap:.4f}) in {teacher_report['seconds']:.0f}s"
        )

    result = run_search(recipe, source_state, data, evaluate, source_ap, max_ap_drop, progress)
    final = result.state
    if teacher_report is not None:  # the source's row in the stage table: its overlap with the teacher
        teacher_report["source_agreement"] = result.source_agreement

    # what ships: the compact artifact; what serves: the fastest runnable form of its decoded weights
    compact = encode_compact(final)
    shipped = decode_compact(compact)  # encode_compact verified the round trip; serve scores these bytes
    say("compress: runtime: timing the runnable forms of the decoded artifact side by side")
    forms = build_forms(shipped.layers, shipped.mean, shipped.std, shipped.masks)
    form_name, runtime = choose_runtime(shipped, data.X_valid[:_PROBE_ROWS], forms)
    if recipe.export.form != "auto":
        if recipe.export.form not in forms:
            raise ConfigError(f"recipe [export] form = {recipe.export.form!r} does not apply to this model "
                              f"(its forms: {', '.join(forms)})")  # fmt: skip
        form_name = recipe.export.form
        runtime.update(form=form_name, why=f"fixed by the recipe ([export] form); measured: {runtime['why']}")
    served_scores = forms[form_name].score(data.X_valid)
    score_diff = float(np.max(np.abs(served_scores - final.predict_proba(data.X_valid))))
    if score_diff > recipe.export.max_score_diff:
        raise RuntimeError(f"served form {form_name} differs from the compressed weights by {score_diff:.2e}")
    runtime["max_abs_score_diff"] = score_diff
    say(f"compress: runtime: {form_name} ({runtime['why']})")
    monitoring, served_scores, budget_alert = _monitoring(md, shipped, data, served_scores)
    final_metrics = metrics_of(served_scores)
    ap_drop = source_ap - float(final_metrics["average_precision"])
    if ap_drop > max_ap_drop + 1e-4:  # float rounding only: the search measured these weights
        raise RuntimeError(f"served model AP drop {ap_drop:.4f} exceeds the budget")

    # per-stage rows: source, then each accepted stage (stages as fp32 ONNX, the served form last)
    source_onnx = md.onnx_path.read_bytes()
    stage_states = [("source", source_state, source_metrics)] + [
        (t.stage, t.state, t.metrics) for t in result.accepted
    ]
    say("compress: measuring per-stage sizes and speed")
    keys = ["source"] + [f"{i}:{name}" for i, (name, _, _) in enumerate(stage_states[1:], 1)]
    runnables = {"source": source_onnx}
    for key, (_, state, _) in zip(keys[1:], stage_states[1:], strict=True):
        runnables[key] = fp32_runnable(state, recipe.export.storage)
    speed = reporting.measure_speed(runnables, data.X_valid)
    speed["final"] = {int(b): float(v) for b, v in runtime["rows_per_s"][form_name].items()}
    keys.append("final")
    stage_states.append(("final", final, final_metrics))
    agreements = [result.source_agreement] + [t.agreement for t in result.accepted]
    agreements.append(agreements[-1])  # the served form holds the last accepted weights
    rows = []
    for i, ((name, state, metrics), key) in enumerate(zip(stage_states, keys, strict=True)):
        rows.append(
            {
                "stage": name,
                "hidden": list(state.hidden),
                "n_params": state.n_params(),
                "n_kept_weights": state.n_kept_weights(),
                "compact_bytes": len(encode_compact(state)),
                "runnable_bytes": len(runnables[key]) if key in runnables else len(compact),
                "average_precision": metrics["average_precision"],
                "ap_drop": source_ap - metrics["average_precision"],
                "roc_auc": metrics["roc_auc"],
                "card_precision_at_100": metrics["card_precision_at_100"],
                "top_agreement": agreements[i],
                "rows_per_s_b1": speed[key][1],
                "rows_per_s_b256": speed[key][256],
                "accepted": True,
                "ap_floor": source_ap - max_ap_drop,
                "params": (result.accepted[i - 1].setting if 0 < i <= len(result.accepted) else {}),
            }
        )
    rows[-1]["stage"] = f"served ({form_name})"
    source_bytes = len(source_onnx)
    threshold, alert_threshold = choose_thresholds(data.y_valid, served_scores)
    if budget_alert is not None:
        alert_threshold = budget_alert
    summary = {
        "source_onnx_bytes": source_bytes,
        "source_serve_bytes": md.serve_bytes(),
        "source_average_precision": source_ap,
        "compact_bytes": len(compact),
        "compact_ratio": source_bytes / len(compact),
        "served_form": form_name,
        "speedup_b1": rows[-1]["rows_per_s_b1"] / rows[0]["rows_per_s_b1"],
        "speedup_b256": rows[-1]["rows_per_s_b256"] / rows[0]["rows_per_s_b256"],
        "average_precision": final_metrics["average_precision"],
        "roc_auc": final_metrics["roc_auc"],
        "card_precision_at_100": final_metrics["card_precision_at_100"],
        "ap_drop": ap_drop,
        "max_abs_score_diff": score_diff,
        "compact_breakdown": compact_breakdown(final),
        "final": final.summary(),
    }
    report = {
        "source": {"path": str(md.path), "version": md.version, "metrics": source_metrics},
        "max_ap_drop": max_ap_drop,
        "recipe": recipe.to_dict(),
        "summary": summary,
        "stages": rows,
        "stage_records": [dict(rec) for rec in final.stages],
        "trials": [t.record() for t in result.trials],
        "skipped_stages": result.skipped,
        "runtime": runtime,
        "memory": None,
        "teacher": teacher_report,
        "calibration": monitoring.report,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    manifest = {
        "model_type": "mlp",
        "data_window": md.manifest["data_window"],
        "threshold": threshold,
        "alert_threshold": alert_threshold,
        "metrics": {"validation": headline_metrics(final_metrics)},
        "compression": {
            "stages": [rec.get("name") for rec in final.stages],
            "skipped_stages": [skip["stage"] for skip in result.skipped],
            "ap_drop": ap_drop,
            "max_ap_drop": max_ap_drop,
            "source_onnx_bytes": source_bytes,
            "compact_ratio": round(summary["compact_ratio"], 2),
        },
        "runtime": manifest_runtime(runtime),
        "parent_version": md.version,
        "monitoring": monitoring.record(),
    }

    def write(tmp: Path) -> dict[str, str]:
        roles: dict[str, str] = {}
        if measure_memory:  # RSS of serving this directory vs the source, each in a fresh process
            say("compress: measuring RSS after load (child processes)")
            with tempfile.TemporaryDirectory(prefix="fraudlite-rss-") as probe:
                probe_dir = write_compressed_dir(Path(probe) / "model", compact, spec, manifest)
                report["memory"] = {
                    "source_rss_bytes": rss_after_open(md.path),
                    "served_rss_bytes": rss_after_open(probe_dir.path),
                    "what": "RSS that opening the directory and scoring one batch of 256 adds to a fresh process",
                }
        if keep_training_files:
            from fraudlite.models import save_mlp

            final.save(tmp / STATE_FILE)
            save_mlp(final.to_model(), tmp / WEIGHTS_FILE)
            roles.update({STATE_FILE: "state", WEIGHTS_FILE: "weights"})
        (tmp / METRICS_FILE).write_text(json.dumps(manifest["metrics"], indent=2))
        report["version"] = "(see manifest.json)"
        return {**roles, METRICS_FILE: "report", **reporting.write_report(tmp, report)}

    written = write_compressed_dir(out, compact, spec, manifest, write)
    say(
        f"compress: wrote {written.path} version={written.version} serve bytes={written.serve_bytes():,} "
        f"(source {md.serve_bytes():,}) in {time.perf_counter() - t_start:.0f}s"
    )
    return written


def _monitoring(md: ModelDir, shipped: CompressedMLP, data: StageData, raw_valid: np.ndarray):
    """The compressed model's own calibration (fitted to its raw validation scores), the source's feature
    reference with the new scores, and the source's alert budget applied to them
    (``models.calibrate.monitoring_for``): (monitoring, calibrated validation scores, budget threshold)."""
    from fraudlite.data.transactions import parse_day
    from fraudlite.models.calibrate import REFERENCE_ROWS, monitoring_for
    from fraudlite.monitoring.reference import Reference

    source = md.manifest.get("monitoring") or {}
    reference = Reference.decode(source["reference"]) if source.get("reference") else None
    budget = source.get("alert_budget_per_1k")
    window = md.manifest["data_window"]
    days = (parse_day(window["valid_end"], "valid_end") - parse_day(window["valid_start"], "valid_start")) + 1
    return monitoring_for(
        raw_valid, data.y_valid, data.X_train[:REFERENCE_ROWS], shipped.mean, shipped.safe_std(), days,
        None if budget is None else f"{budget}/1k", reference_features=reference,
    )  # fmt: skip


def headline_metrics(metrics: dict) -> dict:
    """The metrics a manifest keeps (the report keeps the rest)."""
    keys = ("roc_auc", "average_precision", "card_precision_at_100", "n", "n_fraud")
    return {k: metrics[k] for k in keys if k in metrics}


def _sayer(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(msg: str) -> None:
        logger.info(msg)
        if progress is not None:
            progress(msg)

    return say
