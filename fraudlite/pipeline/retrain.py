"""Retrain job: train a challenger on the latest trusted labels, compress it, compare with the champion.

One run (``run_retrain``):

1. Windows (UTC days, inclusive). Labels are trusted once ``delay_days`` old, so the last labelled day
   is ``L = now - delay_days``. The training window is ``[L - train_days + 1, L]``; its last
   ``valid_days`` are the validation part and also the comparison window: the most recent
   fully-labelled days. The challenger fits no weights on them (they only pick its epoch and
   thresholds, a small optimistic bias); a champion trained by an earlier run has not seen them at all.
2. Train the challenger in a staging directory inside the registry (``DIR/.staging``), then compress it
   with the recipe (``fraudlite.compression.compress_model_dir``, whose AP budget ``max_ap_drop`` is the
   compression guardrail). Compression status: ``compressed``, ``failed`` (nothing fits the budget: the
   challenger is rejected), ``not_applicable`` (baselines), ``skipped`` (``--no-compress``), or
   ``unavailable`` (a build without compression: the trained model is registered).
3. Evaluate challenger and champion on the comparison window with the same fair metrics as
   ``fraudlite evaluate`` (cards with already-known fraud excluded).
4. Decide (``decide``): promote if the challenger passes the guardrails (compression within budget,
   AP >= ``min_ap``) and its AP is not lower than the champion's by more than ``tolerance``; the first
   model ever is promoted when it passes the guardrails.
5. Under the registry's writers' lock (read the champion, evaluate it, add, move the pointer, record):
   the challenger becomes a new immutable version whether promoted or not (parent version, metrics and
   decision kept for audit), the champion pointer moves atomically, the decision goes to history.jsonl.

A run holds ``DIR/.retrain.lock`` from training to the decision, so two runs never overlap (the second
fails fast with RegistryBusyError). Any failure leaves the registry as it was (staging is removed).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlite.compression.served import open_model
from fraudlite.data.transactions import day_of, format_day, load_transactions, parse_day
from fraudlite.errors import ConfigError, DataError, FraudliteError, IntegrityError, ModelDirError
from fraudlite.features.extras import ExtraColumn, parse_extra_columns
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.models.evaluation import evaluate_window, features_for, score_frame
from fraudlite.models.training import (
    TrainConfig,
    TrainingData,
    prepare_training_data,
    train_model,
    training_spec,
)
from fraudlite.pipeline.registry import Registry, file_lock, read_champion
from fraudlite.pipeline.retrain_config import RetrainConfig, RetrainWindows

__all__ = [
    "RetrainConfig",
    "RetrainWindows",
    "RetrainResult",
    "Trainer",
    "Compressor",
    "default_compressor",
    "no_compressor",
    "decide",
    "load_training_frame",
    "run_retrain",
    "COMPRESSION_UNAVAILABLE",
]

logger = logging.getLogger(__name__)

RETRAIN_LOCK = ".retrain.lock"
STAGING_DIR = ".staging"
COMPRESSION_UNAVAILABLE = "unavailable"

Trainer = Callable[[TrainingData, TrainConfig, FeatureSpec, Path], ModelDir]
"""(prepared data, train config, feature spec, output dir) -> the trained model directory."""

Compressor = Callable[[ModelDir, pd.DataFrame, Path, "str | None", float], "tuple[ModelDir, dict]"]
"""(trained model, standard frame, output dir, recipe path, max AP drop) -> (model to register, info)."""


@dataclass
class RetrainResult:
    """What a run decided, with the numbers behind it (also the history record)."""

    decision: str  # "promoted" | "rejected"
    reason: str
    challenger: str
    champion: str | None
    new_champion: str | None
    metrics: dict
    windows: dict
    compression: str | dict
    guardrails: dict
    duration_seconds: float
    time: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def decide(
    challenger: dict,
    champion: dict | None,
    *,
    tolerance: float,
    guardrail_failures: list[str] | None = None,
    champion_problem: str | None = None,
) -> tuple[str, str]:
    """Champion/challenger rule (pure). Metrics dicts carry ``average_precision``.

    Returns:
        (``"promoted"`` or ``"rejected"``, a one-line reason with the numbers).
    """
    ap = challenger.get("average_precision")
    if guardrail_failures:
        return "rejected", "guardrail: " + "; ".join(guardrail_failures)
    if ap is None or not math.isfinite(ap):
        return "rejected", "guardrail: challenger AP is undefined on the comparison window"
    if champion is None:
        why = (
            f"champion unusable ({champion_problem})" if champion_problem else "no champion yet (first model)"
        )
        return "promoted", f"{why}; challenger passed the guardrails with AP {ap:.4f}"
    champ_ap = champion.get("average_precision")
    if champ_ap is None or not math.isfinite(champ_ap):
        return "promoted", f"champion AP is undefined on the comparison window; challenger AP {ap:.4f}"
    delta = ap - champ_ap
    if delta >= -tolerance:
        return (
            "promoted",
            f"challenger AP {ap:.4f} vs champion {champ_ap:.4f} (delta {delta:+.4f}, tolerance {tolerance})",
        )
    return (
        "rejected",
        f"challenger AP {ap:.4f} is {-delta:.4f} below champion {champ_ap:.4f} (tolerance {tolerance})",
    )


def load_training_frame(
    data: str | Path, columns: dict[str, str] | None = None, extras: Sequence[ExtraColumn] = ()
) -> pd.DataFrame:
    """The standard frame from a transactions file, or from a label store directory (``fraudlite collect``)."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"--data {p}: no such file or label store directory")
    if p.is_dir():
        if columns:
            raise ConfigError("--columns applies to a transactions file, not to a label store directory")
        if extras:
            raise ConfigError(
                f"--data {p}: a label store holds the six core columns, not the extra columns "
                f"{', '.join(c.name for c in extras)}; retrain this model from a transactions file"
            )
        from fraudlite.pipeline.label_store import load_store

        return load_store(p)
    return load_transactions(p, columns, require_label=True, extras=extras)


def retrain_extras(registry: str | Path, config: RetrainConfig) -> tuple[tuple[ExtraColumn, ...], bool]:
    """The extra columns a retrain uses, and whether they are already fitted: the champion's exactly (so
    its successor keeps the feature spec and the scorer hot-swaps to it), else ``--extra-columns``.

    Raises:
        ConfigError: ``--extra-columns`` names other columns or kinds than the champion has.
    """
    declared = parse_extra_columns(config.extra_columns)
    version = read_champion(registry)
    if version is None:
        return declared, False
    kept = Registry(registry).load(version, verify=False).spec.extra_columns
    if config.extra_columns is not None and [(c.name, c.kind) for c in declared] != [
        (c.name, c.kind) for c in kept
    ]:
        have = ",".join(f"{c.name}:{c.kind}" for c in kept) or "none"
        raise ConfigError(
            f"--extra-columns: the champion's extra columns are {have}; a retrain keeps them (the scorer "
            "cannot hot-swap to other features): train and promote a model with the new ones instead"
        )
    return kept, True


def _check_coverage(df: pd.DataFrame, windows: RetrainWindows, data: str | Path) -> None:
    day = day_of(df["ts"].to_numpy())
    first, last = int(day.min()), int(day.max())
    need = f"{format_day(windows.train_start)}..{format_day(windows.valid_end)}"
    if last < windows.valid_end:
        raise DataError(
            f"{data}: the data ends on {format_day(last)} but the training window {need} needs labelled data "
            f"through {format_day(windows.valid_end)} (now {format_day(windows.now)} minus the label delay); "
            "pass an earlier --now or wait for more data"
        )
    if first > windows.train_start:
        covered = last - first + 1
        raise DataError(
            f"{data}: the data starts on {format_day(first)}, after the start of the training window {need}; "
            f"use a shorter --train-days (the data covers {covered} days) or a later --now"
        )


def _compression_module():
    """``fraudlite.compression`` if its entry point exists in this build, else None."""
    try:
        from fraudlite.compression import compress_model_dir, load_recipe  # type: ignore[attr-defined]
    except ImportError:
        return None
    return compress_model_dir, load_recipe


def check_recipe(recipe: str | None) -> None:
    """Parse the recipe before any training, so a bad one fails fast (ConfigError) and changes nothing."""
    module = _compression_module()
    if recipe and module is not None:
        module[1](recipe)


def default_compressor(
    trained: ModelDir, df: pd.DataFrame, out: Path, recipe: str | None, max_ap_drop: float
) -> tuple[ModelDir, dict]:
    """Compress with ``fraudlite.compression.compress_model_dir`` (the guardrail is its AP budget).

    Returns the trained model unchanged, with status ``unavailable`` when this build has no compression
    and ``not_applicable`` for models without MLP weights (baselines). A SearchError (nothing fits the
    budget) propagates: the caller rejects the challenger.
    """
    module = _compression_module()
    if module is None:
        if recipe:
            logger.warning("retrain: --recipe %s ignored: compression is not available in this build", recipe)
        logger.warning("retrain: compression unavailable; registering the trained (uncompressed) model")
        return trained, {"status": COMPRESSION_UNAVAILABLE}
    if not trained.has("weights"):
        logger.info(
            "retrain: %s model has no MLP weights; not compressed", trained.manifest.get("model_type")
        )
        return trained, {"status": "not_applicable"}
    compressed = module[0](trained, df, out, recipe, max_ap_drop, measure_memory=False)
    report = compressed.manifest.get("compression") or {}
    return compressed, {"status": "compressed", "source_version": trained.version, "report": report}


def no_compressor(
    trained: ModelDir, df: pd.DataFrame, out: Path, recipe: str | None, max_ap_drop: float
) -> tuple[ModelDir, dict]:
    """``--no-compress``: register the trained model as it is."""
    return trained, {"status": "skipped"}


def _ap_drop(info: dict) -> float | None:
    report = info.get("report") or {}
    for key in ("ap_drop", "validation_ap_drop"):
        value = report.get(key) if isinstance(report, dict) else None
        if isinstance(value, int | float):
            return float(value)
    return None


def _evaluate(
    model: ModelDir, df: pd.DataFrame, windows: RetrainWindows, k: int, cache: dict[FeatureSpec, np.ndarray]
) -> dict:
    spec = model.spec
    if spec not in cache:
        cache[spec] = features_for(spec, df)
    scores = score_frame(open_model(model), df, cache[spec])
    return evaluate_window(model, df, windows.valid_start, windows.valid_end, k=k, scores=scores)


def _headline(m: dict | None) -> dict | None:
    if m is None:
        return None
    keys = ("average_precision", "roc_auc", "card_precision_at_100", "recall_at_0.01_budget", "n", "n_fraud")
    return {key: m[key] for key in keys if key in m} | {"model_version": m.get("model_version")}


def run_retrain(
    registry: str | Path,
    data: str | Path,
    config: RetrainConfig,
    *,
    now_day: int | None = None,
    columns: dict[str, str] | None = None,
    frame: pd.DataFrame | None = None,
    decided_at: datetime | None = None,
    trainer: Trainer = train_model,
    compressor: Compressor | None = None,
) -> RetrainResult:
    """One retrain run (see the module docstring). Returns the decision; raises on failure.

    Args:
        registry: registry directory (created on the first run).
        data: transactions file or label store directory (``frame`` overrides reading it).
        now_day: UTC epoch day the run takes as "today" (default: today, or ``decided_at``'s day).
        decided_at: the time recorded in the history (scheduler clock); default now.
        trainer, compressor: injection points (tests); the compressor defaults to ``default_compressor``
            (``no_compressor`` when ``config.compress`` is False).

    Raises:
        ConfigError / DataError: bad settings, data that does not cover the window, a single-class window,
            a store without labels (nothing is written).
        RegistryBusyError: another retrain run holds the lock.
    """
    t0 = time.perf_counter()
    if now_day is None:
        now_day = parse_day((decided_at or datetime.now(UTC)).date().isoformat(), "--now")
    if compressor is None:
        compressor = default_compressor if config.compress else no_compressor
    if config.compress:
        check_recipe(config.recipe)
    windows = RetrainWindows.for_now(now_day, config)
    train_config = windows.train_config(config)
    extras, fitted = retrain_extras(registry, config)
    df = frame if frame is not None else load_training_frame(data, columns, extras)
    _check_coverage(df, windows, data)
    logger.info(
        "retrain: now=%s window=%s..%s comparison=%s..%s rows=%d",
        format_day(now_day),
        format_day(windows.train_start),
        format_day(windows.valid_end),
        format_day(windows.valid_start),
        format_day(windows.valid_end),
        len(df),
    )
    if fitted:
        spec = FeatureSpec(delay_days=config.delay_days, extra_columns=extras)
    else:
        spec = training_spec(df, train_config, extras, source=columns)
    prepared = prepare_training_data(df, train_config, spec)  # DataError on empty / single-class windows

    root = Path(registry)
    root_existed = root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--registry {root}: cannot create ({e.strerror})") from e
    try:
        with file_lock(root / RETRAIN_LOCK, blocking=False, what="retrain"):
            reg = Registry(root, create=True)
            result = _run_locked(
                reg, df, prepared, spec, windows, train_config, config, decided_at, trainer, compressor, t0
            )
    except BaseException:
        if not root_existed:
            _remove_if_empty_registry(root)
        raise
    logger.info(
        "retrain: decision=%s challenger=%s champion=%s new_champion=%s reason=%s seconds=%.1f",
        result.decision,
        result.challenger,
        result.champion,
        result.new_champion,
        result.reason,
        result.duration_seconds,
    )
    return result


def _remove_if_empty_registry(root: Path) -> None:
    """Undo creating a registry for a run that failed (only if it holds nothing but our scaffolding)."""
    leftovers = {p.name for p in root.iterdir()} - {RETRAIN_LOCK, ".lock", "versions", STAGING_DIR}
    versions = root / "versions"
    if leftovers or (versions.is_dir() and any(versions.iterdir())):
        return
    shutil.rmtree(root, ignore_errors=True)


def _run_locked(
    reg: Registry,
    df: pd.DataFrame,
    prepared: TrainingData,
    spec: FeatureSpec,
    windows: RetrainWindows,
    train_config: TrainConfig,
    config: RetrainConfig,
    decided_at: datetime | None,
    trainer: Trainer,
    compressor: Compressor,
    t0: float,
) -> RetrainResult:
    staging_root = reg.root / STAGING_DIR
    staging_root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="run-", dir=staging_root))
    try:
        champion_at_start = reg.champion()
        trained = trainer(prepared, train_config, spec, staging / "trained")
        try:
            challenger, compression = compressor(
                trained, df, staging / "compressed", config.recipe, config.max_ap_drop
            )
            guardrail_failures = []
        except ConfigError:
            raise
        except FraudliteError as e:  # the compression search found nothing within max_ap_drop
            challenger, compression = trained, {"status": "failed", "error": str(e)}
            guardrail_failures = [f"compression: {e}"]
        drop = _ap_drop(compression)
        if drop is not None and drop > config.max_ap_drop:
            guardrail_failures.append(f"compression AP drop {drop:.4f} > --max-ap-drop {config.max_ap_drop}")

        cache = {spec: prepared.X}
        chall_metrics = _evaluate(challenger, df, windows, config.k, cache)
        ap = chall_metrics["average_precision"]
        if config.min_ap > 0 and not (ap >= config.min_ap):
            guardrail_failures.append(f"challenger AP {ap:.4f} < --min-ap {config.min_ap}")

        # Under the writers' lock from reading the champion to moving the pointer: a manual promote or
        # rollback waits, so the champion compared is the champion replaced (the CAS double-checks it).
        with reg.lock():
            champion, champ_metrics, champion_problem = _champion_metrics(reg, df, windows, config.k, cache)
            decision, reason = decide(
                chall_metrics,
                champ_metrics,
                tolerance=config.tolerance,
                guardrail_failures=guardrail_failures,
                champion_problem=champion_problem,
            )
            version = challenger.version
            reg.add(
                challenger,
                {
                    "parent_version": champion,
                    "metrics": {**(challenger.manifest.get("metrics") or {}), "recent_window": chall_metrics},
                    "retrain": {
                        "windows": windows.to_dict(),
                        "compression_status": compression.get("status"),
                        "config": asdict(config),
                    },
                },
            )
            if decision == "promoted":
                reg.set_champion(version, expected=champion)
            result = RetrainResult(
                decision=decision,
                reason=reason,
                challenger=version,
                champion=champion,
                new_champion=version if decision == "promoted" else champion,
                metrics={"challenger": _headline(chall_metrics), "champion": _headline(champ_metrics)},
                windows=windows.to_dict(),
                compression=(
                    COMPRESSION_UNAVAILABLE
                    if compression.get("status") == COMPRESSION_UNAVAILABLE
                    else compression
                ),
                guardrails={
                    "passed": not guardrail_failures,
                    "failures": guardrail_failures,
                    "max_ap_drop": config.max_ap_drop,
                    "min_ap": config.min_ap,
                    "tolerance": config.tolerance,
                },
                duration_seconds=round(time.perf_counter() - t0, 2),
                time=(decided_at or datetime.now(UTC)).isoformat(timespec="seconds"),
                extra={
                    "champion_at_start": champion_at_start,
                    "champion_problem": champion_problem,
                },
            )
            reg.record(result.to_dict())
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging_root.rmdir()
        except OSError:
            pass


def _champion_metrics(
    reg: Registry, df: pd.DataFrame, windows: RetrainWindows, k: int, cache: dict
) -> tuple[str | None, dict | None, str | None]:
    """(champion version, its metrics on the comparison window or None, why it could not be used)."""
    champion = reg.champion()
    if champion is None:
        return None, None, None
    try:
        model = reg.load(champion, verify=True)
        return champion, _evaluate(model, df, windows, k, cache), None
    except (IntegrityError, ModelDirError) as e:
        logger.error("retrain: champion %s is unusable: %s", champion, e)
        return champion, None, str(e)
    except DataError as e:
        logger.warning("retrain: champion %s cannot be evaluated: %s", champion, e)
        return champion, None, str(e)
