"""Reading a Parquet file, or a directory of Parquet files, in bounded chunks of standardized columns.

The out-of-core path (``data.out_of_core``) never holds a whole table: it reads only the columns it needs,
batch by batch (pyarrow ``iter_batches``; a file's row groups bound what one read decodes), and turns each
batch into the standard columns exactly as ``data.transactions.load_transactions`` would (the same
timestamp, amount, label and extra-column rules: the converters are shared), in input order.

Input order of a directory: its ``*.parquet`` files (recursively, hidden ``.``/``_`` names skipped) sorted
by relative path, each in its own row order; ties in time are broken by this order, as in one file.
A bad value raises the same DataError as ``load_transactions``, prefixed with the file and the rows of
the batch it is in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlite.data.transactions import _extra_values, _parse_timestamps, _resolve_columns
from fraudlite.errors import DataError
from fraudlite.features.extras import ONEHOT_MAX, ExtraColumn, fit_extra_columns
from fraudlite.features.offline import amount_to_cents
from fraudlite.features.spec import SECONDS_PER_DAY

__all__ = [
    "is_parquet_input",
    "input_files",
    "count_rows",
    "Chunk",
    "scan",
    "id_hashes",
    "integer_ids",
    "duplicate_ids",
    "fit_extras",
    "row_groups",
    "read_row_group",
    "file_columns",
]


def is_parquet_input(path: str | os.PathLike) -> bool:
    """A Parquet file or a directory: what :func:`input_files` takes (a glob or a CSV is not)."""
    p = Path(path)
    return p.is_dir() or (p.suffix.lower() == ".parquet" and p.is_file())


def input_files(path: str | os.PathLike) -> list[Path]:
    """A ``.parquet`` file, or the ``*.parquet`` files under a directory in input order (see module doc)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*.parquet") if not any(part[0] in "._" for part in f.relative_to(p).parts)),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            raise DataError(f"{p}: a directory without .parquet files")
        return files
    if p.suffix.lower() != ".parquet":
        raise DataError(f"{p}: out-of-core input must be a .parquet file or a directory of them")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return [p]


def _parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise DataError(f"{path}: corrupt or unreadable Parquet ({str(e).splitlines()[0]})") from e


def count_rows(files: Sequence[Path]) -> int:
    """Rows of all files, from their footers (nothing else is read)."""
    return sum(_parquet(f).metadata.num_rows for f in files)


def id_hashes(values: pa.Array) -> np.ndarray:
    """Stable (process-independent) uint64 hashes of string ids (pandas' siphash with its fixed key)."""
    return pd.util.hash_pandas_object(
        pd.Series(pd.arrays.ArrowStringArray(values.cast(pa.large_string()))), index=False
    ).to_numpy()


@dataclass
class Chunk:
    """One batch of standardized columns, rows ``start .. start + len - 1`` of the input.

    ``customer`` / ``terminal`` are Arrow string arrays (ids as ``load_transactions`` makes them text);
    ``tx_key`` is a uint64 per row equal for equal ``tx_id`` (the integer itself for integer ids, else a
    64-bit hash of the text); ``label`` is None without a label column. ``core=False`` scans fill only
    ``ts`` and ``extras``.
    """

    start: int
    file: Path
    file_row: int
    ts: np.ndarray
    customer: pa.Array | None = None
    terminal: pa.Array | None = None
    amount_cents: np.ndarray | None = None
    label: np.ndarray | None = None
    tx_key: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)


def _text_ids(col: pa.Array, source: str, logical: str) -> pa.Array:
    """A non-null id column as text: strings as they are, anything else as pandas' ``astype(str)``."""
    if col.null_count:
        missing = col.is_null().to_numpy(zero_copy_only=False)
        first = ", ".join(str(i + 1) for i in np.flatnonzero(missing)[:5])
        raise DataError(
            f"column {source!r} ({logical}): empty values in {int(missing.sum())} row(s), first: {first}"
        )
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return pa.array(col.to_pandas().astype(str).to_numpy(), type=pa.large_string())


def _tx_keys(col: pa.Array, source: str, by_value: bool) -> np.ndarray:
    if by_value and not col.null_count:
        return col.to_numpy().astype(np.int64).view(np.uint64)
    return id_hashes(_text_ids(col, source, "tx_id"))


def duplicate_ids(files: Sequence[Path], columns: dict[str, str] | None, keys: np.ndarray) -> None:
    """Raise the DataError of duplicate ``tx_id`` values among the rows whose key is in ``keys`` (keys seen
    more than once); returns quietly when they were only 64-bit hash collisions of different ids."""
    columns = dict(columns or {})
    source, by_value = columns.get("tx_id", "tx_id"), integer_ids(files, columns)
    seen: dict[str, str] = {}
    dup: list[str] = []
    for path in files:
        file_row = 0
        for batch in _parquet(path).iter_batches(batch_size=262_144, columns=[source]):
            col = batch.column(0)
            hit = np.flatnonzero(np.isin(_tx_keys(col, source, by_value), keys))
            text = _text_ids(col, source, "tx_id").take(pa.array(hit)).to_pylist()
            for row, value in zip(hit.tolist(), text, strict=True):
                where = f"{path.name}:{file_row + row + 1}"
                if value in seen:
                    dup.append(f"{where} ({value!r}, first at {seen[value]})")
                else:
                    seen[value] = where
            file_row += batch.num_rows
    if dup:
        more = " ..." if len(dup) > 5 else ""
        raise DataError(
            f"column {source!r} (tx_id): duplicate ids in {len(dup)} row(s), first: {', '.join(dup[:5])}{more}"
        )


def _amount_cents(series: pd.Series, source: str) -> np.ndarray:
    amount = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
    for bad, what in ((~np.isfinite(amount), "missing or non-numeric"), (amount < 0, "negative")):
        if bad.any():
            first = ", ".join(f"{i + 1} ({series.iloc[i]!r})" for i in np.flatnonzero(bad)[:5])
            raise DataError(f"column {source!r} (amount): {what} amounts in rows {first}")
    return amount_to_cents(amount)


def _labels(series: pd.Series, source: str) -> np.ndarray:
    label = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isin(label, (0.0, 1.0))
    if bad.any():
        first = ", ".join(f"{i + 1} ({series.iloc[i]!r})" for i in np.flatnonzero(bad)[:5])
        raise DataError(f"column {source!r} (label): labels must be 0 or 1, got rows {first}")
    return label.astype(np.int8)


def integer_ids(files: Sequence[Path], columns: dict[str, str]) -> bool:
    """Whether every file's tx_id column is integer-typed (its values are then their own keys)."""
    source = columns.get("tx_id", "tx_id")
    for f in files:
        schema = _parquet(f).schema_arrow
        if source not in schema.names or not pa.types.is_integer(schema.field(source).type):
            return False
    return True


def scan(
    files: Sequence[Path],
    columns: dict[str, str] | None = None,
    require_label: bool = True,
    extras: Sequence[ExtraColumn] = (),
    batch_rows: int = 262_144,
    core: bool = True,
) -> Iterator[Chunk]:
    """Standardized chunks of every file, in input order (see module docstring).

    Args:
        files: from :func:`input_files`.
        columns: ``--columns`` (logical name -> the files' column).
        require_label: a missing ``label`` column is an error.
        extras: extra columns to read (canonical values in ``Chunk.extras``).
        batch_rows: rows per chunk at most.
        core: False reads only the timestamp and the extra columns (fitting the extras).

    Raises:
        DataError: like ``load_transactions``, naming the file and the batch's rows.
    """
    columns = dict(columns or {})
    by_value = core and integer_ids(files, columns)
    start = 0
    for path in files:
        pf = _parquet(path)
        cols, wanted, sources = file_columns(path, pf, columns, require_label, extras, core)
        file_row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=sources, use_pandas_metadata=False):
            yield _standardize_rows(batch, cols, wanted, extras, by_value, start, path, file_row)
            start += batch.num_rows
            file_row += batch.num_rows


def row_groups(files: Sequence[Path]) -> list[tuple[Path, int, int, int]]:
    """``(file, row group, first input row, first row in the file)`` of every row group, in input order
    (from the files' footers only): units that can be read on their own, e.g. one per Spark task."""
    out, start = [], 0
    for path in files:
        meta, file_row = _parquet(path).metadata, 0
        for g in range(meta.num_row_groups):
            out.append((path, g, start, file_row))
            n = meta.row_group(g).num_rows
            start, file_row = start + n, file_row + n
    return out


def read_row_group(
    path: Path,
    group: int,
    start: int,
    file_row: int,
    columns: dict[str, str] | None = None,
    require_label: bool = True,
    extras: Sequence[ExtraColumn] = (),
) -> tuple[Chunk, pa.Array]:
    """One unit of :func:`row_groups` standardized like :func:`scan`, and its tx ids as text.

    Raises:
        DataError: like ``scan``, naming the file and the rows.
    """
    pf = _parquet(path)
    cols, wanted, sources = file_columns(path, pf, dict(columns or {}), require_label, extras, True)
    batches = (
        pf.read_row_group(group, columns=sources, use_pandas_metadata=False).combine_chunks().to_batches()
    )
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=pf.schema_arrow)
    chunk = _standardize_rows(batch, cols, wanted, extras, False, start, path, file_row)
    return chunk, _text_ids(batch.column(cols["tx_id"]), cols["tx_id"], "tx_id")


def file_columns(
    path: Path, pf: pq.ParquetFile, columns: dict[str, str], require_label: bool, extras, core: bool
) -> tuple[dict[str, str], list[str], list[str]]:
    """The logical -> source mapping of one file, the logical columns to read and their sources."""
    try:
        cols = _resolve_columns(
            pd.DataFrame(columns=pf.schema_arrow.names), columns, require_label, [c.name for c in extras]
        )
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
    wanted = ["timestamp", *(("tx_id", "customer_id", "terminal_id", "amount") if core else ())]
    if core and "label" in cols:
        wanted.append("label")
    wanted += [c.name for c in extras]
    return cols, wanted, list(dict.fromkeys(cols[w] for w in wanted))


def _standardize_rows(
    batch, cols, wanted, extras, by_value: bool, start: int, path: Path, file_row: int
) -> Chunk:
    """``_standardize`` with the file and its rows named in any DataError."""
    try:
        return _standardize(batch, cols, wanted, extras, by_value, start, path, file_row)
    except DataError as e:
        n = batch.num_rows
        raise DataError(
            f"{path} (rows {file_row + 1}..{file_row + n} of the file, counted there): {e}"
        ) from e


def _standardize(
    batch: pa.RecordBatch,
    cols: dict[str, str],
    wanted: list[str],
    extras: Sequence[ExtraColumn],
    by_value: bool,
    start: int,
    path: Path,
    file_row: int,
) -> Chunk:
    def series(logical: str) -> pd.Series:
        return batch.column(cols[logical]).to_pandas()

    chunk = Chunk(start, path, file_row, _parse_timestamps(series("timestamp"), cols["timestamp"]))
    if "tx_id" in wanted:
        chunk.tx_key = _tx_keys(batch.column(cols["tx_id"]), cols["tx_id"], by_value)
        chunk.customer = _text_ids(batch.column(cols["customer_id"]), cols["customer_id"], "customer_id")
        chunk.terminal = _text_ids(batch.column(cols["terminal_id"]), cols["terminal_id"], "terminal_id")
        chunk.amount_cents = _amount_cents(series("amount"), cols["amount"])
    if "label" in wanted:
        chunk.label = _labels(series("label"), cols["label"])
    for c in extras:
        chunk.extras[c.name] = _extra_values(series(c.name), c, cols[c.name])
    return chunk


def fit_extras(
    source: str | os.PathLike,
    columns: dict[str, str] | None,
    extras: Sequence[ExtraColumn],
    start_day: int,
    end_day: int,
    batch_rows: int = 262_144,
) -> tuple[ExtraColumn, ...]:
    """``fit_extra_columns`` on the rows of days [start_day, end_day], reading only the timestamp and the
    extra columns (numeric: the training values, 8 bytes a row, for the exact median; the others: their
    distinct values)."""
    if not extras:
        return ()
    kept: dict[str, list] = {c.name: [] for c in extras}
    distinct: dict[str, set] = {c.name: set() for c in extras}
    n = 0
    for chunk in scan(input_files(source), columns, False, extras, batch_rows, core=False):
        day = chunk.ts // SECONDS_PER_DAY
        rows = (day >= start_day) & (day <= end_day)
        n += int(rows.sum())
        for c in extras:
            v = chunk.extras[c.name][rows]
            if c.kind == "numeric":
                kept[c.name].append(v[~np.isnan(v)])
            elif len(distinct[c.name]) <= ONEHOT_MAX + 1:
                distinct[c.name].update(np.unique(v).tolist())
    if n == 0:
        raise DataError(f"{source}: the training window holds no transactions")
    values = {
        c.name: np.concatenate(kept[c.name])
        if c.kind == "numeric"
        else np.array(sorted(distinct[c.name]), dtype=object if c.kind == "categorical" else np.float64)
        for c in extras
    }
    return fit_extra_columns(extras, values, columns)
