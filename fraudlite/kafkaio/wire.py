"""Batch decoding and validation of transaction messages (msgspec), columns out, reasons for the rest.

``TransactionDecoder.decode(values)`` takes the raw Kafka values of one batch and returns a
``DecodedBatch``: the valid rows as columns (int64 epoch seconds, id lists, int64 cents) plus
``(index, reason)`` for every invalid message. It never raises on message content: anything a producer
can send ends up either as a row or with one of ``REASONS``.

Accepted message (docs/ARCHITECTURE.md, "Topics and messages"): a JSON object with ``tx_id``,
``timestamp`` (epoch milliseconds as a JSON number, a string of digits, or an ISO-8601 string; naive
times are UTC), ``customer_id``, ``terminal_id`` (strings or integers) and ``amount`` (a JSON number);
unknown extra fields are ignored. Timestamps are floored to whole seconds; amounts become cents with
numpy ``rint`` (half to even), the same rounding as ``fraudlite.features.offline.amount_to_cents``.

With ``extras`` (a model's ``FeatureSpec.extra_columns``) it also reads each extra column's field into
canonical values (``features.extras.canonical_values``), ``DecodedBatch.extras``: numeric and categorical
ones may be null or absent, a bool one not (``missing_field:<field>``); a wrong type (text in a numeric
field, "maybe" in a bool one, a list or object, a number beyond float32) is ``bad_type:<field>``.

The per-message Python work is one C-level ``msgspec`` decode (with extras, of a struct with one ``Any``
field per extra column); every check after that is vectorized.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.features.extras import ExtraColumn, canonical_values

__all__ = [
    "REASONS",
    "base_reason",
    "DecodeLimits",
    "DecodedBatch",
    "TransactionDecoder",
    "DecodedLabels",
    "LabelDecoder",
    "timestamp_seconds",
]

#: Every (base) reason a message can be rejected for: the metric label, the DLQ header (``base_reason``).
REASONS: tuple[str, ...] = (
    "empty",  # null / zero-length value
    "oversize",  # longer than DecodeLimits.max_message_bytes
    "not_utf8",  # bytes that are not UTF-8
    "bad_json",  # not parseable as JSON (incl. NaN/Infinity literals outside amount/timestamp)
    "not_object",  # valid JSON but not an object
    "missing_field",  # a required field is absent (or an extra bool field absent / null)
    "bad_type",  # a field has the wrong JSON type (e.g. amount as a string, id as a float)
    "bad_id",  # empty or over-long tx/customer/terminal id
    "bad_amount",  # NaN, infinite, negative or above DecodeLimits.max_amount
    "bad_timestamp",  # unparseable, or outside DecodeLimits' [min, max] event-time bounds
)


def base_reason(reason: str) -> str:
    """An extra column's reason names its field (the DLQ header ``bad_type:device_score``); this is its base
    reason, one of ``REASONS`` (``bad_type``): what metrics label by (bounded cardinality)."""
    return reason.partition(":")[0]


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds a transaction message must respect; anything outside goes to the DLQ with a reason.

    Attributes:
        max_message_bytes: larger values are ``oversize``.
        max_id_chars: longer (or empty) tx/customer/terminal ids are ``bad_id``.
        max_amount: amounts above it (or negative, NaN, infinite) are ``bad_amount``.
        min_timestamp_s / max_timestamp_s: event time bounds (epoch seconds) -> ``bad_timestamp``.
    """

    max_message_bytes: int = 16_384
    max_id_chars: int = 128
    max_amount: float = 10_000_000.0
    min_timestamp_s: int = 946_684_800  # 2000-01-01
    max_timestamp_s: int = 4_102_444_800  # 2100-01-01

    def __post_init__(self) -> None:
        if not 64 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"max_message_bytes must be in 64..67108864, got {self.max_message_bytes}")
        if not 1 <= self.max_id_chars <= 65_536:
            raise ConfigError(f"max_id_chars must be in 1..65536, got {self.max_id_chars}")
        if not 0 < self.max_amount < 1e15:
            raise ConfigError(f"max_amount must be in (0, 1e15), got {self.max_amount}")
        if not 0 <= self.min_timestamp_s < self.max_timestamp_s <= 253_402_300_799:
            raise ConfigError(
                f"timestamp bounds must satisfy 0 <= min < max <= 9999-12-31, got "
                f"{self.min_timestamp_s}..{self.max_timestamp_s}"
            )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_INT64_SAFE = 1 << 62


class _Transaction(msgspec.Struct, gc=False):
    tx_id: str | int
    timestamp: int | float | str
    customer_id: str | int
    terminal_id: str | int
    amount: int | float


@dataclass(frozen=True)
class DecodedBatch:
    """The valid rows of a batch as columns, plus the invalid ones.

    Attributes:
        index: int64 positions (in the input sequence) of the valid rows, ascending.
        ts: int64 event time, epoch seconds (floored).
        tx_id, customer_id, terminal_id: str per valid row.
        amount_cents: int64 cents.
        invalid: ``(position, reason)`` for every rejected message, ascending by position.
        extras: the decoder's extra columns, name -> canonical values per valid row (empty without).
    """

    index: np.ndarray
    ts: np.ndarray
    tx_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    amount_cents: np.ndarray
    invalid: list[tuple[int, str]]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def split(self, n: int) -> tuple[DecodedBatch, DecodedBatch]:
        """The rows of input positions ``< n`` and the rest (positions renumbered from 0)."""
        k = int(np.searchsorted(self.index, n))
        j = next((i for i, (pos, _) in enumerate(self.invalid) if pos >= n), len(self.invalid))
        head = DecodedBatch(
            self.index[:k], self.ts[:k], self.tx_id[:k], self.customer_id[:k], self.terminal_id[:k],
            self.amount_cents[:k], self.invalid[:j], {name: v[:k] for name, v in self.extras.items()},
        )  # fmt: skip
        tail = DecodedBatch(
            self.index[k:] - n, self.ts[k:], self.tx_id[k:], self.customer_id[k:], self.terminal_id[k:],
            self.amount_cents[k:], [(pos - n, r) for pos, r in self.invalid[j:]],
            {name: v[k:] for name, v in self.extras.items()},
        )  # fmt: skip
        return head, tail

    @staticmethod
    def concat(first: DecodedBatch, second: DecodedBatch, n_first: int) -> DecodedBatch:
        """``second`` appended to ``first``, which decoded ``n_first`` input messages."""
        return DecodedBatch(
            np.concatenate([first.index, second.index + n_first]), np.concatenate([first.ts, second.ts]),
            first.tx_id + second.tx_id, first.customer_id + second.customer_id,
            first.terminal_id + second.terminal_id, np.concatenate([first.amount_cents, second.amount_cents]),
            first.invalid + [(pos + n_first, r) for pos, r in second.invalid],
            {name: np.concatenate([v, second.extras[name]]) for name, v in first.extras.items()},
        )  # fmt: skip


def timestamp_seconds(value: object) -> int | None:
    """One ``timestamp`` field -> floored epoch seconds, or None when it is not a usable timestamp.

    Numbers (and strings of digits) are epoch milliseconds; other strings are ISO-8601.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value // 1000 if -_INT64_SAFE < value < _INT64_SAFE else None
    if isinstance(value, float):
        return math.floor(value) // 1000 if math.isfinite(value) and abs(value) < _INT64_SAFE else None
    if isinstance(value, str) and 0 < len(value) <= 64:
        if value.isascii() and value.isdigit():
            return timestamp_seconds(int(value))
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            return (dt - _EPOCH) // _SECOND
        except OverflowError:
            return None
    return None


def _decode_error_reason(value: bytes, extra_names: Sequence[str] = ()) -> str:
    """Why msgspec could not parse ``value`` (slow path, invalid messages only)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:  # the stdlib parser accepts NaN/Infinity, which producers using json.dumps emit
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "bad_json"
    if not isinstance(obj, dict):
        return "not_object"
    amount = obj.get("amount")
    if isinstance(amount, float) and not math.isfinite(amount):
        return "bad_amount"
    ts = obj.get("timestamp")
    if isinstance(ts, float) and not math.isfinite(ts):
        return "bad_timestamp"
    bad = [name for name in extra_names if isinstance(obj.get(name), float) and not math.isfinite(obj[name])]
    return f"bad_type:{bad[0]}" if bad else "bad_json"


_decode_any = msgspec.json.Decoder().decode


def _malformed_reason(value: bytes, extra_names: Sequence[str] = ()) -> str | None:
    """Why ``value`` is not well-formed UTF-8 JSON at all, else None (slow path, invalid messages only).

    msgspec validates while it parses and stops at the first field of the wrong type, so a message such
    as ``0\\x80`` or ``{"tx_id": true, ... <truncated>`` would otherwise be reported by that field.
    """
    try:
        _decode_any(value)
    except msgspec.DecodeError:
        return _decode_error_reason(bytes(value), extra_names)
    try:
        bytes(value).decode("utf-8")  # msgspec accepts some invalid UTF-8 it never had to look at
    except UnicodeDecodeError:
        return "not_utf8"
    return None


def _validation_reason(message: str, extra_names: Sequence[str] = ()) -> str:
    """Map a msgspec ValidationError message to a reason (``extra_names``: longest first)."""
    if "missing required field" in message:
        return "missing_field"
    _, sep, path = message.partition("at `$.")
    if not sep:
        return "not_object"
    path = path.split("`", 1)[0]
    for extra in extra_names:  # only a number out of range fails an ``Any`` field
        if path == extra or path.startswith((f"{extra}.", f"{extra}[")):
            return f"bad_type:{extra}"
    name = path.split(".", 1)[0].split("[", 1)[0]
    if "out of range" in message:
        if name == "amount":
            return "bad_amount"
        if name == "timestamp":
            return "bad_timestamp"
        return "bad_id"
    return "bad_type"


def _ids(column: list, max_chars: int) -> tuple[list[str], np.ndarray]:
    """Ids as str (integers converted) and a bool mask of bad ones (empty, too long, unconvertible)."""
    if not all(type(x) is str for x in column):
        limit = 10 ** min(max_chars, 4000)  # str(int) refuses more than 4300 digits
        out = []
        for x in column:
            if type(x) is str:
                out.append(x)
            elif -limit < x < limit:
                out.append(str(x))
            else:
                out.append("")
        column = out
    lengths = np.fromiter(map(len, column), dtype=np.int64, count=len(column))
    return column, (lengths == 0) | (lengths > max_chars)


def _amounts(column: list) -> np.ndarray:
    try:
        return np.array(column, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return np.array([float(x) if abs(x) < 1e300 else math.inf for x in column], dtype=np.float64)


def _timestamps(column: list) -> np.ndarray:
    """Epoch seconds, int64; unusable entries become a sentinel below every valid bound."""
    if all(type(x) is int for x in column):
        try:
            return np.floor_divide(np.array(column, dtype=np.int64), 1000)
        except OverflowError:
            pass
    out = [timestamp_seconds(x) for x in column]
    return np.array([-1 if s is None else s for s in out], dtype=np.int64)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FAST_TYPES = {"numeric": {float, int, type(None)}, "bool": {bool}, "categorical": {str, type(None)}}


def _canonical(column: ExtraColumn, raw: list) -> tuple[np.ndarray, np.ndarray]:
    """``canonical_values`` (the common JSON types vectorized) that never raises: a value it cannot
    convert (an integer beyond float range or too long to print) is bad, and so is a numeric one beyond
    float32 range (no model input holds it)."""
    kind, n, fast = column.kind, len(raw), set(map(type, raw)) <= _FAST_TYPES[column.kind]
    try:
        if fast and kind == "categorical":
            return np.array(["" if x is None else x for x in raw], dtype=object), np.zeros(n, dtype=bool)
        if fast:  # None -> NaN, bools -> 0/1
            values, bad = np.array(raw, dtype=np.float64), np.zeros(n, dtype=bool)
        else:
            values, bad = canonical_values(column, raw)
    except (OverflowError, ValueError):  # one value at a time
        if n == 1:  # the unconvertible one: bad, with the placeholder
            return canonical_values(column, [None])[0], np.ones(1, dtype=bool)
        values, bad = (np.concatenate(a) for a in zip(*(_canonical(column, [x]) for x in raw), strict=True))
    if kind == "numeric":
        bad |= np.abs(values) > _FLOAT32_MAX
    return values, bad


def _extra_values(columns: Sequence[ExtraColumn], rows: list) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The extra fields of decoded rows -> (name -> canonical values, reason per row: "" when fine)."""
    reason = np.full(len(rows), "", dtype=object)
    values = {}
    for i, c in enumerate(columns):
        raw = list(map(attrgetter(f"x{i}"), rows))
        values[c.name], bad = _canonical(c, raw)
        for j in np.flatnonzero(bad).tolist():
            x = raw[j]
            missing = c.kind == "bool" and (x is None or (type(x) is str and not x.strip()))
            reason[j] = reason[j] or f"{'missing_field' if missing else 'bad_type'}:{c.name}"
    return values, reason


class TransactionDecoder:
    """Decodes and validates batches of transaction messages against ``DecodeLimits`` (by default
    ``DecodeLimits()``), with the fields of ``extras`` (the served model's ``FeatureSpec.extra_columns``)."""

    def __init__(self, limits: DecodeLimits | None = None, extras: Sequence[ExtraColumn] = ()) -> None:
        self.limits = limits or DecodeLimits()
        self.extras = tuple(extras)
        self._extra_names = sorted((c.name for c in self.extras), key=len, reverse=True)
        struct = _Transaction
        if self.extras:  # one Any field per extra column, x<i> renamed to its (any) JSON name
            fields = [(f.name, f.type) for f in msgspec.structs.fields(_Transaction)]
            fields += [(f"x{i}", Any, None) for i in range(len(self.extras))]
            rename = {f"x{i}": c.name for i, c in enumerate(self.extras)}
            struct = msgspec.defstruct("_TransactionWithExtras", fields, rename=rename, gc=False)
        self._decode = msgspec.json.Decoder(struct).decode

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode one batch of raw message values.

        Args:
            values: the Kafka record values in stream order (None for a null value).

        Returns:
            DecodedBatch with the valid rows as columns and ``(position, reason)`` for the others.
        """
        limits = self.limits
        max_bytes = limits.max_message_bytes
        decode, names = self._decode, self._extra_names
        rows: list[_Transaction] = []
        positions: list[int] = []
        invalid: list[tuple[int, str]] = []
        for i, value in enumerate(values):
            if not value:
                invalid.append((i, "empty"))
            elif len(value) > max_bytes:
                invalid.append((i, "oversize"))
            else:
                try:
                    rows.append(decode(value))
                    positions.append(i)
                except msgspec.ValidationError as e:
                    invalid.append((i, _malformed_reason(value, names) or _validation_reason(str(e), names)))
                except msgspec.DecodeError:
                    invalid.append((i, _decode_error_reason(bytes(value), names)))
                except RecursionError:  # nested deeper than msgspec follows (json.loads neither)
                    invalid.append((i, "bad_json"))

        tx_id, bad_tx = _ids([r.tx_id for r in rows], limits.max_id_chars)
        customer_id, bad_customer = _ids([r.customer_id for r in rows], limits.max_id_chars)
        terminal_id, bad_terminal = _ids([r.terminal_id for r in rows], limits.max_id_chars)
        amount = _amounts([r.amount for r in rows])
        ts = _timestamps([r.timestamp for r in rows])
        with np.errstate(invalid="ignore"):
            bad_amount = ~(np.isfinite(amount) & (amount >= 0.0) & (amount <= limits.max_amount))
        bad_ts = (ts < limits.min_timestamp_s) | (ts > limits.max_timestamp_s)
        bad_id = bad_tx | bad_customer | bad_terminal
        index = np.array(positions, dtype=np.int64)
        bad = bad_id | bad_ts | bad_amount
        extras: dict[str, np.ndarray] = {}
        if self.extras:
            extras, extra_reason = _extra_values(self.extras, rows)
            bad = bad | (extra_reason != "")
        if bad.any():
            for j in np.flatnonzero(bad).tolist():
                if bad_id[j] or bad_ts[j] or bad_amount[j]:
                    reason = "bad_id" if bad_id[j] else "bad_timestamp" if bad_ts[j] else "bad_amount"
                else:
                    reason = extra_reason[j]
                invalid.append((positions[j], reason))
            invalid.sort()
            keep = np.flatnonzero(~bad)
            index, ts, amount = index[keep], ts[keep], amount[keep]
            extras = {name: v[keep] for name, v in extras.items()}
            pick = keep.tolist()
            tx_id = [tx_id[j] for j in pick]
            customer_id = [customer_id[j] for j in pick]
            terminal_id = [terminal_id[j] for j in pick]
        cents = np.rint(amount * 100.0).astype(np.int64)
        return DecodedBatch(index, ts, tx_id, customer_id, terminal_id, cents, invalid, extras)


class _Label(msgspec.Struct, gc=False):
    timestamp: int | float | str
    terminal_id: str | int
    label: int
    # Read for the join to decisions (``streaming.label_outcomes``) but never required: a label with a
    # missing or unusable tx_id / customer_id still counts for the terminal table, as before.
    tx_id: Any = None
    customer_id: Any = None


@dataclass(frozen=True)
class DecodedLabels:
    """Valid labels as columns: transaction time (epoch s), terminal id, 0/1 label; plus a count of rejects.

    ``tx_id`` and ``customer_id`` (str per valid label, ``""`` when the message has none usable: absent,
    not a string or integer, empty or longer than ``DecodeLimits.max_id_chars``) join a label to the
    decision made for its transaction; they never make a label invalid.
    """

    ts: np.ndarray
    terminal_id: list[str]
    label: np.ndarray
    n_invalid: int
    tx_id: list[str] = field(default_factory=list)
    customer_id: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray) -> DecodedLabels:
        """The labels at positions ``index`` (``n_invalid`` is not carried: 0)."""
        pick = np.asarray(index, dtype=np.int64).tolist()
        return DecodedLabels(
            self.ts[pick], [self.terminal_id[i] for i in pick], self.label[pick], 0,
            [self.tx_id[i] for i in pick] if self.tx_id else [],
            [self.customer_id[i] for i in pick] if self.customer_id else [],
        )  # fmt: skip


class LabelDecoder:
    """Decodes label messages ``{"tx_id", "customer_id", "terminal_id", "timestamp", "label"}``.

    A label is valid when the fields the terminal table needs are (timestamp, terminal_id, a 0/1
    label); invalid labels are counted and skipped. ``tx_id`` and ``customer_id`` are kept as they are
    (see ``DecodedLabels``).
    """

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits or DecodeLimits()
        self._decode = msgspec.json.Decoder(_Label).decode

    def decode(self, values: Sequence[bytes | None]) -> DecodedLabels:
        limits = self.limits
        rows: list[_Label] = []
        for value in values:
            if value and len(value) <= limits.max_message_bytes:
                try:
                    rows.append(self._decode(value))
                except (msgspec.MsgspecError, RecursionError):
                    pass
        terminal_id, bad_terminal = _ids([r.terminal_id for r in rows], limits.max_id_chars)
        ts = _timestamps([r.timestamp for r in rows])
        raw = [r.label for r in rows]
        ok_label = np.array([v == 0 or v == 1 for v in raw], dtype=bool)
        label = np.array([v if v == 0 or v == 1 else 0 for v in raw], dtype=np.int8)
        bad = bad_terminal | (ts < limits.min_timestamp_s) | (ts > limits.max_timestamp_s) | ~ok_label
        keep = np.flatnonzero(~bad)
        n_invalid = len(values) - len(keep)
        tx_id = _optional_ids([r.tx_id for r in rows], limits.max_id_chars)
        customer_id = _optional_ids([r.customer_id for r in rows], limits.max_id_chars)
        if len(keep) < len(rows):
            pick = keep.tolist()
            terminal_id = [terminal_id[j] for j in pick]
            tx_id = [tx_id[j] for j in pick]
            customer_id = [customer_id[j] for j in pick]
        return DecodedLabels(ts[keep], terminal_id, label[keep], n_invalid, tx_id, customer_id)


def _optional_ids(column: list, max_chars: int) -> list[str]:
    """Ids of an optional field as str (integers converted, as ``_ids`` does); ``""`` for an absent or
    unusable one (another JSON type, empty, too long)."""
    usable = [x if type(x) is str or type(x) is int else "" for x in column]
    ids, bad = _ids(usable, max_chars)
    if bad.any():
        ids = ["" if b else x for x, b in zip(ids, bad.tolist(), strict=True)]
    return ids
