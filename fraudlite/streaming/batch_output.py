"""A scored batch's outputs: decisions, alerts, DLQ records, ``positions`` and changelog records.

Per input partition ``p`` of the batch, in this order (the same order as the records reach the broker):

* one decision per valid transaction (``outputs.encode_decisions``), appended per partition run with
  ``kafkaio.bulk_send.send_many`` when the decisions topic is aligned with the input partitions;
* the decisions at or above the alert threshold, to the alerts topic, each with its reasons
  (``explain.Explanations``; the decisions carry them too only with ``--explain-all``);
* one DLQ record per invalid input record (``dlq_record``: reason headers, truncation, envelope);
* with idempotent outputs, a ``positions`` record to changelog partition ``p`` (``idempotence``).

Outputs a crashed predecessor already made visible (``PartitionBook.decided``) are skipped, once each.
The per-partition bookkeeping is updated as the batch goes: the changelog writer's next input offset,
the customers changed since the last changelog record, and the end of the predecessor's range.

``changelog_records`` builds the changelog records of every partition with changed customers
(``state_store.ChangelogWriter``); ``send_changelog`` appends them to the batch. When each is sent and
how the batch is committed is ``checkpoint.Checkpoint``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from kafka import KafkaProducer, TopicPartition

from fraudlite.features.online import CustomerState
from fraudlite.kafkaio.bulk_send import send_many
from fraudlite.streaming.explain import Explanations
from fraudlite.streaming.idempotence import OUTPUT_KINDS, POSITIONS_KEY, Decided, encode_positions
from fraudlite.streaming.outputs import (
    FRAUD,
    LEGIT,
    dlq_envelope,
    dlq_headers,
    dlq_truncate,
    encode_decision,
    encode_decisions,
)
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.reload import LoadedModel
from fraudlite.streaming.settings import OutputSettings
from fraudlite.streaming.state_store import ChangelogWriter
from fraudlite.streaming.sync import Part

__all__ = ["ChangelogBatch", "SentBatch", "send_outputs", "dlq_record", "changelog_records", "send_changelog"]

ChangelogBatch = list[tuple[int, list[tuple[bytes, bytes | None]]]]  # [(partition, [(key, value)])]


@dataclass(slots=True)
class SentBatch:
    """What ``send_outputs`` sent.

    Attributes:
        futures: the futures of every record sent.
        last_sent: ``(output kind, input partition) -> future`` of the last record sent there.
        suppressed: outputs skipped per kind (a predecessor already wrote them).
        fraud: decisions that were fraud.
        alerts: transactions at or above the alert threshold (skipped ones included).
        invalid_reasons: the reason of each invalid input record (one DLQ record each).
    """

    futures: list
    last_sent: dict[tuple[str, int], object]
    suppressed: dict[str, int]
    fraud: int
    alerts: int
    invalid_reasons: list[str]


def dlq_record(
    reason: str, tp: TopicPartition, record, max_value_bytes: int, envelope: bool
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the DLQ record for an invalid input ``record`` of ``tp``."""
    headers = dlq_headers(reason, tp.topic, tp.partition, record.offset)
    key, value, cut = dlq_truncate(record.key, record.value, max_value_bytes)
    headers += cut
    if envelope:
        value = dlq_envelope(reason, tp.topic, tp.partition, record.offset, record.timestamp, key, value)
    elif not value and key is None:
        value = b""
    return key, value, headers


def send_outputs(
    producer: KafkaProducer,
    settings: OutputSettings,
    partitions: Mapping[str, int],
    parts: list[Part],
    scores: np.ndarray,
    model: LoadedModel,
    scored_at: str,
    book: PartitionBook,
    explained: Explanations | None = None,
) -> SentBatch:
    """Send the outputs of a scored batch (see the module docstring); updates ``book`` as it goes.

    Args:
        producer: the scorer's producer (inside the batch's transaction when exactly-once).
        settings: the output topics and how to write them.
        partitions: partition count of each topic.
        parts: the batch, ``[(tp, records, decoded)]``.
        scores: one score per valid transaction, in the order of ``parts``.
        model: the model that scored it (thresholds, version).
        scored_at: the decisions' ``scored_at`` time.
        book: the per-partition bookkeeping.
        explained: the reasons of the batch's alerted (or all) rows, by index among its valid rows.

    Returns:
        What was sent (futures not awaited).
    """
    topics = settings.topics
    send = producer.send
    n_out = partitions[topics.output]
    n_alert = partitions[topics.alerts]
    n_dlq = partitions[topics.dlq]
    n_input = partitions[topics.input]
    track_dirty = settings.track_changes
    writers, dirty, decided_by_p = book.writers, book.dirty, book.decided
    offset = 0
    n_fraud = n_alerts = 0
    futures: list = []
    invalid_reasons: list[str] = []
    last_sent: dict[tuple[str, int], object] = {}  # (output kind, partition) -> its last future
    suppressed = {kind: 0 for kind in OUTPUT_KINDS}
    for tp, records, d in parts:
        p = tp.partition
        decided = decided_by_p.get(p)  # outputs a crashed predecessor already made visible
        if len(d):
            s = scores[offset : offset + len(d)]
            why = explained.between(offset, offset + len(d)) if explained is not None else {}
            offset += len(d)
            in_decisions = explained is not None and explained.in_decisions
            values, fraud = encode_decisions(
                d.tx_id, d.customer_id, s, model.threshold, model.version, scored_at,
                why if in_decisions else None,
            )  # fmt: skip
            keys = [c.encode() for c in d.customer_id]
            out_p = p if n_out == n_input else None
            out_keys, out_values = keys, values
            if decided is not None:
                keep = [not Decided.take(decided.decisions, tx) for tx in d.tx_id]
                suppressed["decisions"] += keep.count(False)
                out_keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
                out_values = [v for v, ok in zip(values, keep, strict=True) if ok]
            if out_p is None:
                sent = [
                    send(topics.output, value=v, key=k) for k, v in zip(out_keys, out_values, strict=True)
                ]
            else:
                sent = send_many(producer, topics.output, out_p, out_keys, out_values)
            if sent:
                futures += sent
                last_sent[("decisions", p)] = sent[-1]
            n_fraud += int(fraud.sum())
            alert_p = p if n_alert == n_input else None
            for i in np.flatnonzero(s >= model.alert_threshold).tolist():
                n_alerts += 1
                if decided is not None and Decided.take(decided.alerts, d.tx_id[i]):
                    suppressed["alerts"] += 1
                    continue
                value = values[i]
                if i in why and not in_decisions:  # the alert carries reasons, the decision does not
                    value = encode_decision(
                        d.tx_id[i], d.customer_id[i], float(np.round(np.float64(s[i]), 6)),
                        FRAUD if fraud[i] else LEGIT, model.threshold, model.version, scored_at, why[i],
                    )  # fmt: skip
                futures.append(send(topics.alerts, value=value, key=keys[i], partition=alert_p))
                last_sent[("alerts", p)] = futures[-1]
            if track_dirty:
                dirty.setdefault(p, {}).update(dict.fromkeys(d.customer_id))
        writers.setdefault(p, ChangelogWriter()).input_offset = records[-1].offset + 1
        dlq_p = p if n_dlq == n_input else None
        for pos, reason in d.invalid:
            r = records[pos]
            invalid_reasons.append(reason)
            if decided is not None and r.offset in decided.dlq:
                decided.dlq.discard(r.offset)
                suppressed["dlq"] += 1
                continue
            key, value, headers = dlq_record(
                reason, tp, r, settings.dlq_max_value_bytes, settings.dlq_envelope
            )
            futures.append(send(topics.dlq, value=value, key=key, headers=headers, partition=dlq_p))
            last_sent[("dlq", p)] = futures[-1]
        if settings.idempotent:
            # Lower bound of where this batch's outputs of partition p start, committed with it.
            futures.append(
                send(topics.changelog, key=POSITIONS_KEY, partition=p,
                     value=encode_positions(records[0].offset, book.output_positions(p)))
            )  # fmt: skip
        if decided is not None and records[-1].offset + 1 >= decided.until:
            del decided_by_p[p]  # past anything an uncommitted batch can have covered
    return SentBatch(futures, last_sent, suppressed, n_fraud, n_alerts, invalid_reasons)


def changelog_records(book: PartitionBook, states: Mapping[int, CustomerState]) -> ChangelogBatch:
    """Changelog records for every partition with customers changed since its last record (``states``:
    each partition's customer state); forgets those changes."""
    out = []
    for p, dirty in book.dirty.items():
        writer = book.writers.get(p)
        if dirty and writer is not None and p in states:
            out.append((p, writer.records(states[p], list(dirty), writer.input_offset)))
        dirty.clear()
    return out


def send_changelog(producer: KafkaProducer, topic: str, changelog: ChangelogBatch) -> list:
    """Append ``changelog_records`` to the changelog ``topic``; returns the futures."""
    futures: list = []
    for p, records in changelog:
        futures += send_many(producer, topic, p, [k for k, _ in records], [v for _, v in records])
    return futures
