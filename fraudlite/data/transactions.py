"""Loading and validating transaction files (CSV / Parquet, or a directory / glob of Parquet) into one
standard frame.

The standard frame has columns ``tx_id`` (str), ``ts`` (int64 UTC epoch seconds), ``customer_id`` (str),
``terminal_id`` (str), ``amount`` (float64), when present ``label`` (int8) and, for each extra column asked
for (``features.extras``), a column under its logical name holding its canonical values, in file order. Every
problem is reported as a DataError naming the column and the first offending rows (1-based data rows,
the header not counted).

A directory (or glob) of Parquet files, as warehouse exports and the label store write them, reads as one
table: its files sorted by path (input order), each in its row order; Hive partitions (``day=2026-01-01/``)
become columns; files and folders whose names start with ``.`` or ``_`` are skipped (``_SUCCESS``); only
the columns needed are read, and they must have one type in every file.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import ExtraColumn, canonical_values
from fraudlite.features.offline import TransactionArrays
from fraudlite.features.spec import SECONDS_PER_DAY, FeatureSpec

__all__ = [
    "LOGICAL_COLUMNS",
    "read_table",
    "write_table",
    "load_transactions",
    "parse_day",
    "day_of",
    "window_mask",
    "to_arrays",
]

LOGICAL_COLUMNS = ("tx_id", "timestamp", "customer_id", "terminal_id", "amount", "label")
_SHOWN = 5
_GLOB = frozenset("*?[")


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _parquet_files(path: str | os.PathLike) -> tuple[Path, list[Path]] | None:
    """A directory or glob of Parquet files -> (the base for Hive partitions, its files sorted by path);
    None for anything else (a single file's path). DataError when it holds no Parquet file."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() == ".parquet")
        files = [f for f in files if not _hidden(f.relative_to(p))]
        if not files:
            what = "empty directory" if not any(p.iterdir()) else "a directory without Parquet files"
            raise DataError(f"{p}: {what} (reads files named *.parquet; a glob such as {p}/* reads others)")
        return p, files
    text = str(path)
    if p.exists() or not _GLOB & set(text):
        return None
    parts = Path(text).parts
    base = Path(*parts[: next(i for i, part in enumerate(parts) if _GLOB & set(part))] or ["."])
    files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    files = [f for f in files if not _hidden(f.relative_to(base) if f.is_relative_to(base) else Path(f.name))]
    if not files:
        raise DataError(f"{text}: the glob matches no files")
    return base, files


@contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """pyarrow's own errors (and OS / value errors) for a corrupt file -> DataError naming ``path``."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        if type(e).__module__.startswith("pyarrow") or isinstance(e, OSError | ValueError):
            raise DataError(f"{path}: corrupt or unreadable Parquet ({str(e).splitlines()[0]})") from e
        raise


def _open_dataset(base: Path, files: list[Path]):
    """The files as one ``pyarrow.dataset`` (the first file's schema, then its Hive partitions')."""
    import pyarrow.dataset as ds

    with _reading(files[0]):
        return ds.dataset([str(f) for f in files], format="parquet", partitioning="hive",
                          partition_base_dir=str(base))  # fmt: skip


def _read_dataset(
    path: str | os.PathLike, base: Path, files: list[Path], columns: Sequence[str] | None
) -> pd.DataFrame:
    """The files as one frame (``columns`` only, all when None); DataError naming the file at fault."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = _open_dataset(base, files)
    partitions = {
        part.partition("=")[0]
        for f in files
        for part in (f.relative_to(base) if f.is_relative_to(base) else f).parent.parts
        if "=" in part
    }
    wanted = list(dataset.schema.names if columns is None else columns)
    first: dict[str, tuple[Path, pa.DataType]] = {}
    for f in files:
        with _reading(f):
            schema = pq.read_schema(f)
        for name in wanted:
            if name in partitions:
                continue
            if name not in schema.names:
                raise DataError(f"{path}: mixed schemas: {f} has no column {name!r} (it is in {files[0]})")
            seen = first.setdefault(name, (f, schema.field(name).type))
            if seen[1] != schema.field(name).type:
                raise DataError(
                    f"{path}: mixed schemas: column {name!r} is {seen[1]} in {seen[0]} but "
                    f"{schema.field(name).type} in {f}"
                )
    with _reading(path):
        table = dataset.to_table(columns=wanted)
    decoded = [
        c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.itercolumns()
    ]
    return pa.table(decoded, names=table.column_names).to_pandas()


def read_table(
    path: str | os.PathLike, text_columns: Sequence[str] = (), columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a .csv or .parquet file (by extension) as it is (a CSV's ids and ``text_columns`` as text), or
    a directory / glob of Parquet files as one table (see module docstring; ``columns`` only, if given)."""
    source = _parquet_files(path)
    if source is not None:
        return _read_dataset(path, *source, columns)
    p = Path(path)
    if p.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(
            f"{p}: unsupported file type {p.suffix!r} (use .csv, .parquet or a directory / glob of Parquet)"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        if p.suffix.lower() == ".csv":
            text = dict.fromkeys(("tx_id", "customer_id", "terminal_id", *text_columns), str)
            return pd.read_csv(p, dtype=text, low_memory=False)
        return pd.read_parquet(p)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot be read as {p.suffix[1:].upper()} ({str(e).splitlines()[0]})") from e
    except Exception as e:  # pyarrow raises its own types for corrupt files
        if type(e).__module__.startswith("pyarrow"):
            raise DataError(f"{p}: corrupt or unreadable Parquet ({str(e).splitlines()[0]})") from e
        raise


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write .csv or .parquet atomically (temporary file in the same directory, then rename)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"{p}: unsupported output type {p.suffix!r} (use .csv or .parquet)")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rows(mask: np.ndarray, values: pd.Series | None = None) -> str:
    idx = np.flatnonzero(mask)[:_SHOWN]
    if values is None:
        shown = ", ".join(str(i + 1) for i in idx)
    else:
        shown = ", ".join(f"{i + 1} ({values.iloc[i]!r})" for i in idx)
    more = " ..." if mask.sum() > _SHOWN else ""
    return f"{int(mask.sum())} row(s), first: {shown}{more}"


def _resolve_columns(
    available: Sequence[str],
    columns: dict[str, str] | None,
    require_label: bool,
    extra_names: Sequence[str] = (),
) -> dict[str, str]:
    columns = dict(columns or {})
    known = (*LOGICAL_COLUMNS, *extra_names)
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise ConfigError(f"--columns: unknown logical column(s) {unknown}; known: {', '.join(known)}")
    resolved = {}
    for logical in known:
        source = columns.get(logical, logical)
        if source in available:
            resolved[logical] = source
        elif logical in columns:
            raise DataError(
                f"column {source!r} (mapped from {logical!r} by --columns) is not in the file; "
                f"the file has: {', '.join(map(str, available))}"
            )
        elif logical != "label" or require_label:
            raise DataError(
                f"missing column {logical!r}; the file has: {', '.join(map(str, available))} "
                f"(map yours with --columns {logical}=YOUR_COLUMN)"
            )
    return resolved


def _parse_timestamps(col: pd.Series, name: str) -> np.ndarray:
    """Datetime strings, datetime columns or epoch numbers (seconds or milliseconds) -> epoch seconds."""
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = pd.to_datetime(col, utc=True)
        bad = ts.isna().to_numpy()
    elif pd.api.types.is_numeric_dtype(col):
        num = pd.to_numeric(col, errors="coerce").astype("float64")
        bad = ~np.isfinite(num.to_numpy())
        unit = "ms" if np.nanmedian(np.abs(num.to_numpy())) > 1e11 else "s"
        ts = pd.to_datetime(num.where(~bad), unit=unit, utc=True)
    else:
        text = col.astype("string")
        ts = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        bad = ts.isna().to_numpy()
        if bad.any() and not bad.all():
            retry = pd.to_datetime(text[bad], utc=True, errors="coerce", format="mixed")
            ts = ts.copy()
            ts[bad] = retry
            bad = ts.isna().to_numpy()
    if bad.any():
        raise DataError(f"column {name!r}: unparsable timestamps in {_rows(bad, col)}")
    seconds = ts.to_numpy(dtype="datetime64[s]").astype(np.int64)
    return seconds


def _extra_values(col: pd.Series, column: ExtraColumn, source: str) -> np.ndarray:
    """A file's column -> canonical values of an extra column; DataError naming the bad rows."""
    raw = col.to_numpy(dtype=object)
    if column.kind == "numeric" and not pd.api.types.is_numeric_dtype(col):
        # A CSV column with some text is read as text: numbers written as text still count.
        as_number = pd.to_numeric(col, errors="coerce").to_numpy(dtype=object)
        raw = np.where(pd.isna(as_number) & col.notna().to_numpy(), raw, as_number)
    values, bad = canonical_values(column, raw)
    if bad.any():
        what = {
            "numeric": "non-numeric values",
            "bool": "values that are not true/false, 1/0 or yes/no (or missing)",
            "categorical": "values that are not text or numbers",
        }[column.kind]
        raise DataError(
            f"column {source!r} ({column.kind} extra column {column.name}): {what} in {_rows(bad, col)}"
        )
    return values


def load_transactions(
    path: str | os.PathLike,
    columns: dict[str, str] | None = None,
    require_label: bool = False,
    extras: Sequence[ExtraColumn] = (),
) -> pd.DataFrame:
    """Load, map and validate a transactions file.

    Args:
        path: .csv or .parquet file, or a directory / glob of Parquet files (only the needed columns read).
        columns: logical name -> the file's column name (unmapped names are looked up as they are);
            the extra columns' names are logical names too.
        require_label: a missing ``label`` column is an error (training, evaluation).
        extras: the extra columns to load (a model's ``FeatureSpec.extra_columns``, or declared ones).

    Returns:
        The standard frame (see module docstring), in file order.

    Raises:
        DataError: unreadable file, missing column, unparsable/invalid values, duplicate tx_id; a directory
            or glob without Parquet files, or whose files disagree on a needed column.
        ConfigError: an unknown logical name in ``columns``.
    """
    text = [(columns or {}).get(c.name, c.name) for c in extras if c.kind == "categorical"]
    extra_names = [c.name for c in extras]
    source = _parquet_files(path)
    if source is None:
        raw = read_table(path, text_columns=text)
        cols = _resolve_columns(list(raw.columns), columns, require_label, extra_names)
    else:
        cols = _resolve_columns(_open_dataset(*source).schema.names, columns, require_label, extra_names)
        raw = _read_dataset(path, *source, list(dict.fromkeys(cols.values())))
    if len(raw) == 0:
        raise DataError(f"{path}: no rows")
    out = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    for logical in ("tx_id", "customer_id", "terminal_id"):
        col = raw[cols[logical]]
        missing = col.isna().to_numpy()
        if missing.any():
            raise DataError(f"column {cols[logical]!r} ({logical}): empty values in {_rows(missing)}")
        out[logical] = col.astype(str).to_numpy()
    out["ts"] = _parse_timestamps(raw[cols["timestamp"]], cols["timestamp"])
    amount_src = raw[cols["amount"]]
    amount = pd.to_numeric(amount_src, errors="coerce").astype("float64").to_numpy()
    bad = ~np.isfinite(amount)
    if bad.any():
        raise DataError(
            f"column {cols['amount']!r} (amount): missing or non-numeric amounts in {_rows(bad, amount_src)}"
        )
    if (amount < 0).any():
        raise DataError(
            f"column {cols['amount']!r} (amount): negative amounts in {_rows(amount < 0, amount_src)}"
        )
    out["amount"] = amount
    if "label" in cols:
        label_src = raw[cols["label"]]
        label = pd.to_numeric(label_src, errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isin(label, (0.0, 1.0))
        if bad.any():
            raise DataError(
                f"column {cols['label']!r} (label): labels must be 0 or 1, got {_rows(bad, label_src)}"
            )
        out["label"] = label.astype(np.int8)
    for c in extras:
        out[c.name] = _extra_values(raw[cols[c.name]], c, cols[c.name])
    dup = out["tx_id"].duplicated(keep="first").to_numpy()
    if dup.any():
        raise DataError(f"column {cols['tx_id']!r} (tx_id): duplicate ids in {_rows(dup, out['tx_id'])}")
    return out


def parse_day(text: str, flag: str) -> int:
    """``YYYY-MM-DD`` -> UTC epoch day number; ConfigError naming ``flag`` otherwise."""
    try:
        d = date.fromisoformat(str(text))
    except ValueError:
        raise ConfigError(f"{flag}: expected a date YYYY-MM-DD, got {text!r}") from None
    return (datetime(d.year, d.month, d.day, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days


def day_of(ts: np.ndarray) -> np.ndarray:
    return np.asarray(ts) // SECONDS_PER_DAY


def format_day(day: int) -> str:
    return date.fromordinal(date(1970, 1, 1).toordinal() + int(day)).isoformat()


def window_mask(df: pd.DataFrame, start_day: int, end_day: int, what: str) -> np.ndarray:
    """Rows whose day is in [start_day, end_day]; DataError if the window is empty or inverted."""
    if end_day < start_day:
        raise ConfigError(f"{what}: end {format_day(end_day)} is before start {format_day(start_day)}")
    day = day_of(df["ts"].to_numpy())
    mask = (day >= start_day) & (day <= end_day)
    if not mask.any():
        first, last = format_day(day.min()), format_day(day.max())
        raise DataError(
            f"{what} {format_day(start_day)}..{format_day(end_day)} holds no transactions "
            f"(the data covers {first}..{last})"
        )
    return mask


def to_arrays(spec: FeatureSpec, df: pd.DataFrame) -> TransactionArrays:
    """The standard frame -> arrays for ``compute_features`` (file order breaks ties in time)."""
    return TransactionArrays.from_columns(
        spec,
        df["ts"].to_numpy(),
        df["customer_id"].to_numpy(),
        df["terminal_id"].to_numpy(),
        df["amount"].to_numpy(),
        df["label"].to_numpy() if "label" in df else None,
        {name: df[name].to_numpy() for name in spec.extra_names},
    )
