"""Training past memory (``train --out-of-core``): features on disk, a downsampled training set in memory.

1. The extra columns are fitted on the training window by a scan of their columns
   (``data.parquet_scan.fit_extras``), then every row's features go to an on-disk store
   (``data.out_of_core.build_feature_store``: exactly ``compute_features``, in bounded memory).
2. Two cheap passes over the store's per-row columns count the windows' rows and frauds; the negative
   rate ``r`` follows (:func:`choose_negative_rate`).
3. One pass over the features gathers the training sample (every fraud of the training window, each
   legit row with probability ``r``, decided by a hash of its position and the seed), all validation rows
   and the drift reference's sample, and streams every training-window row through the standardization
   statistics (``models.loop.RunningStats``, the same 65,536-row chunks as in memory).
4. The model is fitted on the sample with each kept legit row weighing ``1 / r`` in the loss (the fraud
   weight becomes ``r * sqrt(n_neg / n_pos)`` of the whole window, ``models.training.fit_arrays``), early
   stopping on the untouched validation window as in memory, then calibrated by Platt scaling on that
   window (``models.calibrate``): downsampling shifts the raw log-odds by about ``log r``, which the
   calibration refits, so calibrated probabilities stay right, and ranking metrics (AUC, AP) on a test
   window are unaffected beyond noise.

With ``r = 1`` (data whose sample fits) the model is the in-memory one, bit for bit (the tests check it).
Memory: the process base, one feature partition while building, then the sample, the validation rows and
the reference (``4 * n_features + 16`` bytes a row); the raw frame and the whole feature matrix never.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlite.data.feature_store import FeatureStore
from fraudlite.data.out_of_core import (
    BASE_BYTES,
    DEFAULT_MEMORY_LIMIT,
    IN_MEMORY_ROW_BYTES,
    Progress,
    build_feature_store,
)
from fraudlite.data.parquet_scan import count_rows, fit_extras, input_files, is_parquet_input
from fraudlite.data.transactions import format_day
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import ExtraColumn
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.models.calibrate import REFERENCE_ROWS
from fraudlite.models.training import TrainConfig, finish_model, fit_arrays

__all__ = [
    "DEFAULT_MAX_TRAIN_ROWS",
    "StreamConfig",
    "should_stream",
    "WindowCounts",
    "choose_negative_rate",
    "epoch_scale",
    "keep_legit",
    "Sample",
    "gather",
    "train_streamed",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TRAIN_ROWS = 2_000_000  # the default sample's cap: more rows add epoch time, not quality
STATS_CHUNK = 65_536  # = standardization_stats' chunk_rows: the same bits


@dataclass(frozen=True)
class StreamConfig:
    """``train --out-of-core``, ``--memory-limit`` (bytes), ``--negative-rate``, ``--features-dir``."""

    force: bool = False
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    negative_rate: float | None = None
    features_dir: str | None = None

    def __post_init__(self) -> None:
        if self.negative_rate is not None and not 0.0 < self.negative_rate <= 1.0:
            raise ConfigError(f"--negative-rate must be in (0, 1], got {self.negative_rate}")
        if self.memory_limit <= BASE_BYTES:
            raise ConfigError(
                f"--memory-limit must be above {BASE_BYTES / 2**20:,.0f} MiB (the process itself), "
                f"got {self.memory_limit / 2**20:,.0f} MiB"
            )


def should_stream(data: str | os.PathLike, config: StreamConfig) -> bool:
    """Out of core when asked, for a directory, or for a Parquet file whose in-memory training would need
    more than the memory limit (~1 KB a row); a CSV always trains in memory."""
    p = Path(data)
    if config.force or p.is_dir():
        return True
    if not is_parquet_input(p):
        return False
    rows = count_rows([p])
    if rows * IN_MEMORY_ROW_BYTES > config.memory_limit:
        logger.info(
            "train: %s rows need ~%.1f GB in memory, over --memory-limit %.1f GB: training out of core",
            f"{rows:,}", rows * IN_MEMORY_ROW_BYTES / 1e9, config.memory_limit / 1e9,
        )  # fmt: skip
        return True
    return False


@dataclass(frozen=True)
class WindowCounts:
    """Rows and frauds of the training (fit) and validation windows."""

    n_train: int
    n_train_fraud: int
    n_valid: int
    n_valid_fraud: int


def _row_bytes(n_features: int) -> int:
    return 4 * n_features + 16  # features, label, and the loop's index and permutation


def choose_negative_rate(
    counts: WindowCounts, n_features: int, memory_limit: int, negative_rate: float | None = None
) -> float:
    """The share of legit training rows to keep.

    Default: all of them if the training window fits, else as many as fit in the quarter of the memory
    budget left for the sample (``memory_limit`` minus the process base, minus validation and reference
    rows), and never more than ``DEFAULT_MAX_TRAIN_ROWS`` rows in all. Every fraud is always kept.

    Raises:
        ConfigError: the validation rows, or the frauds, or the sample of a given ``negative_rate``, do
            not fit in the limit.
    """
    row = _row_bytes(n_features)
    budget = memory_limit - BASE_BYTES
    fixed = counts.n_valid * row + min(counts.n_train, REFERENCE_ROWS) * 4 * n_features
    if fixed > budget // 2:
        raise ConfigError(
            f"--memory-limit {memory_limit / 2**30:.1f} GiB: the {counts.n_valid:,} validation rows alone take "
            f"{fixed / 2**20:,.0f} MiB; shorten the validation window (--valid-days) or raise the limit"
        )
    room = (budget - fixed) // 2 // row  # the other half: the loop's and calibration's temporaries
    n_legit = counts.n_train - counts.n_train_fraud
    if negative_rate is not None:
        need = counts.n_train_fraud + negative_rate * n_legit
        if need > room:
            raise ConfigError(
                f"--negative-rate {negative_rate:g} keeps ~{need:,.0f} training rows, {need * row / 2**20:,.0f} MiB: "
                f"over what --memory-limit {memory_limit / 2**30:.1f} GiB leaves ({room:,} rows); lower the rate"
            )
        return float(negative_rate)
    cap = min(room, DEFAULT_MAX_TRAIN_ROWS)
    if counts.n_train <= cap:
        return 1.0
    if counts.n_train_fraud >= cap:
        raise ConfigError(
            f"the {counts.n_train_fraud:,} frauds of the training window alone exceed the {cap:,} rows "
            f"--memory-limit leaves for training; raise the limit"
        )
    return (cap - counts.n_train_fraud) / n_legit


def epoch_scale(n_train: int, n_sampled: int) -> float:
    """How many passes over the sample make one epoch: ``min(n_train, DEFAULT_MAX_TRAIN_ROWS) / n_sampled``
    (>= 1). Downsampling a window that would fit anyway must not cut the optimizer's steps (measured on 1M
    rows: r = 0.2 with the same epochs lost 0.01 AP, with scaled ones none); a window above the cap trains
    on a cap-sized sample with the configured epochs."""
    return max(1.0, min(n_train, DEFAULT_MAX_TRAIN_ROWS) / max(n_sampled, 1))


_GOLDEN = 0x9E3779B97F4A7C15


def keep_legit(positions: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Whether each row position's legit row is kept at ``rate``: splitmix64 of (seed, position) as a
    uniform number below ``rate`` (the same rows whatever the block size)."""
    if rate >= 1.0:
        return np.ones(len(positions), dtype=bool)
    offset = np.uint64((seed * _GOLDEN + _GOLDEN) % 2**64)
    z = positions.astype(np.uint64) + offset
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < rate


def _windows(config: TrainConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    return config.fit_window, config.valid_window


def _count(store: FeatureStore, config: TrainConfig) -> WindowCounts:
    (fs, fe), (vs, ve) = _windows(config)
    n = [0, 0, 0, 0]
    first, last = math.inf, -math.inf
    for b in store.blocks(features=False):
        tr, va = (b.day >= fs) & (b.day <= fe), (b.day >= vs) & (b.day <= ve)
        n[0] += int(tr.sum())
        n[1] += int(b.label[tr].sum())
        n[2] += int(va.sum())
        n[3] += int(b.label[va].sum())
        first, last = min(first, int(b.day.min())), max(last, int(b.day.max()))
    for what, (start, end), rows, frauds in (("training window", (fs, fe), n[0], n[1]),
                                             ("validation window", (vs, ve), n[2], n[3])):  # fmt: skip
        if rows == 0:
            raise DataError(
                f"{what} {format_day(start)}..{format_day(end)} holds no transactions "
                f"(the data covers {format_day(first)}..{format_day(last)})"
            )
        if frauds in (0, rows):
            raise DataError(
                f"{what} {format_day(start)}..{format_day(end)} has a single class ({frauds} frauds in {rows} rows); "
                "widen the window"
            )
    return WindowCounts(*n)


@dataclass
class Sample:
    """What training holds in memory: the sample, the validation rows, the reference, the statistics."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    valid_frame: pd.DataFrame  # ts (the day's midnight), customer_id (a hash), label
    X_reference: np.ndarray
    stats: tuple[np.ndarray, np.ndarray]


class _Chunks:
    """Rows in, exact ``STATS_CHUNK``-row chunks out to a ``RunningStats``."""

    def __init__(self, stats) -> None:
        self.stats, self.pending, self.n = stats, [], 0

    def add(self, X: np.ndarray) -> None:
        self.pending.append(X)
        self.n += len(X)
        if self.n >= STATS_CHUNK:
            rows = np.concatenate(self.pending)
            cut = len(rows) - len(rows) % STATS_CHUNK
            for start in range(0, cut, STATS_CHUNK):
                self.stats.add(rows[start : start + STATS_CHUNK])
            self.pending, self.n = [rows[cut:]], len(rows) - cut

    def result(self):
        if self.n:
            self.stats.add(np.concatenate(self.pending))
        return self.stats.result()


def gather(store: FeatureStore, config: TrainConfig, counts: WindowCounts, rate: float, say) -> Sample:
    """One pass over the store: the training sample, the validation rows, the reference sample, stats."""
    from fraudlite.models.loop import RunningStats

    (fs, fe), (vs, ve) = _windows(config)
    n_keep = 0
    for b in store.blocks(features=False):
        tr = (b.day >= fs) & (b.day <= fe)
        keep = tr & ((b.label == 1) | keep_legit(np.arange(b.start, b.start + len(b.day)), rate, config.seed))
        n_keep += int(keep.sum())
    F = store.n_features
    X_train, y_train = np.empty((n_keep, F), np.float32), np.empty(n_keep, np.float32)
    X_valid, y_valid = np.empty((counts.n_valid, F), np.float32), np.empty(counts.n_valid, np.float32)
    v_day, v_customer = np.empty(counts.n_valid, np.int64), np.empty(counts.n_valid, np.int64)
    k = counts.n_train
    if k <= REFERENCE_ROWS:
        reference = np.arange(k)
    else:
        reference = np.sort(np.random.default_rng(0).choice(k, REFERENCE_ROWS, replace=False))
    X_ref = np.empty((len(reference), F), np.float32)
    stats = _Chunks(RunningStats(F))
    at = {"train": 0, "valid": 0, "rank": 0, "ref": 0}
    progress = Progress("gather", store.rows, say)
    for b in store.blocks():
        tr, va = (b.day >= fs) & (b.day <= fe), (b.day >= vs) & (b.day <= ve)
        rows = b.X[tr]
        stats.add(rows)
        lo, hi = at["rank"], at["rank"] + len(rows)
        hit = reference[np.searchsorted(reference, lo) : np.searchsorted(reference, hi)] - lo
        X_ref[at["ref"] : at["ref"] + len(hit)] = rows[hit]
        keep = (b.label[tr] == 1) | keep_legit(
            np.arange(b.start, b.start + len(b.day))[tr], rate, config.seed
        )
        m = int(keep.sum())
        X_train[at["train"] : at["train"] + m] = rows[keep]
        y_train[at["train"] : at["train"] + m] = b.label[tr][keep]
        v = slice(at["valid"], at["valid"] + int(va.sum()))
        X_valid[v], y_valid[v], v_day[v], v_customer[v] = b.X[va], b.label[va], b.day[va], b.customer[va]
        at["train"] += m
        at["valid"] = v.stop
        at["rank"], at["ref"] = hi, at["ref"] + len(hit)
        progress.tick(len(b.day))
    frame = pd.DataFrame(
        {"ts": v_day * SECONDS_PER_DAY, "customer_id": v_customer, "label": y_valid.astype(np.int8)}
    )
    return Sample(X_train, y_train, X_valid, y_valid, frame, X_ref, stats.result())


def train_streamed(
    data: str | os.PathLike,
    columns: dict[str, str] | None,
    config: TrainConfig,
    out: str | Path,
    extras: Sequence[ExtraColumn] = (),
    stream: StreamConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelDir:
    """Train ``config`` on a Parquet file or directory of any size (see module docstring).

    Raises:
        DataError: as ``load_transactions`` and ``prepare_training_data`` (file, column, rows, windows).
        ConfigError: a memory limit too small for the validation rows or the frauds, a bad negative rate.
    """
    stream = stream or StreamConfig()
    say = progress or (lambda msg: logger.info("train: %s", msg))
    started = time.perf_counter()
    fit_start, fit_end = config.fit_window
    fitted_extras = fit_extras(data, columns, extras, fit_start, fit_end)
    spec = FeatureSpec(delay_days=config.delay_days, extra_columns=fitted_extras)
    input_files(data)  # a DataError before any directory is made
    out = Path(out)
    keep_dir = stream.features_dir is not None
    if keep_dir:
        store_path = Path(stream.features_dir)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        store_path = Path(tempfile.mkdtemp(prefix=f".{out.name}.features-", dir=out.parent)) / "store"
    try:
        store = build_feature_store(data, spec, store_path, columns, True, stream.memory_limit)
        features_seconds = time.perf_counter() - started
        counts = _count(store, config)
        rate = choose_negative_rate(counts, spec.n_features, stream.memory_limit, stream.negative_rate)
        n_legit = counts.n_train - counts.n_train_fraud
        say(
            f"out of core: {store.rows:,} rows, features in {features_seconds:.0f} s; training window "
            f"{counts.n_train:,} rows ({counts.n_train_fraud:,} frauds): all frauds and {rate:.1%} of the "
            f"{n_legit:,} legit rows (negative rate {rate:.4g}: a kept legit row weighs {1 / rate:.3g} in the "
            f"loss); {counts.n_valid:,} validation rows"
        )
        sample = gather(store, config, counts, rate, say)
    finally:
        if not keep_dir:
            shutil.rmtree(store_path.parent, ignore_errors=True)
    y_frame_rows = np.ones(len(sample.y_valid), dtype=bool)
    scale = epoch_scale(counts.n_train, len(sample.y_train))
    if scale > 1:
        say(
            f"epochs and patience x{scale:.2f}: an epoch is {min(counts.n_train, DEFAULT_MAX_TRAIN_ROWS):,} rows' worth of steps"
        )
    fitted = fit_arrays(
        config, sample.X_train, sample.y_train, sample.X_valid, sample.y_valid, stats=sample.stats,
        negative_rate=rate, window_counts=(n_legit, counts.n_train_fraud), epoch_scale=scale,
        indicators=spec.indicator_inputs,
    )  # fmt: skip
    training = {
        "out_of_core": True,
        "negative_rate": round(rate, 6),
        "epoch_scale": round(scale, 4),
        "n_sampled": len(sample.y_train),
        "memory_limit": stream.memory_limit,
        "features_seconds": round(features_seconds, 2),
        "rows": store.rows,
    }
    return finish_model(
        fitted, config, spec, out, y_valid=sample.y_valid, X_reference=sample.X_reference,
        frame=sample.valid_frame, frame_rows=y_frame_rows, n_train=counts.n_train, started=started,
        manifest={"training": training},
    )  # fmt: skip
