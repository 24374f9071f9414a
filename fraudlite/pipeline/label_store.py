"""Label store: transactions and late labels from Kafka in a day-partitioned Parquet dataset.

Layout (a pyarrow/hive dataset: ``pd.read_parquet(STORE / "transactions")`` reads it; training reads it
with ``load_store``)::

    STORE/store.json                                  format marker
    STORE/transactions/day=YYYY-MM-DD/data.parquet    tx_id, timestamp (UTC, ms), customer_id,
                                                      terminal_id, amount, label (null until it arrives)
    STORE/pending_labels.parquet                      labels whose transaction has not arrived yet
    STORE/.lock                                       held by the one writer (``fraudlite collect``)

Writes are idempotent: a day file is read, merged and replaced atomically (temporary file + os.replace),
rows are unique by ``tx_id`` (a replayed transaction adds nothing, a replayed label changes nothing), a
label finds its transaction by ``tx_id`` in the day of its ``timestamp`` (the transaction's time, per the
label message contract) or among the transactions of the same write, and waits in
``pending_labels.parquet`` otherwise. The collector commits Kafka offsets only after a write, so a crash
replays messages the store then absorbs without duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlite.errors import ConfigError, DataError, UserError
from fraudlite.pipeline.data import format_day
from fraudlite.pipeline.registry import file_lock

__all__ = [
    "LabelStore",
    "WriteStats",
    "CollectConfig",
    "CollectStats",
    "decode_labels",
    "load_store",
    "collect",
    "collect_command",
]

logger = logging.getLogger(__name__)

FORMAT = "fraudlite-label-store/1"
TX_DIR = "transactions"
DAY_FILE = "data.parquet"
PENDING_FILE = "pending_labels.parquet"
_SCHEMA = pa.schema(
    [
        ("tx_id", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("customer_id", pa.string()),
        ("terminal_id", pa.string()),
        ("amount", pa.float64()),
        ("label", pa.int8()),
    ]
)
_PENDING_SCHEMA = pa.schema(
    [("tx_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")), ("label", pa.int8())]
)


@dataclass
class WriteStats:
    """What one ``LabelStore.write`` changed."""

    transactions_added: int = 0
    duplicates_ignored: int = 0
    labels_applied: int = 0
    labels_pending: int = 0
    days_written: int = 0

    def add(self, other: WriteStats) -> None:
        self.transactions_added += other.transactions_added
        self.duplicates_ignored += other.duplicates_ignored
        self.labels_applied += other.labels_applied
        self.days_written += other.days_written
        self.labels_pending = other.labels_pending


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


class LabelStore:
    """A label store directory (see the module docstring).

    Args:
        root: the store directory.
        create: create it if missing; otherwise a missing/foreign directory is a DataError.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = False) -> None:
        self.root = Path(root)
        marker = self.root / "store.json"
        if not marker.is_file():
            if not create:
                raise DataError(
                    f"{self.root}: not a label store (no store.json; create one with fraudlite collect)"
                )
            if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise ConfigError(f"--store {self.root}: exists and is not a label store (not empty)")
            self.root.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"format": FORMAT}) + "\n")
        elif json.loads(marker.read_text()).get("format") != FORMAT:
            raise DataError(f"{marker}: not a {FORMAT} store")

    def day_path(self, day: int) -> Path:
        return self.root / TX_DIR / f"day={format_day(day)}" / DAY_FILE

    def days(self) -> list[Path]:
        return sorted((self.root / TX_DIR).glob(f"day=*/{DAY_FILE}"))

    def writer_lock(self):
        """The single-writer lock (non-blocking: a second collector fails with a clear message)."""
        return file_lock(self.root / ".lock", blocking=False, what="label store")

    def _read_day(self, day: int) -> pd.DataFrame:
        path = self.day_path(day)
        if not path.is_file():
            return _empty(_SCHEMA)
        return pq.read_table(path, schema=_SCHEMA).to_pandas()

    def pending(self) -> pd.DataFrame:
        path = self.root / PENDING_FILE
        if not path.is_file():
            return _empty(_PENDING_SCHEMA)
        return pq.read_table(path, schema=_PENDING_SCHEMA).to_pandas()

    def write(
        self, transactions: pd.DataFrame | None = None, labels: pd.DataFrame | None = None
    ) -> WriteStats:
        """Merge transactions and labels into the store (idempotent; each changed file replaced atomically).

        Args:
            transactions: columns tx_id, timestamp (datetime64 UTC), customer_id, terminal_id, amount.
            labels: columns tx_id, timestamp (the transaction's time), label (0/1); later rows win.

        Returns:
            What changed.
        """
        stats = WriteStats()
        tx = transactions if transactions is not None else _empty(_SCHEMA).drop(columns="label")
        n_in = len(tx)
        tx = tx.drop_duplicates("tx_id", keep="first")
        stats.duplicates_ignored += n_in - len(tx)
        pending_before = self.pending()
        new_labels = labels if labels is not None else _empty(_PENDING_SCHEMA)
        all_labels = pd.concat(
            [pending_before, new_labels[["tx_id", "timestamp", "label"]]], ignore_index=True
        )
        all_labels = all_labels.drop_duplicates("tx_id", keep="last").set_index("tx_id")

        tx_day = _days(tx["timestamp"])
        label_day = _days(all_labels["timestamp"])
        applied: set[str] = set()
        for day in sorted(set(tx_day.tolist()) | set(label_day.tolist())):
            existing = self._read_day(day)
            incoming = tx[tx_day == day]
            fresh = incoming[~incoming["tx_id"].isin(existing["tx_id"])]
            stats.duplicates_ignored += len(incoming) - len(fresh)
            merged = pd.concat(
                [existing, fresh.assign(label=pd.array([pd.NA] * len(fresh), dtype="Int8"))],
                ignore_index=True,
            )
            merged["label"] = merged["label"].astype("Int8")
            hit = merged["tx_id"].isin(all_labels.index)
            changed = len(fresh) > 0
            if hit.any():
                values = all_labels.loc[merged.loc[hit, "tx_id"], "label"].to_numpy().astype(np.int8)
                old = merged.loc[hit, "label"]
                differs = old.isna().to_numpy() | (old.fillna(-1).to_numpy() != values)
                if differs.any():
                    merged.loc[hit, "label"] = values
                    changed = True
                applied.update(merged.loc[hit, "tx_id"].tolist())
                stats.labels_applied += int(differs.sum())
            if changed:
                merged = merged.sort_values("timestamp", kind="stable", ignore_index=True)
                _atomic_parquet(
                    pa.Table.from_pandas(merged, schema=_SCHEMA, preserve_index=False), self.day_path(day)
                )
                stats.days_written += 1
            stats.transactions_added += len(fresh)
        still = all_labels[~all_labels.index.isin(applied)].reset_index()
        stats.labels_pending = len(still)
        if len(new_labels) or len(still) != len(pending_before):
            table = pa.Table.from_pandas(still, schema=_PENDING_SCHEMA, preserve_index=False)
            _atomic_parquet(table, self.root / PENDING_FILE)
        return stats

    def read(self) -> pd.DataFrame:
        """Every stored transaction (tx_id, timestamp, customer_id, terminal_id, amount, label), time order."""
        paths = self.days()
        if not paths:
            return _empty(_SCHEMA)
        table = pa.concat_tables([pq.read_table(p, schema=_SCHEMA) for p in paths])
        df = table.to_pandas()
        df["label"] = df["label"].astype("Int8")
        return df.sort_values("timestamp", kind="stable", ignore_index=True)

    def summary(self) -> dict:
        df = self.read()
        return {
            "transactions": len(df),
            "labelled": int(df["label"].notna().sum()),
            "frauds": int((df["label"] == 1).sum()),
            "pending_labels": len(self.pending()),
            "days": len(self.days()),
        }


def _days(ts: pd.Series) -> np.ndarray:
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    seconds = pd.to_datetime(ts, utc=True).to_numpy(dtype="datetime64[s]").astype(np.int64)
    return seconds // 86_400


def load_store(root: str | os.PathLike) -> pd.DataFrame:
    """The standard frame (tx_id, ts, customer_id, terminal_id, amount, label) from a label store.

    Transactions without a label yet count as legitimate (no chargeback); the retrain window ends
    ``delay_days`` back, so its labels have had time to arrive.

    Raises:
        DataError: not a store, no transactions, or no labels at all.
    """
    store = LabelStore(root)
    df = store.read()
    if df.empty:
        raise DataError(f"{store.root}: the label store holds no transactions yet (run fraudlite collect)")
    labelled = int(df["label"].notna().sum())
    if labelled == 0:
        raise DataError(
            f"{store.root}: the label store has {len(df)} transactions but no labels yet "
            "(collect the labels topic, or wait for labels to arrive)"
        )
    dup = df["tx_id"].duplicated(keep="first").to_numpy()
    if dup.any():  # the same tx_id replayed with a different timestamp (another day)
        logger.warning(
            "label store: %d transactions repeated on another day; keeping the first", int(dup.sum())
        )
        df = df[~dup].reset_index(drop=True)
    logger.info(
        "label store: %d transactions, %d labelled (%d fraud), %d unlabelled counted as legitimate",
        len(df),
        labelled,
        int((df["label"] == 1).sum()),
        len(df) - labelled,
    )
    return pd.DataFrame(
        {
            "tx_id": df["tx_id"].astype(str).to_numpy(),
            "ts": df["timestamp"].to_numpy(dtype="datetime64[s]").astype(np.int64),
            "customer_id": df["customer_id"].astype(str).to_numpy(),
            "terminal_id": df["terminal_id"].astype(str).to_numpy(),
            "amount": df["amount"].to_numpy(dtype=np.float64),
            "label": df["label"].fillna(0).to_numpy(dtype=np.int8),
        }
    )


# --- decoding Kafka messages ---------------------------------------------------------------------------


class _Label(msgspec.Struct, gc=False):
    tx_id: str | int
    timestamp: int | float | str
    label: int | bool


def decode_transactions(values: Sequence[bytes | None]) -> tuple[pd.DataFrame, int]:
    """Transaction messages -> (frame for ``LabelStore.write``, number of invalid messages).

    Validation is the scorer's (``fraudlite.streaming.decode.TransactionDecoder``), so the store keeps
    exactly the transactions the scorer scores.
    """
    from fraudlite.streaming.decode import TransactionDecoder

    batch = TransactionDecoder().decode(values)
    df = pd.DataFrame(
        {
            "tx_id": pd.Series(batch.tx_id, dtype=object),
            "timestamp": pd.to_datetime(batch.ts, unit="s", utc=True).astype("datetime64[ms, UTC]"),
            "customer_id": pd.Series(batch.customer_id, dtype=object),
            "terminal_id": pd.Series(batch.terminal_id, dtype=object),
            "amount": batch.amount_cents / 100.0,
        }
    )
    return df, len(batch.invalid)


def decode_labels(values: Sequence[bytes | None]) -> tuple[pd.DataFrame, int]:
    """Label messages ``{"tx_id", "timestamp", "label", ...}`` -> (tx_id, timestamp, label frame, invalid)."""
    from fraudlite.streaming.decode import timestamp_seconds

    decode = msgspec.json.Decoder(_Label).decode
    tx_ids, seconds, labels = [], [], []
    invalid = 0
    for value in values:
        try:
            msg = decode(value) if value else None
        except msgspec.MsgspecError:
            msg = None
        ts = timestamp_seconds(msg.timestamp) if msg is not None else None
        if msg is None or ts is None or msg.label not in (0, 1) or str(msg.tx_id) == "":
            invalid += 1
            continue
        tx_ids.append(str(msg.tx_id))
        seconds.append(ts)
        labels.append(int(msg.label))
    df = pd.DataFrame(
        {
            "tx_id": pd.Series(tx_ids, dtype=object),
            "timestamp": pd.to_datetime(np.array(seconds, dtype=np.int64), unit="s", utc=True).astype(
                "datetime64[ms, UTC]"
            ),
            "label": np.array(labels, dtype=np.int8),
        }
    )
    return df, invalid


# --- the collector -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectConfig:
    """``fraudlite collect`` settings.

    Attributes:
        bootstrap_servers: Kafka bootstrap servers.
        store: label store directory (created if missing).
        transactions_topic, labels_topic: topics to read (created if missing).
        group_id: consumer group (offsets committed after each store write).
        flush_interval_s, flush_max_messages: write the buffer at least this often / this large.
        idle_exit_s: stop once no message arrived for this long (None: run until stopped).
        max_messages: stop after this many messages (None: no limit).
        partitions: partitions for topics this creates.
    """

    bootstrap_servers: str
    store: str
    transactions_topic: str = "transactions"
    labels_topic: str = "fraud-labels"
    group_id: str = "fraudlite-collector"
    flush_interval_s: float = 5.0
    flush_max_messages: int = 50_000
    idle_exit_s: float | None = None
    max_messages: int | None = None
    partitions: int = 4

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("--bootstrap-servers is required (H:P[,H:P...])")
        if self.transactions_topic == self.labels_topic:
            raise ConfigError("--transactions-topic and --labels-topic must differ")
        if not self.flush_interval_s > 0:
            raise ConfigError(f"--flush-interval must be > 0 seconds, got {self.flush_interval_s}")
        if self.flush_max_messages < 1:
            raise ConfigError(f"--flush-max-messages must be >= 1, got {self.flush_max_messages}")
        if self.idle_exit_s is not None and not self.idle_exit_s > 0:
            raise ConfigError(f"--idle-exit must be > 0 seconds, got {self.idle_exit_s}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ConfigError(f"--max-messages must be >= 1, got {self.max_messages}")
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be >= 1, got {self.partitions}")


@dataclass
class CollectStats:
    """Totals of a ``collect`` run."""

    transactions: int = 0
    labels: int = 0
    invalid: int = 0
    writes: int = 0
    store: WriteStats | None = None

    def summary(self) -> str:
        s = self.store or WriteStats()
        return (
            f"collected {self.transactions} transaction and {self.labels} label messages "
            f"({self.invalid} invalid skipped) in {self.writes} writes: {s.transactions_added} new transactions, "
            f"{s.duplicates_ignored} duplicates ignored, {s.labels_applied} labels applied, "
            f"{s.labels_pending} labels pending"
        )


def _check_new_store(root: str) -> None:
    p = Path(root)
    if p.exists() and (not p.is_dir() or any(not c.name.startswith(".") for c in p.iterdir())):
        raise ConfigError(f"--store {p}: exists and is not a label store (not empty)")


def collect(config: CollectConfig, stop: threading.Event | None = None) -> CollectStats:
    """Consume transactions and labels into the store until stopped (or idle / max messages).

    Offsets are committed after each store write (at-least-once delivery, made exactly-once in effect by
    the store's idempotence).

    Raises:
        RegistryBusyError: another collector writes to this store.
        KafkaIOError: the topics cannot be created.
    """
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from fraudlite.streaming.config import kafka_security_from_env
    from fraudlite.streaming.kafka_io import TopicSpec, ensure_topics, make_admin, make_consumer

    stop = stop or threading.Event()
    if Path(config.store, "store.json").exists():
        LabelStore(config.store)  # checks the format marker before connecting
    else:
        _check_new_store(config.store)  # nothing is created until the broker answered
    security = kafka_security_from_env()
    try:
        admin = make_admin(
            config.bootstrap_servers,
            security,
            client_id="fraudlite-collect-admin",
            bootstrap_timeout_ms=10_000,
        )
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        raise UserError(
            f"--bootstrap-servers {config.bootstrap_servers}: no Kafka broker answered ({e})"
        ) from None
    try:
        topics = [
            TopicSpec(config.transactions_topic, config.partitions),
            TopicSpec(config.labels_topic, config.partitions),
        ]
        ensure_topics(admin, topics)
    finally:
        admin.close()
    store = LabelStore(config.store, create=True)
    store_totals = WriteStats()
    totals = CollectStats(store=store_totals)
    with store.writer_lock():
        consumer = make_consumer(
            config.bootstrap_servers,
            security,
            group_id=config.group_id,
            client_id="fraudlite-collect",
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            max_poll_records=5_000,
        )
        consumer.subscribe([config.transactions_topic, config.labels_topic])
        tx_buf: list[bytes | None] = []
        label_buf: list[bytes | None] = []
        last_flush = last_message = time.monotonic()
        seen = 0

        def flush() -> None:
            nonlocal last_flush
            if tx_buf or label_buf:
                tx, bad_tx = decode_transactions(tx_buf)
                labels, bad_labels = decode_labels(label_buf)
                stats = store.write(tx, labels)
                try:
                    consumer.commit()
                except KafkaError as e:  # e.g. a rebalance: the messages come again and change nothing
                    logger.warning("collect: offset commit failed (%s); the store absorbs the redelivery", e)
                totals.invalid += bad_tx + bad_labels
                totals.writes += 1
                store_totals.add(stats)
                logger.info(
                    "collect: wrote tx=%d (+%d new) labels=%d (+%d applied, %d pending) invalid=%d",
                    len(tx_buf),
                    stats.transactions_added,
                    len(label_buf),
                    stats.labels_applied,
                    stats.labels_pending,
                    bad_tx + bad_labels,
                )
                tx_buf.clear()
                label_buf.clear()
            last_flush = time.monotonic()

        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=200)
                now = time.monotonic()
                for tp, records in polled.items():
                    target = tx_buf if tp.topic == config.transactions_topic else label_buf
                    target.extend(r.value for r in records)
                    n = len(records)
                    seen += n
                    if tp.topic == config.transactions_topic:
                        totals.transactions += n
                    else:
                        totals.labels += n
                if polled or not consumer.assignment():  # idle time counts once partitions are assigned
                    last_message = now
                if len(tx_buf) + len(label_buf) >= config.flush_max_messages or (
                    now - last_flush >= config.flush_interval_s
                ):
                    flush()
                if config.max_messages is not None and seen >= config.max_messages:
                    break
                if config.idle_exit_s is not None and now - last_message >= config.idle_exit_s:
                    logger.info("collect: idle for %.1fs, stopping", config.idle_exit_s)
                    break
            flush()
        finally:
            consumer.close(autocommit=False)
    return totals


def collect_command(**settings) -> int:
    """``fraudlite collect``: run the collector (SIGTERM/SIGINT stop it after a final write).

    ``settings`` are CollectConfig fields.
    """
    config = CollectConfig(**settings)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        logger.info("collect: signal %d, finishing", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = collect(config, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(stats.summary())
    print(json.dumps(LabelStore(config.store).summary()))
    return 0
