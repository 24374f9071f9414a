"""Idempotent outputs: what a new owner of an input partition must not emit again after a crash.

Why this exists. Exactly-once rests on one Kafka transaction per batch carrying the outputs *and* the input
offsets. A transaction left open by a crashed scorer must be aborted by the broker (Apache Kafka does, on
``transaction.timeout.ms`` or when a producer with the same ``transactional.id`` starts). The embedded
broker (Tansu) does neither: it never times a transaction out, and a new producer with the same id
*commits* the dead producer's open transaction -- outputs included, offsets not. It also shows aborted
records to ``read_committed`` readers. Either way the next owner of the partition finds decisions in the
output topics for input records it is about to process again.

The remedy is to make the outputs idempotent per input partition:

* Outputs of input partition ``p`` go to partition ``p`` of the decisions, alerts and DLQ topics (same
  partition counts; the scorer creates them so).
* Every batch writes, in its transaction, a small ``positions`` record to changelog partition ``p``:
  offsets in the three output partitions below which no output of any input record at or after the
  batch's first offset can lie (a lower bound of where the batch's outputs start).
* On assignment the new owner reads the output partitions from the last committed ``positions`` to their
  end (``read_committed``: exactly what downstream readers see, on either broker) and collects the
  ``tx_id``s decided and alerted and the source offsets sent to the DLQ (``Decided``). While it
  re-processes the first ``batch.max_records`` input records (no uncommitted batch can be longer), a
  record whose output is already there updates the state as usual but is not emitted again.

Cost: one tiny record per partition per batch, and at assignment a read of about one batch per output
partition. Needs the state changelog (that is where ``positions`` lives); without it, or in
at-least-once mode, nothing is skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec
from kafka import KafkaConsumer, TopicPartition

from fraudlite.kafkaio.clients import read_partition_to_end

__all__ = [
    "POSITIONS_KEY",
    "OUTPUT_KINDS",
    "Decided",
    "encode_positions",
    "decode_positions",
    "decided_tx_ids",
    "dlq_source_offsets",
    "scan_outputs",
]

POSITIONS_KEY = b"positions"
OUTPUT_KINDS = ("decisions", "alerts", "dlq")


class _Positions(msgspec.Struct, gc=False):
    input: int
    decisions: int
    alerts: int
    dlq: int


class _TxId(msgspec.Struct, gc=False):
    tx_id: str


_encode = msgspec.json.Encoder().encode
_decode_positions = msgspec.json.Decoder(_Positions).decode
_decode_tx = msgspec.json.Decoder(_TxId).decode


def encode_positions(input_offset: int, positions: dict[str, int]) -> bytes:
    """Value of the ``positions`` changelog record."""
    return _encode(_Positions(input_offset, *(int(positions.get(k, 0)) for k in OUTPUT_KINDS)))


def decode_positions(value: bytes | None) -> dict[str, int] | None:
    """``{"decisions": off, "alerts": off, "dlq": off}`` of a ``positions`` record; None if unusable."""
    if not value:
        return None
    try:
        p = _decode_positions(value)
    except msgspec.MsgspecError:
        return None
    return {k: max(0, getattr(p, k)) for k in OUTPUT_KINDS}


def decided_tx_ids(values: list[bytes | None]) -> list[str]:
    """The ``tx_id`` of every decision/alert value (anything else is ignored)."""
    out = []
    for v in values:
        if v:
            try:
                out.append(_decode_tx(v).tx_id)
            except msgspec.MsgspecError:
                pass
    return out


def dlq_source_offsets(records: list, topic: str, partition: int) -> list[int]:
    """Source offsets of DLQ records that came from ``topic[partition]`` (from their headers)."""
    want_topic, want_partition = topic.encode(), str(partition).encode()
    out = []
    for r in records:
        h = dict(r.headers or ())
        if (
            h.get("fraudlite.source.topic") == want_topic
            and h.get("fraudlite.source.partition") == want_partition
        ):
            try:
                out.append(int(h["fraudlite.source.offset"]))
            except (KeyError, ValueError):
                pass
    return out


@dataclass
class Decided:
    """Outputs already visible for one input partition, consumed as its records are re-processed.

    Attributes:
        decisions, alerts: ``tx_id`` -> how many such outputs are there (a multiset).
        dlq: input offsets already in the DLQ.
        start: output offsets the scan started from (the ``positions`` to write while this is active).
        until: input offset from which nothing can have been decided yet (set when positioned).
    """

    decisions: Counter = field(default_factory=Counter)
    alerts: Counter = field(default_factory=Counter)
    dlq: set[int] = field(default_factory=set)
    start: dict[str, int] = field(default_factory=dict)
    until: int = -1

    def __bool__(self) -> bool:
        return bool(self.decisions or self.alerts or self.dlq)

    def __len__(self) -> int:
        return sum(self.decisions.values()) + sum(self.alerts.values()) + len(self.dlq)

    @staticmethod
    def take(counter: Counter, tx_id: str) -> bool:
        """True (and one fewer left) if an output for ``tx_id`` is already there."""
        n = counter.get(tx_id, 0)
        if n <= 0:
            return False
        if n == 1:
            del counter[tx_id]
        else:
            counter[tx_id] = n - 1
        return True


def scan_outputs(
    reader: KafkaConsumer,
    end_reader: KafkaConsumer,
    outputs: Mapping[str, str],
    input_topic: str,
    partition: int,
    start: Mapping[str, int] | None,
    timeout_s: float,
    tick: Callable[[], None] | None = None,
) -> tuple[Decided, dict[str, int]]:
    """Read partition ``partition`` of each output topic from ``start[kind]`` (else its beginning) to its
    end and collect what is there.

    Args:
        reader: a ``read_committed`` group-less consumer: what downstream readers see, on either broker.
        end_reader: a ``read_uncommitted`` consumer for the high watermarks.
        outputs: ``{kind: topic}`` for the kinds of ``OUTPUT_KINDS`` aligned with the input partitions.
        input_topic: DLQ records count only if they came from this topic's ``partition``.
        start: the last committed ``positions`` (None: from the beginning).
        timeout_s: per topic (an open transaction of a dead producer blocks a read_committed reader).
        tick: called between fetches (keeps the group membership alive).

    Returns:
        (what was found, with ``start`` set to where the scan began; the end offsets reached per kind).

    Raises:
        KafkaIOError: an output partition could not be read to its end within ``timeout_s``.
    """
    decided = Decided()
    ends: dict[str, int] = {}
    for kind, topic in outputs.items():
        tp = TopicPartition(topic, partition)
        high = end_reader.end_offsets([tp])[tp]
        first = (start or {}).get(kind)
        if first is None or first > high:  # no positions yet, or a topic recreated since
            first = end_reader.beginning_offsets([tp])[tp]

        def handle(batch: list, kind: str = kind) -> None:
            if kind == "dlq":
                decided.dlq.update(dlq_source_offsets(batch, input_topic, partition))
            else:
                getattr(decided, kind).update(decided_tx_ids([r.value for r in batch]))

        ends[kind] = read_partition_to_end(reader, end_reader, tp, handle, timeout_s, start=first, tick=tick)
        decided.start[kind] = first
    return decided, ends
