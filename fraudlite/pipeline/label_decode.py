"""Kafka messages -> frames for ``LabelStore.write``: transactions and late labels.

Pure decoding, no Kafka client: the collector (``label_collect``) hands in the raw values it polled.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import pandas as pd

__all__ = ["decode_transactions", "decode_labels"]


class _Label(msgspec.Struct, gc=False):
    tx_id: str | int
    timestamp: int | float | str
    label: int | bool


def decode_transactions(values: Sequence[bytes | None]) -> tuple[pd.DataFrame, int]:
    """Transaction messages -> (frame for ``LabelStore.write``, number of invalid messages).

    Validation is the scorer's (``fraudlite.kafkaio.wire.TransactionDecoder``), so the store keeps
    exactly the transactions the scorer scores.
    """
    from fraudlite.kafkaio.wire import TransactionDecoder

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
    from fraudlite.kafkaio.wire import timestamp_seconds

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
