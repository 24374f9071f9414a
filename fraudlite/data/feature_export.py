"""``fraudlite features``: the model inputs of every transaction as a Parquet file, by either engine.

The file has ``tx_id`` (text), one float32 column per feature in ``spec.names`` order and, when the input
has labels, ``label`` (int8); rows in input order. Both engines compute the very same kernels
(``features.offline``), so they agree to float32 rounding:

* ``local``: a CSV (or a glob) in memory (``compute_features``); Parquet (a file or a directory) out of core through
  a feature store (``data.out_of_core``) in ``memory_limit``, its blocks written as row groups with the
  tx ids read back from the files in the same order;
* ``spark``: ``data.spark_features`` on the session the usual Spark settings give; the executors read the
  Parquet row groups and Spark writes ``out`` as its usual directory of Parquet parts (in input order:
  ``pyarrow.parquet.read_table`` or ``pandas.read_parquet`` read it as one table).

The output is written beside its destination and renamed into place: an error leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlite.data.out_of_core import DEFAULT_MEMORY_LIMIT, build_feature_store
from fraudlite.data.parquet_scan import input_files, is_parquet_input
from fraudlite.data.transactions import load_transactions, to_arrays
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.offline import compute_features
from fraudlite.features.spec import FeatureSpec

__all__ = ["ENGINES", "export_features", "feature_table"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "spark")


def feature_table(spec: FeatureSpec, tx_id, X: np.ndarray, label: np.ndarray | None) -> pa.Table:
    """One block of the output: ``tx_id``, the features by name, ``label`` if given."""
    columns = {"tx_id": pa.array(tx_id, type=pa.string())}
    columns.update({name: pa.array(X[:, i]) for i, name in enumerate(spec.names)})
    if label is not None:
        columns["label"] = pa.array(np.asarray(label, dtype=np.int8))
    return pa.table(columns)


def export_features(
    data: str | os.PathLike,
    spec: FeatureSpec,
    out: str | os.PathLike,
    columns: dict[str, str] | None = None,
    engine: str = "local",
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> dict:
    """Write the features of every row of ``data`` to the Parquet file ``out``; returns a summary.

    Raises:
        DataError: as ``load_transactions`` (column and rows named).
        ConfigError: an unknown engine, Spark that cannot start or is not installed.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out must be a .parquet file, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        target = tmp / out.name
        if engine == "spark":
            summary = _spark(data, spec, target, columns)
        elif is_parquet_input(data):
            summary = _out_of_core(data, spec, target, columns, memory_limit, tmp)
        else:
            summary = _in_memory(data, spec, target, columns)
        _replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "out": str(out), "engine": engine, "features": spec.n_features}


def _replace(target: Path, out: Path) -> None:
    """Move the finished output into place, over an earlier one (a file, or Spark's directory)."""
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(target, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(target, out)


def _in_memory(data, spec: FeatureSpec, target: Path, columns) -> dict:
    df = load_transactions(data, columns, extras=spec.extra_columns)
    X = compute_features(spec, to_arrays(spec, df))
    label = df["label"].to_numpy() if "label" in df else None
    pq.write_table(feature_table(spec, df["tx_id"].to_numpy(), X, label), target)
    return {"rows": len(df)}


def _out_of_core(data, spec: FeatureSpec, target: Path, columns, memory_limit: int, tmp: Path) -> dict:
    store = build_feature_store(
        data, spec, tmp / "store", columns, require_label=False, memory_limit=memory_limit
    )
    ids = _TxIds(input_files(data), (columns or {}).get("tx_id", "tx_id"))
    empty = np.zeros((0, spec.n_features), np.float32)
    schema = feature_table(spec, [], empty, np.zeros(0, np.int8) if store.has_label else None).schema
    rows = 0
    with pq.ParquetWriter(target, schema) as writer:
        for block in store.blocks():
            writer.write_table(feature_table(spec, ids.take(len(block.day)), block.X, block.label))
            rows += len(block.day)
    if not ids.exhausted() or rows != store.rows:
        raise DataError(f"internal: {rows:,} feature rows for {store.rows:,} transactions")
    return {"rows": rows}


class _TxIds:
    """The tx ids of every file, in input order, handed out ``n`` at a time as text arrays."""

    def __init__(self, files: list[Path], source: str) -> None:
        self._batches = (
            batch.column(0).cast(pa.string())
            for f in files
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=[source])
        )
        self._rest: pa.Array | None = None

    def take(self, n: int) -> pa.Array:
        parts, have = [], 0
        while have < n:
            chunk = self._rest if self._rest is not None else next(self._batches, None)
            self._rest = None
            if chunk is None:
                raise DataError(f"internal: fewer tx ids than feature rows ({have:,} < {n:,})")
            parts.append(chunk)
            have += len(chunk)
        joined = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
        if have > n:
            self._rest = joined.slice(n)
        return joined.slice(0, n)

    def exhausted(self) -> bool:
        return self._rest is None and next(self._batches, None) is None


def _spark(data, spec: FeatureSpec, target: Path, columns) -> dict:
    from fraudlite.data.spark_features import spark_features, spark_session

    spark = spark_session()
    rows = spark_features(spark, spec, data, target, columns)
    return {"rows": rows, "spark_master": spark.sparkContext.master}
