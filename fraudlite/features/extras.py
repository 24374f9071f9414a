"""A bank's own columns as model inputs: ``--extra-columns NAME:KIND[,...]`` (numeric, categorical, bool).

One pure definition shared by the offline path (a file's columns) and the online one (a message's JSON
fields), so that both encode a value identically:

* values are first made *canonical* (``canonical_values``): numeric -> float64, NaN when missing; bool ->
  float64 0/1 (true/false, 1/0, yes/no, t/f, y/n in any case), NaN when missing; categorical -> str, ""
  when missing (integers, and floats that are integers, as their decimal digits, so a CSV's ``5.0`` and
  a message's ``5`` are one value). A value of the wrong type is *bad*: offline a DataError naming the
  column and rows, online a DLQ record naming the field.
* an ``ExtraColumn`` is fitted on the training window (``fit_extra_columns``) and then encodes canonical
  values into model inputs (``encode_extras``):

  - numeric: the value (missing -> the training median) and ``NAME_missing`` (1 when it was missing);
    standardization happens inside the model like every other input;
  - bool: one input, 0/1 (a missing bool is bad: there is no sensible fill);
  - categorical: one-hot over the training vocabulary plus ``NAME=<other>`` (unseen or missing) when the
    vocabulary has at most ``ONEHOT_MAX`` values, otherwise the value's stable hash (crc32) into
    ``buckets`` inputs ``NAME#i``. A one-hot block followed by the first linear layer *is* a learned
    embedding (column ``i`` of the weight is value ``i``'s vector); hashing shares one vector between
    the values of a bucket (HashedNets-style parameter sharing), so the width stays fixed however many
    values a column has. ``NAME:categorical:N`` forces hashing into N buckets.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fraudlite.errors import ConfigError, DataError

__all__ = [
    "KINDS",
    "ONEHOT_MAX",
    "DEFAULT_BUCKETS",
    "RESERVED_NAMES",
    "ExtraColumn",
    "parse_extra_columns",
    "canonical_values",
    "fit_extra_columns",
    "encode_extras",
    "value_bucket",
]

KINDS = ("numeric", "categorical", "bool")
ONEHOT_MAX = 32
DEFAULT_BUCKETS = 64
OTHER = "<other>"
#: Names an extra column may not take: the logical columns and the standard frame's own.
RESERVED_NAMES = frozenset({"tx_id", "timestamp", "ts", "customer_id", "terminal_id", "amount", "label"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n"})


@dataclass(frozen=True)
class ExtraColumn:
    """One extra column: its kind and what was fitted on the training window.

    Attributes:
        name: the logical name (the file's column, unless ``--columns`` maps it; the message's field).
        kind: ``numeric`` | ``categorical`` | ``bool``.
        fill: numeric: the value a missing one becomes (the training median).
        vocabulary: categorical one-hot: the training values, sorted.
        buckets: categorical hashed: the number of buckets (0 = one-hot).
    """

    name: str
    kind: str
    fill: float = 0.0
    vocabulary: tuple[str, ...] = ()
    buckets: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(str(v) for v in self.vocabulary))
        if not _NAME.match(self.name) or self.name in RESERVED_NAMES:
            raise ConfigError(
                f"--extra-columns: {self.name!r} cannot name an extra column (letters, digits, _ . -; "
                f"not one of {', '.join(sorted(RESERVED_NAMES))})"
            )
        if self.kind not in KINDS:
            raise ConfigError(
                f"--extra-columns: {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if self.buckets < 0 or (self.buckets and self.kind != "categorical"):
            raise ConfigError(f"--extra-columns: {self.name}: buckets apply to categorical columns only")
        if not math.isfinite(self.fill):
            raise ConfigError(f"extra column {self.name}: fill must be finite")

    @property
    def encoding(self) -> str:
        """``value`` (numeric, bool), ``onehot`` or ``hash`` (categorical)."""
        if self.kind != "categorical":
            return "value"
        return "hash" if self.buckets else "onehot"

    @property
    def input_names(self) -> list[str]:
        """The model inputs this column becomes, in order."""
        if self.kind == "numeric":
            return [self.name, f"{self.name}_missing"]
        if self.kind == "bool":
            return [self.name]
        if self.buckets:
            return [f"{self.name}#{i}" for i in range(self.buckets)]
        return [f"{self.name}={v}" for v in self.vocabulary] + [f"{self.name}={OTHER}"]

    @property
    def width(self) -> int:
        return len(self.input_names)

    @property
    def indicators(self) -> list[bool]:
        """Per input: whether it is a 0/1 indicator (one-hot, hash bucket, bool, missing flag), which a
        model does not scale: dividing a rare category's column by its std turns its 1 into
        ~1/sqrt(share) (31 at 0.1%), an input that swamps the others."""
        return [False, True] if self.kind == "numeric" else [True] * self.width

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Canonical values (see module docstring) -> float64 (n, width)."""
        n = len(values)
        if self.kind == "numeric":
            v = np.asarray(values, dtype=np.float64)
            missing = np.isnan(v)
            return np.stack([np.where(missing, self.fill, v), missing.astype(np.float64)], axis=1)
        if self.kind == "bool":
            return np.asarray(values, dtype=np.float64).reshape(n, 1)
        uniq, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        if self.buckets:
            column = np.array([value_bucket(u, self.buckets) for u in uniq], dtype=np.int64)
        else:
            index = {v: i for i, v in enumerate(self.vocabulary)}
            column = np.array([index.get(u, len(self.vocabulary)) for u in uniq], dtype=np.int64)
        out = np.zeros((n, self.width), dtype=np.float64)
        out[np.arange(n), column[inverse.reshape(-1)]] = 1.0
        return out

    def to_dict(self) -> dict:
        d: dict = {"name": self.name, "kind": self.kind, "encoding": self.encoding}
        if self.kind == "numeric":
            d["fill"] = self.fill
        if self.vocabulary:
            d["vocabulary"] = list(self.vocabulary)
        if self.buckets:
            d["buckets"] = self.buckets
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ExtraColumn:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            fill=float(d.get("fill", 0.0)),
            vocabulary=tuple(d.get("vocabulary", ())),
            buckets=int(d.get("buckets", 0)),
        )


def value_bucket(value: str, buckets: int) -> int:
    """Stable (process-independent) hash bucket of a categorical value."""
    return zlib.crc32(value.encode("utf-8")) % buckets


def parse_extra_columns(text: str | None) -> tuple[ExtraColumn, ...]:
    """``NAME:KIND[:BUCKETS],...`` -> unfitted columns (ConfigError naming the entry at fault)."""
    if not text:
        return ()
    out: list[ExtraColumn] = []
    for entry in text.split(","):
        parts = entry.strip().split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ConfigError(
                f"--extra-columns: expected NAME:KIND (KIND numeric|categorical|bool), got {entry.strip()!r}"
            )
        buckets = 0
        if len(parts) == 3:
            if parts[1] != "categorical" or not parts[2].isdigit() or not 2 <= int(parts[2]) <= 65_536:
                raise ConfigError(
                    f"--extra-columns: {entry.strip()!r}: only NAME:categorical:BUCKETS (2..65536) takes a "
                    "third part"
                )
            buckets = int(parts[2])
        out.append(ExtraColumn(parts[0], parts[1], buckets=buckets))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--extra-columns: {', '.join(dup)} given more than once")
    return tuple(out)


def _is_missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _numeric(x: object) -> float | None:
    if _is_missing(x):
        return math.nan
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | float | np.integer | np.floating):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _bool(x: object) -> float | None:
    if _is_missing(x):
        return math.nan
    if isinstance(x, bool | np.bool_):
        return float(x)
    if isinstance(x, int | float | np.integer | np.floating):
        return float(x) if x in (0, 1) else None
    if isinstance(x, str):
        s = x.strip().lower()
        return 1.0 if s in _TRUE else 0.0 if s in _FALSE else (math.nan if s == "" else None)
    return None


def _categorical(x: object) -> str | None:
    if _is_missing(x):
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, bool | np.bool_):
        return "true" if x else "false"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        if not math.isfinite(x):
            return None
        return str(int(x)) if float(x).is_integer() else repr(float(x))
    return None


def canonical_values(column: ExtraColumn, raw: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (JSON-decoded or a file's) -> (canonical values, bool mask of bad ones).

    Bad: a value of the wrong type (text or a bool in a numeric column, anything but true/false/1/0/
    yes/no in a bool column, a list or object anywhere) and, for bool, a missing value. Bad entries hold
    a placeholder (NaN / "") in the values.
    """
    if column.kind == "categorical":
        values = [_categorical(x) for x in raw]
        bad = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return np.array(["" if v is None else v for v in values], dtype=object), bad
    convert = _numeric if column.kind == "numeric" else _bool
    out = [convert(x) for x in raw]
    bad = np.fromiter((v is None for v in out), dtype=bool, count=len(out))
    values = np.array([math.nan if v is None else v for v in out], dtype=np.float64)
    if column.kind == "bool":
        bad |= np.isnan(values)
    return values, bad


def fit_extra_columns(
    columns: Sequence[ExtraColumn], values: Mapping[str, np.ndarray], source: Mapping[str, str] | None = None
) -> tuple[ExtraColumn, ...]:
    """Fit each column on canonical training values (the fill, the vocabulary or hashing).

    Args:
        columns: the declared (unfitted) columns.
        values: name -> canonical values of the training rows.
        source: name -> the file's column name, for messages.

    Raises:
        DataError: a column with a single value (it cannot inform the model), or numeric with no value.
    """
    source = source or {}
    fitted = []
    for c in columns:
        v = values[c.name]
        label = f"column {source.get(c.name, c.name)!r} ({c.kind} extra column {c.name})"
        if c.kind == "numeric":
            present = v[~np.isnan(v)]
            if len(present) == 0:
                raise DataError(f"{label}: no values in the training window")
            fitted.append(ExtraColumn(c.name, c.kind, fill=float(np.median(present))))
            continue
        distinct = np.unique(v[v != ""] if c.kind == "categorical" else v)
        if len(distinct) < 2:
            shown = repr(str(distinct[0])) if len(distinct) else "none"
            raise DataError(
                f"{label}: a single value ({shown}) in the training window; it cannot inform the model"
            )
        if c.kind == "categorical" and not c.buckets and len(distinct) > ONEHOT_MAX:
            fitted.append(ExtraColumn(c.name, c.kind, buckets=DEFAULT_BUCKETS))
        elif c.kind == "categorical" and not c.buckets:
            fitted.append(ExtraColumn(c.name, c.kind, vocabulary=tuple(sorted(map(str, distinct)))))
        else:
            fitted.append(c)
    return tuple(fitted)


def encode_extras(columns: Sequence[ExtraColumn], values: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Canonical values of every column -> float64 (n, total width), blocks in ``columns`` order."""
    if not columns:
        return np.zeros((n, 0), dtype=np.float64)
    return np.concatenate([c.encode(values[c.name]) for c in columns], axis=1)
