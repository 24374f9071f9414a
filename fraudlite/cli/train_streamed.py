"""``train --out-of-core``: the flags of training past memory and its run (``models.streamed``)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parser is built for every command, serving too: nothing heavy at import
    from fraudlite.features.extras import ExtraColumn
    from fraudlite.models.streamed import StreamConfig
    from fraudlite.models.training import TrainConfig

__all__ = ["add_out_of_core_args", "stream_config", "train_out_of_core"]

logger = logging.getLogger(__name__)


def add_out_of_core_args(p: argparse.ArgumentParser) -> None:
    """The ``train`` flags of the out-of-core path."""
    p.add_argument(
        "--out-of-core",
        action="store_true",
        help="train in bounded memory: features computed partition by partition into an on-disk store, then "
        "all frauds and a --negative-rate share of the legit rows of the training window, each kept legit row "
        "weighing 1/rate in the loss (calibration and validation stay on the untouched validation window). "
        "Default: on when --data is a directory of Parquet files, or a Parquet file whose in-memory training "
        "would need more than --memory-limit (~1 KB a row); a CSV trains in memory",
    )
    p.add_argument(
        "--memory-limit",
        default="2G",
        help="memory the training process should stay under, e.g. 2G, 1500M (default 2G): sets the feature "
        "partitions and the default --negative-rate",
    )
    p.add_argument(
        "--negative-rate",
        type=float,
        help="out of core: share of legit training rows kept, in (0, 1] (default: all if they fit in a quarter "
        "of --memory-limit, else what fits, at most 2,000,000 training rows in all)",
    )
    p.add_argument(
        "--features-dir",
        help="out of core: keep the feature store here (features.npy in input order, day/label/customer per "
        "row) instead of a temporary directory beside --out",
    )


def stream_config(args: argparse.Namespace) -> StreamConfig:
    from fraudlite.data.out_of_core import parse_memory
    from fraudlite.models.streamed import StreamConfig

    return StreamConfig(
        force=bool(args.out_of_core),
        memory_limit=parse_memory(args.memory_limit),
        negative_rate=args.negative_rate,
        features_dir=args.features_dir,
    )


def train_out_of_core(
    data: str,
    columns: dict[str, str],
    config: TrainConfig,
    extras: tuple[ExtraColumn, ...],
    out: str,
    stream: StreamConfig,
) -> int:
    """``train`` on the out-of-core path; logs the split and the summary line as the in-memory one does."""
    from fraudlite.data.transactions import format_day
    from fraudlite.models.streamed import train_streamed

    fit, valid = config.fit_window, config.valid_window
    logger.info(
        "train: out of core, fitting on %s..%s, validating on %s..%s (%d days), memory limit %.1f GiB",
        *map(format_day, (*fit, *valid)), valid[1] - valid[0] + 1, stream.memory_limit / 2**30,
    )  # fmt: skip
    model = train_streamed(data, columns, config, out, extras, stream)
    v = model.manifest["metrics"]["validation"]
    logger.info(
        "train: model=%s version=%s valid AP=%.4f AUC=%.4f CP@100=%.4f threshold=%.4f negative rate=%.4g out=%s",
        config.model_type, model.version, v["average_precision"], v["roc_auc"], v["card_precision_at_100"],
        model.threshold, model.manifest["training"]["negative_rate"], out,
    )  # fmt: skip
    return 0
