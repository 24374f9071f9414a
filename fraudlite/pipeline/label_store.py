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

This module is the Parquet side; decoding Kafka messages is in ``label_decode`` and the collector in
``label_collect``, both importable from here as before.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlite.data.transactions import format_day
from fraudlite.errors import ConfigError, DataError
from fraudlite.pipeline.label_decode import decode_labels
from fraudlite.pipeline.label_decode import decode_transactions as decode_transactions  # re-export
from fraudlite.pipeline.registry import file_lock

__all__ = [
    "LabelStore",
    "WriteStats",
    "decode_labels",
    "load_store",
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
