"""`fraudlite compress`: a trained model directory in, a compressed model directory out.

Steps: validate everything the user gave (recipe, model directory, ``--max-ap-drop``) before any work;
features of the whole file (the model's FeatureSpec); the training and validation windows from the
source manifest's ``data_window``; the accuracy-bounded search over the recipe's stages
(:mod:`fraudlite.compression.search`); the runnable ONNX (:func:`export.choose_runnable`) and the
entropy-coded compact artifact (:mod:`compact`); per-stage measurements; one atomic model directory
(servable by the scorer, same contract as a trained one) with the extra roles ``compact``, ``state``,
``compression_report`` (report.json), ``compression_report_md`` and ``pareto``.
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
from fraudlite.compression.export import choose_runnable, fp32_runnable
from fraudlite.compression.recipe import Recipe, default_recipe, load_recipe
from fraudlite.compression.search import run_search
from fraudlite.compression.state import CompressedMLP, StageData
from fraudlite.errors import ConfigError, ModelDirError
from fraudlite.modeldir import ModelDir

__all__ = ["COMPACT_FILE", "STATE_FILE", "check_max_ap_drop", "compress_model_dir", "load_source"]

logger = logging.getLogger(__name__)

COMPACT_FILE = "model.flc"
STATE_FILE = "compressed.safetensors"


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
        measure_memory: measure RSS after load of source and runnable in child processes.

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
    from fraudlite.models.training import write_trained_model
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
    data = StageData(X[train_idx], y[train_idx], X[valid_mask], y[valid_mask], teacher=source_state)

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

    # runnable ONNX + compact artifact
    metadata = {"source_version": md.version, "producer": "fraudlite compress"}
    check_rows = data.X_valid[: max(4096, 256)]

    def ap_of(model: bytes) -> float:  # serving-sized batches: dynamic int8 calibrates per batch
        return float(metrics_of(OnnxScorer(model).score(data.X_valid, batch_size=256))["average_precision"])

    say("compress: export: building and timing runnable candidates")
    runnable, runtime = choose_runnable(
        final, recipe.export, data.X_train, check_rows, ap_of, source_ap - max_ap_drop, metadata
    )
    compact = encode_compact(final)
    if not decode_compact(compact).equals(CompressedMLP(final.layers, final.mean, final.std, final.masks,
                                                        final.codebooks, final.quant, [])):  # fmt: skip
        raise RuntimeError("compact artifact does not round-trip")  # encode_compact verifies; belt and braces
    runnable_scores = OnnxScorer(runnable).score(data.X_valid)
    final_metrics = metrics_of(runnable_scores)
    ap_drop = source_ap - float(final_metrics["average_precision"])
    if ap_drop > max_ap_drop + 1e-4:  # fp32: float rounding only; int8 candidates were checked by AP
        raise RuntimeError(f"runnable model AP drop {ap_drop:.4f} exceeds the budget after export")

    # per-stage rows: source, then each accepted stage
    source_onnx = md.onnx_path.read_bytes()
    stage_states = [("source", source_state, source_metrics)] + [
        (t.stage, t.state, t.metrics) for t in result.accepted
    ]
    say("compress: measuring per-stage sizes and speed")
    keys = ["source"] + [f"{i}:{name}" for i, (name, _, _) in enumerate(stage_states[1:], 1)] + ["final"]
    runnables = {"source": source_onnx}
    for key, (_, state, _) in zip(keys[1:-1], stage_states[1:], strict=True):
        runnables[key] = fp32_runnable(state, recipe.export.storage)
    runnables["final"] = runnable
    speed = reporting.measure_speed(runnables, data.X_valid)
    stage_states.append(("final", final, final_metrics))
    agreements = [result.source_agreement] + [t.agreement for t in result.accepted]
    agreements.append(agreements[-1])  # the runnable holds the last accepted weights
    rows = []
    for i, ((name, state, metrics), key) in enumerate(zip(stage_states, keys, strict=True)):
        rows.append(
            {
                "stage": name,
                "hidden": list(state.hidden),
                "n_params": state.n_params(),
                "n_kept_weights": state.n_kept_weights(),
                "compact_bytes": len(encode_compact(state)),
                "runnable_bytes": len(runnables[key]),
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
    rows[-1]["stage"] = f"runnable ({runtime['chosen']})"
    source_bytes = len(source_onnx)
    memory = None
    if measure_memory:
        with tempfile.TemporaryDirectory(prefix="fraudlite-rss-") as tmp:
            path = Path(tmp) / "runnable.onnx"
            path.write_bytes(runnable)
            memory = {
                "source_rss_bytes": reporting.rss_after_load(md.onnx_path, final.n_features),
                "runnable_rss_bytes": reporting.rss_after_load(path, final.n_features),
                "what": "RSS added to a fresh process by creating the session and scoring one batch of 256",
            }
    threshold, alert_threshold = choose_thresholds(data.y_valid, runnable_scores)
    summary = {
        "source_onnx_bytes": source_bytes,
        "source_average_precision": source_ap,
        "compact_bytes": len(compact),
        "compact_ratio": source_bytes / len(compact),
        "runnable_bytes": len(runnable),
        "runnable_ratio": source_bytes / len(runnable),
        "speedup_b1": rows[-1]["rows_per_s_b1"] / rows[0]["rows_per_s_b1"],
        "speedup_b256": rows[-1]["rows_per_s_b256"] / rows[0]["rows_per_s_b256"],
        "average_precision": final_metrics["average_precision"],
        "roc_auc": final_metrics["roc_auc"],
        "card_precision_at_100": final_metrics["card_precision_at_100"],
        "ap_drop": ap_drop,
        "max_abs_score_diff": runtime["max_abs_score_diff"],
        "compact_breakdown": compact_breakdown(final),
        "final": final.summary(),
    }
    report = {
        "source": {"path": str(md.path), "version": md.version, "metrics": source_metrics},
        "max_ap_drop": max_ap_drop,
        "recipe": recipe.to_dict(),
        "summary": summary,
        "stages": rows,
        "trials": [t.record() for t in result.trials],
        "skipped_stages": result.skipped,
        "runtime": runtime,
        "memory": memory,
        "teacher": teacher_report,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    stages = [dict(rec) for rec in final.stages]
    manifest = {
        "model_type": "mlp",
        "data_window": md.manifest["data_window"],
        "threshold": threshold,
        "alert_threshold": alert_threshold,
        "feature_names": md.manifest.get("feature_names", spec.names),
        "metrics": {"validation": final_metrics, "source_validation": source_metrics},
        "compression": {
            "stages": stages,
            "skipped_stages": [s["stage"] for s in result.skipped],
            "source_version": md.version,
            "ap_drop": ap_drop,
            "validation_ap_drop": ap_drop,
            "max_ap_drop": max_ap_drop,
            "runtime": runtime["chosen"],
            "compact_bytes": len(compact),
            "runnable_bytes": len(runnable),
            "source_onnx_bytes": source_bytes,
            "compact_ratio": summary["compact_ratio"],
            "runnable_ratio": summary["runnable_ratio"],
            "recipe": recipe.to_dict(),
        },
        "parent_version": md.version,
        "n_train": int(train_mask.sum()),
        "n_valid": int(valid_mask.sum()),
    }
    normalization = json.loads(md.file("spec").read_text()).get("normalization", {})
    final_model = final.to_model()

    def extra(tmp: Path) -> dict[str, str]:
        (tmp / COMPACT_FILE).write_bytes(compact)
        final.save(tmp / STATE_FILE)
        report["version"] = "(see manifest.json)"
        return {COMPACT_FILE: "compact", STATE_FILE: "state", **reporting.write_report(tmp, report)}

    def write_weights(path: Path) -> None:
        from fraudlite.models import save_mlp

        save_mlp(final_model, path)

    written = write_trained_model(out, runnable, spec, normalization, write_weights, manifest, extra)
    say(f"compress: wrote {written.path} version={written.version} in {time.perf_counter() - t_start:.0f}s")
    return written


def _sayer(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(msg: str) -> None:
        logger.info(msg)
        if progress is not None:
            progress(msg)

    return say
