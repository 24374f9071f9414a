"""``fraudlite replay``: produce a transactions file to Kafka in time order, with an optional late-label feed.

Transactions go out as JSON keyed by ``customer_id``, sorted by time (ties keep file order): the core
fields (``tx_id``, ``timestamp`` in epoch ms, ``customer_id``, ``terminal_id``, ``amount``) and every
other column of the file under its own name (``--columns NAME=SRC`` sends column SRC as NAME), so that a
model's extra columns (``features.extras``) reach the scorer. Not sent: ``label`` and the simulator's
``scenario`` (the label in disguise). Values go as they are: missing -> null, numbers as JSON numbers,
bools as true/false, text as text; a CSV's other columns are read as text first and become numbers only
when every value is one (so ``0042`` stays the text "0042"), bools when every value is True/False. With a
labels topic, each transaction's label is emitted at stream time ``(day(tx) + delay) * 86400 - 1`` --
the last second before the label becomes usable for terminal risk -- so labels are flushed before every
transaction that comes after that moment, as a chargeback feed would deliver them. Labels still pending
after the last transaction are emitted at the end.

pandas is imported lazily (through ``fraudlite.data.transactions``) so ``import fraudlite.streaming`` stays light.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from fraudlite.errors import ConfigError, DataError, FraudliteError, UserError
from fraudlite.features.spec import SECONDS_PER_DAY

__all__ = ["replay", "ReplayResult", "ReplayError", "emission_order", "label_release_ts"]

logger = logging.getLogger(__name__)


class ReplayError(FraudliteError, RuntimeError):
    """The broker refused or lost messages (carries the topic and the first error)."""


class _Transaction(msgspec.Struct):
    tx_id: str
    timestamp: int  # epoch milliseconds
    customer_id: str
    terminal_id: str
    amount: float


#: Columns never sent: the label, and the simulator's scenario (the label in disguise).
_NOT_SENT = frozenset({"label", "scenario"})
_CORE = ("tx_id", "timestamp", "customer_id", "terminal_id", "amount")
_NAME_OK = re.compile(r'^[^"\\\x00-\x1f]+$')  # what a JSON field name of a msgspec struct may hold
_BOOL_TEXT = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _with_fields(names: list[str]) -> type:
    """``_Transaction`` plus one field per other column, ``x<i>`` renamed to its name (any string)."""
    fields = [(f.name, f.type) for f in msgspec.structs.fields(_Transaction)]
    fields += [(f"x{i}", Any) for i in range(len(names))]
    return msgspec.defstruct(
        "_TransactionWithFields", fields, rename={f"x{i}": n for i, n in enumerate(names)}
    )


def _other_columns(path: str, columns: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(field, source column)`` of every column of the file sent beside the core fields, in file order."""
    from fraudlite.data.transactions import LOGICAL_COLUMNS

    p = Path(path)
    if p.suffix.lower() == ".csv":
        header = [str(c) for c in _pandas().read_csv(p, nrows=0).columns]
    else:
        import pyarrow.parquet as pq

        header = [n for n in pq.read_schema(p).names if not n.startswith("__index_level_")]
    used = {columns.get(name, name) for name in LOGICAL_COLUMNS}
    renamed = {src: name for name, src in columns.items() if name not in LOGICAL_COLUMNS}
    absent = sorted(set(renamed) - set(header))
    if absent:
        raise DataError(
            f"--columns: {', '.join(map(repr, absent))} not in {path}; it has: {', '.join(header)}"
        )
    out = []
    for col in header:
        name = renamed.get(col, col)
        if (
            col in used
            or name in _NOT_SENT
            or name in _CORE
            or (col not in renamed and col in renamed.values())
        ):
            continue  # a core field's source, the label, or a name --columns gives another column
        if not _NAME_OK.match(name):
            logger.warning("replay: column %r not sent (quotes, backslashes or control characters)", name)
            continue
        out.append((name, col))
    return out


def _pandas():
    import pandas as pd

    return pd


def _from_text(col) -> list:
    """A CSV column read as text -> JSON values: bools or numbers when every value is one, else text."""
    pd = _pandas()
    present = col.notna().to_numpy()
    text = col[present]
    typed = text
    if len(text) and text.isin(_BOOL_TEXT).all():
        typed = text.map(_BOOL_TEXT)
    elif len(text):
        number = pd.to_numeric(text, errors="coerce")
        integers = text.str.fullmatch(r"\s*[+-]?\d+\s*")
        if (
            number.notna().all()
            and not text.str.match(r"\s*[+-]?0\d").any()  # a leading zero: an identifier
            and not (number.dtype.kind == "f" and integers.all())  # integers beyond 64 bits
        ):
            typed = number
    out = np.full(len(col), None, dtype=object)
    out[present] = typed.to_numpy(dtype=object)
    return out.tolist()


def _plain(x: object) -> object:
    """One typed value (Parquet) as JSON can carry it."""
    if isinstance(x, np.generic):
        x = x.item()
    if type(x) in _PLAIN:
        return None if isinstance(x, float) and x != x else x
    if hasattr(x, "isoformat"):
        return x.isoformat()
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    return x if isinstance(x, list | dict) else str(x)


def _from_typed(col) -> list:
    values = col.astype(object).where(col.notna(), None).tolist()
    if not set(map(type, values)) <= _PLAIN:
        values = [_plain(x) for x in values]
    return values


def _other_values(path: str, sources: list[str], rows: np.ndarray) -> list[tuple]:
    """Per replayed row (``rows``: file positions), the values of the other columns ``sources``."""
    pd = _pandas()
    p = Path(path)
    if p.suffix.lower() == ".csv":
        frame = pd.read_csv(p, usecols=sources, dtype=str, low_memory=False)
        lists = [_from_text(frame[c].iloc[rows]) for c in sources]
    else:
        frame = pd.read_parquet(p, columns=sources)
        lists = [_from_typed(frame[c].iloc[rows]) for c in sources]
    return list(zip(*lists, strict=True))


class _Label(msgspec.Struct):
    tx_id: str
    customer_id: str
    terminal_id: str
    timestamp: int  # epoch milliseconds of the transaction
    label: int


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent."""

    transactions: int
    labels: int
    seconds: float
    topic: str
    labels_topic: str | None = None

    @property
    def rate(self) -> float:
        """Transactions per second over the whole run."""
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        labels = f" and {self.labels} labels to {self.labels_topic}" if self.labels_topic else ""
        return (
            f"replayed {self.transactions} transactions to {self.topic}{labels} "
            f"in {self.seconds:.1f}s ({self.rate:,.0f} tx/s)"
        )


def label_release_ts(ts: np.ndarray, delay_days: int) -> np.ndarray:
    """Stream time (epoch s) at which each transaction's label is emitted: the last second before
    ``day + delay_days`` starts, never before the transaction itself."""
    ts = np.asarray(ts, dtype=np.int64)
    return np.maximum((ts // SECONDS_PER_DAY + delay_days) * SECONDS_PER_DAY - 1, ts)


def emission_order(ts: np.ndarray, release: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Merge time-sorted transactions with their labels into one emission sequence.

    Args:
        ts: transaction times, non-decreasing.
        release: label emission time per transaction (``label_release_ts``), or None for no labels.

    Returns:
        ``(kind, index)``: kind 0 = transaction, 1 = label; index = the transaction's row. A label goes
        after every transaction with ``ts <= release`` and before the first one with ``ts > release``;
        labels released together keep transaction order.
    """
    n = len(ts)
    if release is None:
        return np.zeros(n, dtype=np.int8), np.arange(n)
    label_rows = np.argsort(release, kind="stable")
    # Number of transactions at or before each label's release = transactions emitted before it.
    after_tx = np.searchsorted(ts, release[label_rows], side="right")
    # Position of every event in the merged sequence: a label sorts just after transaction after_tx-1.
    keys = np.concatenate([np.arange(n) * 2, after_tx * 2 - 1])
    kinds = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(n, dtype=np.int8)])
    rows = np.concatenate([np.arange(n), label_rows])
    order = np.argsort(keys, kind="stable")
    return kinds[order], rows[order]


def _select(frame, start: str | None, end: str | None, limit: int | None) -> np.ndarray:
    """Window by inclusive days, stable sort by time, keep the first ``limit`` rows: their positions."""
    from fraudlite.data.transactions import format_day, parse_day

    ts = frame["ts"].to_numpy()
    day = ts // SECONDS_PER_DAY
    mask = np.ones(len(frame), dtype=bool)
    if start is not None:
        mask &= day >= parse_day(start, "--start")
    if end is not None:
        mask &= day <= parse_day(end, "--end")
    if start is not None and end is not None and parse_day(end, "--end") < parse_day(start, "--start"):
        raise ConfigError(f"--end {end} is before --start {start}")
    if not mask.any():
        raise DataError(
            f"no transactions between {start or 'the start'} and {end or 'the end'} "
            f"(the data covers {format_day(day.min())}..{format_day(day.max())})"
        )
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    if limit is not None:
        rows = rows[:limit]
    return rows


def _ensure_topics(admin, topics: list[str], partitions: int) -> list[str]:
    """Create the missing ones; returns the names created."""
    from kafka.errors import TopicAlreadyExistsError

    existing = set(admin.list_topics())
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if missing:
        spec = {t: {"num_partitions": partitions, "replication_factor": 1} for t in missing}
        try:
            admin.create_topics(spec, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass  # created concurrently
        logger.info("created topics %s partitions=%d", ",".join(missing), partitions)
    return missing


class _Partitioner:
    """Kafka's default keyed partitioning (murmur2, as the Java client), cached per key."""

    def __init__(self, producer, topic: str) -> None:
        from kafka.partitioner.default import murmur2

        self._murmur2 = murmur2
        self._partitions = sorted(producer.partitions_for(topic))
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        p = self._cache.get(key)
        if p is None:
            idx = (self._murmur2(key) & 0x7FFFFFFF) % len(self._partitions)
            p = self._cache[key] = self._partitions[idx]
        return p


class _Pacer:
    """Sleeps so that the i-th transaction leaves no earlier than ``start + i / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def wait(self, sent: int) -> None:
        if self.rate > 0:
            ahead = self.start + sent / self.rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)


def replay(
    data: str,
    columns: Mapping[str, str] | None = None,
    *,
    bootstrap_servers: str,
    topic: str = "transactions",
    rate: float = 0.0,
    limit: int | None = None,
    start: str | None = None,
    end: str | None = None,
    labels_topic: str | None = None,
    label_delay_days: int = 7,
    partitions: int = 4,
    kafka_config: Mapping[str, Any] | None = None,
    progress_every_s: float = 2.0,
) -> ReplayResult:
    """Produce a transactions file to Kafka in time order (and optionally its labels, late).

    Args:
        data: .csv or .parquet transactions file.
        columns: logical column name -> the file's column name; another name -> the column sent under it.
        bootstrap_servers: ``host:port[,host:port]``.
        topic: transactions topic.
        rate: transactions per second; 0 = as fast as possible.
        limit: stop after this many transactions.
        start, end: inclusive UTC days ``YYYY-MM-DD`` to replay.
        labels_topic: also emit each label there, ``label_delay_days`` after its transaction's day.
        label_delay_days: label delay in days.
        partitions: partitions for topics this creates (existing topics are left as they are).
        kafka_config: extra kafka-python settings for the producer and admin (e.g. security).
        progress_every_s: seconds between progress log lines.

    Returns:
        The counts sent.

    Raises:
        ConfigError: a bad flag value.
        DataError: unreadable data, an empty window, or no label column with ``labels_topic``.
        UserError: no broker reachable at ``bootstrap_servers``.
        ReplayError: the broker failed some sends.
    """
    if rate < 0:
        raise ConfigError(f"--rate must be >= 0 (0 = as fast as possible), got {rate}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if label_delay_days < 0:
        raise ConfigError(f"--label-delay-days must be >= 0, got {label_delay_days}")
    if partitions < 1:
        raise ConfigError(f"--partitions must be >= 1, got {partitions}")
    if labels_topic is not None and labels_topic == topic:
        raise ConfigError("--labels-topic must differ from --topic")

    from fraudlite.data.transactions import LOGICAL_COLUMNS, load_transactions

    columns = dict(columns or {})
    logical = {k: v for k, v in columns.items() if k in LOGICAL_COLUMNS}
    frame = load_transactions(data, logical, require_label=labels_topic is not None)
    picked = _select(frame, start, end, limit)
    frame = frame.iloc[picked].reset_index(drop=True)
    others = _other_columns(data, columns)
    extra = _other_values(data, [src for _, src in others], picked) if others else None
    tx_struct = _with_fields([name for name, _ in others]) if others else _Transaction
    if others:
        logger.info("replay: fields beside the core ones: %s", ", ".join(name for name, _ in others))
    n = len(frame)
    ts = frame["ts"].to_numpy(dtype=np.int64)
    tx_ids = frame["tx_id"].tolist()
    customers = frame["customer_id"].tolist()
    terminals = frame["terminal_id"].tolist()
    amounts = frame["amount"].tolist()
    labels = frame["label"].tolist() if labels_topic is not None else None
    release = label_release_ts(ts, label_delay_days) if labels_topic is not None else None
    kinds, rows = emission_order(ts, release)
    ts_ms = (ts * 1000).tolist()
    del frame

    config = dict(kafka_config or {})
    producer, admin = _connect(bootstrap_servers, config)
    failures: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        failures.append(exc)

    encode = msgspec.json.Encoder().encode
    sent_tx = sent_labels = 0
    t0 = time.monotonic()
    try:
        _ensure_topics(admin, [topic] + ([labels_topic] if labels_topic else []), partitions)
        pacer = _Pacer(rate)
        next_progress = t0 + progress_every_s
        send = producer.send
        tx_partition = _Partitioner(producer, topic)
        label_partition = _Partitioner(producer, labels_topic) if labels_topic else None
        for kind, i in zip(kinds.tolist(), rows.tolist(), strict=True):
            key = customers[i].encode("utf-8")
            if kind == 0:
                pacer.wait(sent_tx)
                if extra is None:
                    value = encode(_Transaction(tx_ids[i], ts_ms[i], customers[i], terminals[i], amounts[i]))
                else:
                    value = encode(
                        tx_struct(tx_ids[i], ts_ms[i], customers[i], terminals[i], amounts[i], *extra[i])
                    )
                send(topic, value=value, key=key, partition=tx_partition(key)).add_errback(on_error)
                sent_tx += 1
                if sent_tx % 1024 == 0:
                    now = time.monotonic()
                    if now >= next_progress:
                        _progress(sent_tx, n, sent_labels, now - t0)
                        next_progress = now + progress_every_s
                    if failures:
                        break
            else:
                value = encode(_Label(tx_ids[i], customers[i], terminals[i], ts_ms[i], int(labels[i])))
                send(labels_topic, value=value, key=key, partition=label_partition(key)).add_errback(on_error)
                sent_labels += 1
        producer.flush()
    finally:
        producer.close()
        admin.close()
    seconds = time.monotonic() - t0
    if failures:
        raise ReplayError(f"{len(failures)} sends to {topic} failed; first: {failures[0]!r}")
    result = ReplayResult(sent_tx, sent_labels, seconds, topic, labels_topic)
    logger.info("%s", result.summary())
    return result


def _progress(sent: int, total: int, labels: int, elapsed: float) -> None:
    rate = sent / elapsed if elapsed > 0 else 0.0
    eta = (total - sent) / rate if rate > 0 else float("inf")
    logger.info(
        "replay sent=%d/%d (%.0f%%) labels=%d rate=%.0f tx/s eta=%.0fs",
        sent,
        total,
        100.0 * sent / total,
        labels,
        rate,
        eta,
    )


def _connect(bootstrap_servers: str, config: dict[str, Any]):
    """Producer (batched, idempotent) and admin client; UserError when no broker answers."""
    from kafka import KafkaAdminClient, KafkaProducer

    producer_config = {
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "bootstrap_timeout_ms": 10_000,
        "client_id": "fraudlite-replay",
    }
    producer_config.update(config)
    from fraudlite.kafkaio.clients import protect_secrets

    protect_secrets(None, config.get("sasl_plain_password"), config.get("ssl_password"))
    admin_keys = set(KafkaAdminClient.DEFAULT_CONFIG)
    admin_config = {k: v for k, v in producer_config.items() if k in admin_keys}
    admin = _client(KafkaAdminClient, bootstrap_servers, admin_config)
    try:
        producer = _client(KafkaProducer, bootstrap_servers, producer_config)
    except BaseException:
        admin.close()
        raise
    return producer, admin


def _client(factory, bootstrap_servers: str, config: dict[str, Any]):
    from kafka.errors import KafkaConfigurationError, KafkaConnectionError, KafkaTimeoutError

    try:
        return factory(bootstrap_servers=bootstrap_servers, **config)
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        raise UserError(f"--bootstrap-servers {bootstrap_servers}: no Kafka broker answered ({e})") from None
    except (KafkaConfigurationError, ValueError) as e:
        raise ConfigError(f"Kafka settings: {e}") from None
