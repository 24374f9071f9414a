"""The foundation commands (generate, train, evaluate, score): glue between the CLI and the pipeline."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlite.cli.train_streamed import train_out_of_core
from fraudlite.compression.served import open_model
from fraudlite.data.transactions import format_day, load_transactions, parse_day, write_table
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import parse_extra_columns
from fraudlite.models.evaluation import evaluate_window, features_for, score_frame
from fraudlite.models.streamed import StreamConfig, should_stream
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model, training_spec

__all__ = ["generate", "train", "evaluate", "score", "features"]

logger = logging.getLogger(__name__)


def generate(
    out: str,
    customers: int,
    terminals: int,
    days: int,
    start_date: str,
    seed: int,
    drift_day: int | None = None,
    extra_attributes: bool = False,
) -> int:
    """Simulate a dataset and write it (.csv or .parquet) atomically; ``extra_attributes`` adds the
    columns of ``fraudlite.data.attributes`` (a CSV writes ``card_present`` as true/false)."""
    from fraudlite.data.simulator import SimulatorConfig, simulate

    if Path(out).suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"--out: use a .csv or .parquet file name, got {out!r}")
    parse_day(start_date, "--start-date")
    config = SimulatorConfig(
        n_customers=customers,
        n_terminals=terminals,
        n_days=days,
        start_date=start_date,
        seed=seed,
        drift_day=drift_day,
        extra_attributes=extra_attributes,
    )
    t0 = time.perf_counter()
    df = simulate(config, progress=lambda msg: logger.info("generate: %s", msg))
    if extra_attributes and Path(out).suffix.lower() == ".csv":
        df["card_present"] = np.where(df["card_present"].to_numpy(), "true", "false")
    write_table(df, out)
    seconds = time.perf_counter() - t0
    n_fraud = int(df["label"].sum())
    logger.info(
        "generate: rows=%d frauds=%d (%.2f%%) seconds=%.1f rate=%.0f tx/s out=%s",
        len(df),
        n_fraud,
        100 * n_fraud / max(len(df), 1),
        seconds,
        len(df) / seconds,
        out,
    )
    return 0


def train(
    data: str,
    columns: dict[str, str],
    train_start: str,
    train_end: str,
    out: str,
    valid_start: str | None = None,
    valid_end: str | None = None,
    valid_days: int | None = None,
    delay_days: int = 7,
    model_type: str = "mlp",
    seed: int = 0,
    max_epochs: int | None = None,
    alert_budget: str | None = None,
    extra_columns: str | None = None,
    stream: StreamConfig | None = None,
) -> int:
    """Train a model on a date window and write its model directory (atomically); out of core
    (``cli.train_streamed``) when ``stream`` asks for it or the data calls for it."""
    extras = parse_extra_columns(extra_columns)
    config = TrainConfig(
        train_start_day=parse_day(train_start, "--train-start"),
        train_end_day=parse_day(train_end, "--train-end"),
        valid_start_day=parse_day(valid_start, "--valid-start") if valid_start else None,
        valid_end_day=parse_day(valid_end, "--valid-end") if valid_end else None,
        valid_days=valid_days,
        delay_days=delay_days,
        model_type=model_type,
        seed=seed,
        max_epochs=max_epochs,
        alert_budget=alert_budget,
    )
    if stream is not None and should_stream(data, stream):
        return train_out_of_core(data, columns, config, extras, out, stream)
    df = load_transactions(data, columns, require_label=True, extras=extras)
    spec = training_spec(df, config, extras, source=columns)
    fit, valid = config.fit_window, config.valid_window
    logger.info(
        "train: fitting on %s..%s, validating on %s..%s (%d days%s)",
        *map(format_day, (*fit, *valid)),
        valid[1] - valid[0] + 1,
        "" if valid_days is not None or valid_start else ": the default, a third of the window up to 7",
    )
    if extras:
        logger.info(
            "train: extra columns %s -> %d model inputs",
            ", ".join(f"{c.name} ({c.kind}, {c.encoding}{f' {c.width}' if c.kind == 'categorical' else ''})"
                      for c in spec.extra_columns),
            spec.n_features,
        )  # fmt: skip
    prepared = prepare_training_data(df, config, spec)
    model = train_model(prepared, config, spec, out)
    v = model.manifest["metrics"]["validation"]
    logger.info(
        "train: model=%s version=%s valid AP=%.4f AUC=%.4f CP@100=%.4f threshold=%.4f out=%s",
        model_type,
        model.version,
        v["average_precision"],
        v["roc_auc"],
        v["card_precision_at_100"],
        model.threshold,
        out,
    )
    return 0


def evaluate(
    model: str,
    data: str,
    columns: dict[str, str],
    start: str,
    end: str,
    k: int = 100,
    known_fraud_days: int = 28,
) -> int:
    """Print one JSON object of fair metrics on [start, end]."""
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    served = open_model(model)
    df = load_transactions(data, columns, require_label=True, extras=served.spec.extra_columns)
    if known_fraud_days < 0:
        raise ConfigError(f"--known-fraud-days must be >= 0, got {known_fraud_days}")
    start_day, end_day = parse_day(start, "--start"), parse_day(end, "--end")
    result = evaluate_window(served, df, start_day, end_day, k=k, known_fraud_days=known_fraud_days)
    print(json.dumps(result))
    return 0


def score(model: str, data: str, columns: dict[str, str], out: str, explain: bool = False) -> int:
    """Write ``tx_id,score`` for every input row (features use the file's whole history); ``explain``
    adds ``reason_1..reason_3``: the reasons' text of the rows at or above the alert threshold."""
    if Path(out).suffix.lower() != ".csv":
        raise ConfigError(f"--out: scores are written as CSV, got {out!r}")
    served = open_model(model)
    df = load_transactions(data, columns, require_label=False, extras=served.spec.extra_columns)
    if "label" not in df:
        logger.warning("score: no label column: terminal risk features will be 0 (training saw real risk)")
    features = features_for(served.spec, df)
    scores = score_frame(served, df, features)
    if len(scores) != len(df):
        raise DataError("internal: score count does not match rows")
    table = {"tx_id": df["tx_id"], "score": scores}
    if explain:
        table.update(reason_columns(served, features, scores))
    write_table(pd.DataFrame(table), out)
    print(f"scored {len(df)} rows -> {out}", file=sys.stderr)
    return 0


def reason_columns(served, features: np.ndarray, scores: np.ndarray, chunk: int = 4096) -> dict[str, list]:
    """``reason_1..reason_3``: per row at or above the model's alert threshold, its reasons' text
    (``monitoring.reasons``, the same as ``serve`` gives alerts); "" elsewhere. One score call per
    ``chunk`` alerted rows bounds the perturbed rows held at once."""
    from fraudlite.monitoring.reasons import MAX_REASONS, explain_rows

    rows = np.flatnonzero(scores >= served.model_dir.alert_threshold)
    reference, names = served.normalization()[0], served.spec.names
    columns = [[""] * len(scores) for _ in range(MAX_REASONS)]
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        explained = explain_rows(served.log_odds, features[idx], reference, names)
        for row, reasons in zip(idx.tolist(), explained, strict=True):
            for k, reason in enumerate(reasons):
                columns[k][row] = reason.text
    logger.info("score: %d rows at or above the alert threshold explained", len(rows))
    return {f"reason_{k + 1}": column for k, column in enumerate(columns)}


def features(
    data: str,
    columns: dict[str, str],
    out: str,
    engine: str = "local",
    model: str | None = None,
    delay_days: int = 7,
    memory_limit: int | None = None,
) -> int:
    """Write the model inputs of every row of ``data`` with tx_id (``data.feature_export``): the features of
    ``model``'s spec (its extra columns too), else the default spec with ``delay_days``."""
    from fraudlite.data.feature_export import export_features
    from fraudlite.data.out_of_core import DEFAULT_MEMORY_LIMIT
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.modeldir import ModelDir

    spec = ModelDir.load(model).spec if model else FeatureSpec(delay_days=delay_days)
    t0 = time.perf_counter()
    summary = export_features(
        data, spec, out, columns, engine=engine, memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "features: rows=%d features=%d engine=%s seconds=%.1f rate=%.0f rows/s out=%s",
        summary["rows"], summary["features"], engine, seconds, summary["rows"] / max(seconds, 1e-9), out,
    )  # fmt: skip
    return 0
