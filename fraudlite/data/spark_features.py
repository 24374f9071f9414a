"""``features --engine spark``: the offline feature kernels run by Apache Spark.

``compute_features`` (``fraudlite.features.offline``) is a row block, a customer block, a terminal block
and the extra columns. A customer's values depend only on that customer's rows ordered by (time, input
position), a terminal's only on that terminal's rows and labels, the rest on each row alone. So Spark
runs the very same numpy kernels on groups that hold whole entities:

* the input: one task per Parquet row group (``scan_frame``: ``parquet_scan.read_row_group``, the local
  path's standardization and errors; the driver reads footers only), or a CSV read by the driver;
* ``groupBy(customer bucket).applyInPandas(customer_block)``: each group holds every row of its
  customers, with their input position (``pos``) to break ties in time;
* ``groupBy(terminal bucket).applyInPandas(terminal_block)``, with the labels;
* ``mapInPandas(row_block + encode_extras)`` over any batches;

joined on ``pos`` and written by Spark in input order. A bucket is ``pmod(xxhash64(id), buckets)``: many
entities per group, so that the Python call per group stays cheap however many customers there are
(``buckets=None`` groups by the id itself). Results are those of the local path bit for bit (float64
kernels, float32 at the end).

The cluster is Spark's own business: ``spark_session`` is ``SparkSession.builder.getOrCreate()``, so
``spark.master`` and the rest come from a session already running, ``spark-defaults.conf``
(``SPARK_CONF_DIR``) or ``PYSPARK_SUBMIT_ARGS`` (local mode when none says otherwise). Executors need
fraudlite installed (the UDFs call this module's functions) and run ``PYSPARK_PYTHON`` (default: this
interpreter); input files and the output path must be where every executor can reach them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from fraudlite.data.parquet_scan import (
    count_rows,
    file_columns,
    input_files,
    is_parquet_input,
    read_row_group,
    row_groups,
)
from fraudlite.data.transactions import load_transactions
from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import encode_extras
from fraudlite.features.offline import (
    TransactionArrays,
    amount_to_cents,
    block_names,
    customer_block,
    row_block,
    terminal_block,
)
from fraudlite.features.spec import FeatureSpec

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, GroupedData, SparkSession

__all__ = [
    "POS",
    "ROWS_PER_GROUP",
    "spark_session",
    "scan_frame",
    "spark_frame",
    "feature_frame",
    "spark_features",
]

logger = logging.getLogger(__name__)

#: The input position of a row (0-based): ties in time keep it, and the result is put back in it.
POS = "pos"
#: About this many rows per customer (terminal) group, at least two groups per core.
ROWS_PER_GROUP = 250_000
# pyspark 4.x warns that pandas 3 is "not yet fully supported"; the UDFs use plain numeric and text
# columns, which the equality tests check.
_PANDAS_WARNING = "PySpark does not yet fully support pandas"


def spark_session(app_name: str = "fraudlite-features") -> SparkSession:
    """The active SparkSession, or a new one from the usual Spark settings (see module docstring).

    Raises:
        ConfigError: pyspark is not installed, or Spark cannot start (no Java 17+, bad settings).
    """
    warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
    # Executors run this interpreter unless told otherwise: it has fraudlite, numpy and pyarrow.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise ConfigError(
            f"--engine spark needs pyspark ({e}); install it with: pip install 'fraudlite[spark]'"
        ) from e
    try:
        return SparkSession.builder.appName(app_name).getOrCreate()
    except Exception as e:
        if type(e).__module__.startswith(("pyspark", "py4j")) or isinstance(e, OSError):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                f"--engine spark: Spark did not start ({first}); it needs Java 17 or 21 (make tools installs "
                "it) and valid Spark settings"
            ) from e
        raise


def _extra_column(j: int) -> str:
    """The Spark name of the j-th extra column (a logical name may hold dots, which Spark reads as paths)."""
    return f"x{j}"


def _extra_dtype(kind: str) -> type:
    return object if kind == "categorical" else np.float64


def _input_schema(spec: FeatureSpec, has_label: bool) -> str:
    label = ", label byte" if has_label else ""
    extras = "".join(
        f", {_extra_column(j)} {'string' if c.kind == 'categorical' else 'double'}"
        for j, c in enumerate(spec.extra_columns)
    )
    return f"{POS} long, tx_id string, ts long, customer_id string, terminal_id string, cents long{label}{extras}"


def _input_columns(
    spec: FeatureSpec, start: int, tx_id, ts, customer_id, terminal_id, cents, label, extras
) -> dict[str, np.ndarray]:
    """The input frame's columns (``_input_schema``) for rows ``start ..`` of the input."""
    out = {
        POS: np.arange(start, start + len(ts), dtype=np.int64),
        "tx_id": np.asarray(tx_id, dtype=object),
        "ts": np.asarray(ts, dtype=np.int64),
        "customer_id": np.asarray(customer_id, dtype=object),
        "terminal_id": np.asarray(terminal_id, dtype=object),
        "cents": np.asarray(cents, dtype=np.int64),
    }
    if label is not None:
        out["label"] = np.asarray(label, dtype=np.int8)
    for j, c in enumerate(spec.extra_columns):
        out[_extra_column(j)] = np.asarray(extras[c.name]).astype(_extra_dtype(c.kind))
    return out


def scan_frame(
    spark: SparkSession, spec: FeatureSpec, source, columns: dict[str, str] | None = None
) -> tuple[DataFrame, int]:
    """A Parquet file or directory read by the executors, one task per row group, each standardized by
    ``parquet_scan.read_row_group`` (the local path's rules and errors); the driver reads footers only.
    Returns the input frame (``_input_schema``) and its row count. The files must be where every executor
    can read them (a shared or network file system)."""
    files = input_files(source)
    units = row_groups(files)
    cols = dict(columns or {})
    has_label = cols.get("label", "label") in pq.read_schema(files[0]).names
    extras = spec.extra_columns
    for f in files:  # a missing column is named here, before any task runs
        file_columns(f, pq.ParquetFile(f), cols, has_label, extras, True)
    rows = count_rows(files)

    def read_udf(batches):
        import pandas as pd

        for batch in batches:
            for path, group, start, file_row in zip(
                batch["path"], batch["group"], batch["start"], batch["file_row"], strict=True
            ):
                c, tx_id = read_row_group(
                    Path(path), int(group), int(start), int(file_row), cols, has_label, extras
                )
                yield pd.DataFrame(
                    _input_columns(
                        spec, c.start, tx_id.to_numpy(zero_copy_only=False), c.ts,
                        c.customer.to_numpy(zero_copy_only=False), c.terminal.to_numpy(zero_copy_only=False),
                        c.amount_cents, c.label, c.extras,
                    )
                )  # fmt: skip

    table = spark.createDataFrame(
        [(str(p), g, start, file_row) for p, g, start, file_row in units],
        "path string, group int, start long, file_row long",
    )
    frame = table.repartition(max(1, len(units))).mapInPandas(read_udf, _input_schema(spec, has_label))
    return frame, rows


def spark_frame(spark: SparkSession, spec: FeatureSpec, df: pd.DataFrame) -> DataFrame:
    """A standard frame held by the driver (a CSV's) as the input frame (``_input_schema``)."""
    import pandas as pd

    columns = _input_columns(
        spec, 0, df["tx_id"], df["ts"], df["customer_id"], df["terminal_id"],
        amount_to_cents(df["amount"].to_numpy(dtype=np.float64)), df["label"] if "label" in df else None,
        {c.name: df[c.name].to_numpy() for c in spec.extra_columns},
    )  # fmt: skip
    return spark.createDataFrame(pd.DataFrame(columns), schema=_input_schema(spec, "label" in df))


def _schema(spec: FeatureSpec, names: list[str]) -> str:
    index = {name: i for i, name in enumerate(spec.names)}
    return ", ".join([f"{POS} long"] + [f"f{index[name]} double" for name in names])


def _result(spec: FeatureSpec, pos: np.ndarray, names: list[str], out: dict[str, np.ndarray]) -> pd.DataFrame:
    import pandas as pd

    index = {name: i for i, name in enumerate(spec.names)}
    return pd.DataFrame({POS: pos, **{f"f{index[name]}": out[name] for name in names}})


def _arrays(spec: FeatureSpec, group: pd.DataFrame, customers: bool) -> TransactionArrays:
    """A group's rows as the kernels' arrays (amounts already in cents; the customer codes only when
    ``customers``)."""
    n = len(group)
    tx = TransactionArrays.from_columns(
        spec,
        group["ts"].to_numpy(dtype=np.int64),
        group["customer_id"].to_numpy(dtype=object) if customers else np.zeros(n, dtype=np.int64),
        group["terminal_id"].to_numpy(dtype=object),
        np.zeros(n),
        group["label"].to_numpy(dtype=np.int8) if "label" in group else None,
    )
    return replace(tx, amount_cents=group["cents"].to_numpy(dtype=np.int64))


def _customer_group(spec: FeatureSpec, group: pd.DataFrame) -> pd.DataFrame:
    """One group of whole customers -> their customer features (the same kernel as the local path)."""
    pos = group[POS].to_numpy(dtype=np.int64)
    return _result(
        spec, pos, block_names(spec)[1], customer_block(spec, _arrays(spec, group, True), position=pos)
    )


def _terminal_group(spec: FeatureSpec, group: pd.DataFrame) -> pd.DataFrame:
    """One group of whole terminals -> their terminal features (window counts and label risk)."""
    pos = group[POS].to_numpy(dtype=np.int64)
    return _result(spec, pos, block_names(spec)[2], terminal_block(spec, _arrays(spec, group, False)))


def _row_batches(spec: FeatureSpec, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Any batches of rows -> tx_id, label, their row features and encoded extra columns."""
    extra_names = spec.names[spec.n_builtin_features :]
    for batch in batches:
        n = len(batch)
        zeros = np.zeros(n, dtype=np.int64)
        tx = TransactionArrays(
            ts=batch["ts"].to_numpy(dtype=np.int64),
            customer=zeros,
            terminal=zeros,
            terminal_bit=zeros,
            amount_cents=batch["cents"].to_numpy(dtype=np.int64),
        )
        out = row_block(spec, tx)
        if spec.extra_columns:
            values = {
                c.name: batch[_extra_column(j)].to_numpy(dtype=_extra_dtype(c.kind))
                for j, c in enumerate(spec.extra_columns)
            }
            encoded = encode_extras(spec.extra_columns, values, n)
            out.update({name: encoded[:, i] for i, name in enumerate(extra_names)})
        result = _result(spec, batch[POS].to_numpy(dtype=np.int64), block_names(spec)[0] + extra_names, out)
        result.insert(1, "tx_id", batch["tx_id"].to_numpy(dtype=object))
        if "label" in batch:
            result["label"] = batch["label"].to_numpy(dtype=np.int8)
        yield result


def _grouped(frame: DataFrame, key: str, buckets: int | None) -> GroupedData:
    from pyspark.sql import functions as F

    if buckets is None:
        return frame.groupBy(key)
    return frame.withColumn("_group", F.pmod(F.xxhash64(key), F.lit(buckets))).groupBy("_group")


def feature_frame(frame: DataFrame, spec: FeatureSpec, buckets: int | None) -> DataFrame:
    """The input frame (``_input_schema``) -> ``pos``, ``tx_id``, the features named as in
    ``spec.names`` (float32, in its order) and ``label`` when the input has one; one row per input row,
    in no particular order.

    Args:
        buckets: the number of customer (and terminal) groups; None: one group per customer (terminal).
    """
    from pyspark.sql import functions as F

    row_names, customer_names, terminal_names = block_names(spec)
    has_label = "label" in frame.columns

    # No type hints on these three: pyspark reads a UDF's kind from them (a grouped map without).
    def customers_udf(group):
        return _customer_group(spec, group)

    def terminals_udf(group):
        return _terminal_group(spec, group)

    def rows_udf(batches):
        return _row_batches(spec, batches)

    base = [POS, "ts", "terminal_id", "cents"]
    customers = _grouped(frame.select(*base, "customer_id"), "customer_id", buckets).applyInPandas(
        customers_udf, _schema(spec, customer_names)
    )
    labels = ["label"] if has_label else []
    terminals = _grouped(frame.select(*base, *labels), "terminal_id", buckets).applyInPandas(
        terminals_udf, _schema(spec, terminal_names)
    )
    row_schema = _schema(spec, row_names + spec.names[spec.n_builtin_features :])
    row_schema = row_schema.replace(f"{POS} long", f"{POS} long, tx_id string", 1) + (
        ", label byte" if has_label else ""
    )
    rows = frame.mapInPandas(rows_udf, row_schema)
    joined = rows.join(customers, POS).join(terminals, POS)
    named = [F.col(f"f{i}").cast("float").alias(name) for i, name in enumerate(spec.names)]
    return joined.select(POS, "tx_id", *named, *labels)


def spark_features(
    spark: SparkSession,
    spec: FeatureSpec,
    source,
    out: Path,
    columns: dict[str, str] | None = None,
    buckets: int | None = 0,
) -> int:
    """Every feature of ``spec`` for every row of ``source`` computed by Spark and written by it to the
    directory ``out`` (Parquet parts in input order: ``tx_id``, the features, ``label``); equal to the local
    engine (``data.feature_export``). Returns the row count.

    Args:
        source: a Parquet file or directory (read by the executors, see ``scan_frame``), or a CSV or glob (read by
            the driver).
        buckets: customer (terminal) groups; 0 (default): about ``ROWS_PER_GROUP`` rows per group and at
            least two groups per core of the session; None: one group per customer (terminal).
    """
    started = time.perf_counter()
    if not is_parquet_input(source):  # a CSV or a glob: the driver reads it
        df = load_transactions(source, columns, extras=spec.extra_columns)
        frame, n = spark_frame(spark, spec, df), len(df)
        del df
    else:
        frame, n = scan_frame(spark, spec, source, columns)
    if buckets == 0:
        buckets = max(2 * spark.sparkContext.defaultParallelism, math.ceil(n / ROWS_PER_GROUP))
    logger.info(
        "spark: %d rows, %s, master %s",
        n,
        "one group per customer and per terminal" if buckets is None else f"{buckets} groups of each",
        spark.sparkContext.master,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
        result = feature_frame(frame, spec, buckets).orderBy(POS)
        try:
            result.drop(POS).write.mode("error").parquet(str(out))
        except Exception as e:
            bad = re.search(r"fraudlite\.errors\.DataError: (.*)", str(e))
            if bad is None:
                raise
            raise DataError(bad.group(1)) from None  # a bad value, found by a task: the line it raised
    logger.info("spark: %d x %d features in %.1fs", n, spec.n_features, time.perf_counter() - started)
    return n
