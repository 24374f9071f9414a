"""What the scorer writes: decision/alert messages and DLQ records (pure encoding, no Kafka).

Decision (and alert) value, UTF-8 JSON keyed by customer_id (docs/ARCHITECTURE.md, "Topics and messages")::

    {"tx_id", "customer_id", "score", "decision" ("fraud" | "legit"), "threshold", "model_version",
     "scored_at" (ISO-8601 UTC, ms)[, "reasons"]}

``reasons`` (``streaming.explain``): 1-3 ``{"feature", "value", "contribution", "text"}``, largest
contribution first, on every alert, and on decisions only with ``serve --explain-all``; a message without
reasons has no ``reasons`` key at all.

A DLQ record keeps the original key and value bytes; headers carry ``fraudlite.dlq.reason`` and
``fraudlite.source.topic``/``partition``/``offset``. With the envelope option the value is instead a
JSON object with the same information and the original value (text if UTF-8, else base64).
A value (or key) too large to be produced again (``dlq_truncate``; the producer refuses records above
its ``max_request_size``, which would otherwise fail the batch forever) is cut to a bound, and the headers
``fraudlite.dlq.truncated``, ``fraudlite.dlq.original_bytes`` and ``fraudlite.dlq.original_sha256`` say so.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import msgspec
import numpy as np

__all__ = [
    "FRAUD",
    "LEGIT",
    "encode_decisions",
    "encode_decision",
    "dlq_headers",
    "dlq_envelope",
    "dlq_truncate",
    "iso_now",
]

#: Longest DLQ key kept (a key is an id; anything longer is garbage worth only its hash).
MAX_DLQ_KEY_BYTES = 1024

FRAUD, LEGIT = "fraud", "legit"


class _Decision(msgspec.Struct, gc=False, omit_defaults=True):
    tx_id: str
    customer_id: str
    score: float
    decision: str
    threshold: float
    model_version: str
    scored_at: str
    reasons: Sequence | None = None  # of monitoring.reasons.Reason (dataclasses: msgspec encodes them)


class _Envelope(msgspec.Struct, gc=False):
    reason: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: str | None
    value_base64: str | None


_encode = msgspec.json.Encoder().encode


def iso_now(now: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_decisions(
    tx_ids: Sequence[str],
    customer_ids: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    model_version: str,
    scored_at: str,
    reasons: Mapping[int, Sequence] | None = None,
) -> tuple[list[bytes], np.ndarray]:
    """JSON decision messages of a batch and the boolean "fraud" mask (score >= threshold).

    Scores are rounded to 6 decimals (float32 precision) so the JSON stays short. ``reasons``: row index
    -> that row's reasons (``streaming.explain.Explanations.between``); other rows have none.
    """
    scores = np.asarray(scores)
    fraud = scores >= threshold
    rounded = np.round(scores.astype(np.float64), 6).tolist()
    labels = np.where(fraud, FRAUD, LEGIT).tolist()
    values = [
        _encode(_Decision(t, c, s, d, threshold, model_version, scored_at))
        for t, c, s, d in zip(tx_ids, customer_ids, rounded, labels, strict=True)
    ]
    for i, why in (reasons or {}).items():
        values[i] = encode_decision(
            tx_ids[i], customer_ids[i], rounded[i], labels[i], threshold, model_version, scored_at, why
        )
    return values, fraud


def encode_decision(
    tx_id: str,
    customer_id: str,
    score: float,
    decision: str,
    threshold: float,
    model_version: str,
    scored_at: str,
    reasons: Sequence | None = None,
) -> bytes:
    """One decision (or alert) message (``score`` as rounded by ``encode_decisions``, ``decision`` its
    label); ``reasons`` None: no ``reasons`` key."""
    return _encode(
        _Decision(tx_id, customer_id, score, decision, threshold, model_version, scored_at, reasons)
    )


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a DLQ record."""
    return [
        ("fraudlite.dlq.reason", reason.encode()),
        ("fraudlite.source.topic", topic.encode()),
        ("fraudlite.source.partition", str(partition).encode()),
        ("fraudlite.source.offset", str(offset).encode()),
    ]


def dlq_truncate(
    key: bytes | None, value: bytes | None, max_value_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Bound a DLQ record's key and value; returns them and the extra headers describing any cut."""
    headers: list[tuple[str, bytes]] = []
    if value is not None and len(value) > max_value_bytes:
        headers += [
            ("fraudlite.dlq.truncated", b"value"),
            ("fraudlite.dlq.original_bytes", str(len(value)).encode()),
            ("fraudlite.dlq.original_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[:max_value_bytes]
    if key is not None and len(key) > MAX_DLQ_KEY_BYTES:
        headers += [
            ("fraudlite.dlq.truncated_key", b"key"),
            ("fraudlite.dlq.original_key_bytes", str(len(key)).encode()),
        ]
        key = key[:MAX_DLQ_KEY_BYTES]
    return key, value, headers


def dlq_envelope(
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
) -> bytes:
    """The JSON envelope variant of a DLQ value (original bytes as text when UTF-8, else base64)."""
    text: str | None = None
    b64: str | None = None
    if value is not None:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            b64 = base64.b64encode(value).decode()
    key_text = None if key is None else key.decode("utf-8", "replace")
    return _encode(_Envelope(reason, topic, partition, offset, timestamp_ms, key_text, text, b64))
