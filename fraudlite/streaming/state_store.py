"""Customer state that follows its input partition: a compacted changelog topic, written in the output's
Kafka transaction and read back on assignment.

Changelog partition ``p`` belongs to input partition ``p``. Each processed batch appends one *delta* (the
rows of the customers the batch touched, ``CustomerState.export_rows``); once the deltas since the last
*snapshot* outweigh it, the batch writes a full snapshot instead (``CustomerState.to_bytes``) and
tombstones the deltas it supersedes, so a compacted topic stays about one state in size. Blobs larger
than ``PART_BYTES`` are split into parts (one record each, all in the same transaction).

Record value = 40-byte header + payload (snapshots zlib-compressed; deltas raw, since compressing them
costs more CPU per transaction than sending their bytes). The header carries the kind, flags, snapshot
id, delta sequence, part index/count and ``input_offset``: the next input offset the state reflects after this record, so a
restored state knows exactly which input records it already contains (the scorer seeks past them; under
exactly-once this always equals the committed offset).

Keys: ``snapshot:<part>`` and ``delta:<snapshot id>:<seq>:<part>``; restore replays the records in offset
order with "last value per key wins, null deletes" -- exactly what compaction would keep -- so it gives
the same state whether or not the broker has compacted yet.

A transaction committed only in part (the embedded broker commits a crashed producer's open transaction
as far as it got) can leave the newest snapshot or delta with parts missing. Restore then uses the newest
complete data (the older records are still in the log on that broker: it never compacts) and tells the
writer to start over with a fresh snapshot under a new id, so nothing incomplete is ever built upon.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fraudlite.errors import DataError
from fraudlite.features.online import CustomerState
from fraudlite.features.spec import FeatureSpec

__all__ = [
    "PART_BYTES",
    "MIN_SNAPSHOT_BYTES",
    "SNAPSHOT",
    "DELTA",
    "ChangelogWriter",
    "restore_state",
    "encode_value",
    "decode_value",
]

PART_BYTES = 512 * 1024
MIN_SNAPSHOT_BYTES = 4 * 1024 * 1024
SNAPSHOT, DELTA = 1, 2
_MAGIC = b"FLCL"
_VERSION = 1
_HEADER = struct.Struct("<4sBBHqqIIq")  # magic, version, kind, flags, snapshot id, seq, part, parts, offset
_ZLIB = 1  # flag: the joined payload is zlib-compressed


@dataclass(frozen=True)
class _Header:
    kind: int
    flags: int
    snapshot_id: int
    seq: int
    part: int
    parts: int
    input_offset: int


def encode_value(header: _Header, payload: bytes) -> bytes:
    """One changelog record value: header + payload part (already compressed)."""
    return (
        _HEADER.pack(
            _MAGIC, _VERSION, header.kind, header.flags, header.snapshot_id, header.seq, header.part, header.parts,
            header.input_offset,
        )
        + payload
    )  # fmt: skip


def decode_value(value: bytes) -> tuple[_Header, bytes]:
    """Split a record value into header and payload part.

    Raises:
        DataError: not a fraudlite changelog record (or another format version).
    """
    if len(value) < _HEADER.size:
        raise DataError("changelog record shorter than its header")
    magic, version, kind, flags, snapshot_id, seq, part, parts, offset = _HEADER.unpack_from(value)
    if magic != _MAGIC or version != _VERSION or kind not in (SNAPSHOT, DELTA) or not 0 <= part < parts:
        raise DataError("not a fraudlite changelog record (or written by another version)")
    return _Header(kind, flags, snapshot_id, seq, part, parts, offset), value[_HEADER.size :]


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)] or [b""]


@dataclass
class ChangelogWriter:
    """Bookkeeping of one partition's changelog: which records the next batch must write.

    Attributes:
        snapshot_id: id of the latest snapshot (0 = none yet: deltas apply to an empty state).
        snapshot_parts: how many ``snapshot:<i>`` keys the latest snapshot uses.
        seq: number of deltas written since that snapshot.
        delta_bytes: their total (compressed) size.
        snapshot_bytes: size of the latest snapshot (compressed).
        input_offset: next input offset the state reflects (-1 = nothing processed yet).
    """

    snapshot_id: int = 0
    snapshot_parts: int = 0
    seq: int = 0
    delta_bytes: int = 0
    snapshot_bytes: int = 0
    input_offset: int = -1
    delta_keys: list[bytes] = field(default_factory=list)
    force_snapshot: bool = False  # after restoring around an incomplete record: persist all anew

    def records(
        self, state: CustomerState, customer_ids: Sequence[str], input_offset: int
    ) -> list[tuple[bytes, bytes | None]]:
        """The ``(key, value)`` records (value None = tombstone) that persist a just-processed batch.

        Args:
            state: the partition's customer state, already updated by the batch.
            customer_ids: customers the batch touched (duplicates allowed).
            input_offset: next input offset after the batch.
        """
        if self.force_snapshot:
            return self.snapshot(state, input_offset)
        delta = state.export_rows(list(dict.fromkeys(customer_ids)))
        self.input_offset = input_offset
        if self.delta_bytes + len(delta) <= max(MIN_SNAPSHOT_BYTES, self.snapshot_bytes):
            parts = _split(delta)
            out = []
            for i, part in enumerate(parts):
                key = b"delta:%d:%d:%d" % (self.snapshot_id, self.seq, i)
                header = _Header(DELTA, 0, self.snapshot_id, self.seq, i, len(parts), input_offset)
                out.append((key, encode_value(header, part)))
                self.delta_keys.append(key)
            self.seq += 1
            self.delta_bytes += len(delta)
            return out
        return self.snapshot(state, input_offset)

    def snapshot(self, state: CustomerState, input_offset: int) -> list[tuple[bytes, bytes | None]]:
        """Records of a full snapshot plus tombstones for everything it supersedes."""
        blob = zlib.compress(state.to_bytes(), 1)
        parts = _split(blob)
        snapshot_id = self.snapshot_id + 1
        out: list[tuple[bytes, bytes | None]] = []
        for i, part in enumerate(parts):
            header = _Header(SNAPSHOT, _ZLIB, snapshot_id, 0, i, len(parts), input_offset)
            out.append((b"snapshot:%d" % i, encode_value(header, part)))
        out += [(b"snapshot:%d" % i, None) for i in range(len(parts), self.snapshot_parts)]
        out += [(key, None) for key in self.delta_keys]
        self.snapshot_id, self.snapshot_parts, self.snapshot_bytes = snapshot_id, len(parts), len(blob)
        self.seq, self.delta_bytes, self.delta_keys = 0, 0, []
        self.input_offset = input_offset
        self.force_snapshot = False
        return out


def restore_state(spec: FeatureSpec, records: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[
    CustomerState, ChangelogWriter
]:  # fmt: skip
    """Rebuild a partition's customer state from its changelog records, given in offset order.

    Args:
        spec: the feature spec the state was written with.
        records: ``(key, value)`` pairs (value None = tombstone), e.g. from a read_committed reader.

    Returns:
        The state and a writer that continues the changelog where it ends.

    Raises:
        DataError: a corrupt record, an incomplete snapshot or delta, or a state of another spec.
    """
    history: list[bytes] = []
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        if key is None:
            raise DataError("changelog record without a key")
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
            history.append(value)
    snapshots, deltas = _index(latest.values())
    writer = ChangelogWriter()
    newest = max(snapshots, default=0)
    used_ids, used_parts, used_delta_keys = 0, 0, []
    if newest and not _complete(snapshots[newest]):
        # A partly committed transaction: rebuild from every value in the log (see the module docstring)
        # and make the writer continue past every id and key used so far.
        used_ids = newest
        used_parts = max(h.parts for parts in snapshots.values() for h, _ in parts.values())
        used_delta_keys = [k for k in latest if k.startswith(b"delta:")]
        snapshots, deltas = _index(history)
        newest = max(
            (sid for sid, parts in snapshots.items() if _complete(parts) and sid < used_ids), default=0
        )
        writer.force_snapshot = True

    state = CustomerState(spec)
    snapshot_id = newest
    if snapshot_id:
        parts = snapshots[snapshot_id]
        header = next(iter(parts.values()))[0]
        blob = _join(parts, header.parts, f"snapshot {snapshot_id}")
        state = CustomerState.from_bytes(spec, _inflate(blob, header.flags, f"snapshot {snapshot_id}"))
        writer.snapshot_id, writer.snapshot_parts, writer.snapshot_bytes = (
            snapshot_id,
            header.parts,
            len(blob),
        )
        writer.input_offset = header.input_offset
    for (sid, seq), parts in sorted(deltas.items()):
        if sid != snapshot_id:
            continue  # superseded by the snapshot (compaction would have removed it)
        header = next(iter(parts.values()))[0]
        writer.delta_keys += [b"delta:%d:%d:%d" % (sid, seq, i) for i in range(header.parts)]
        writer.seq = seq + 1  # never reuse a (snapshot, seq) key, complete or not
        if not _complete(parts):
            if seq != max(q for s_, q in deltas if s_ == sid):
                raise DataError(
                    f"changelog delta {sid}:{seq} is incomplete: parts {sorted(parts)} of {header.parts}"
                )
            writer.force_snapshot = True  # the newest delta, partly committed: skipped
            continue
        blob = _join(parts, header.parts, f"delta {sid}:{seq}")
        state.import_rows(_inflate(blob, header.flags, f"delta {sid}:{seq}"))
        writer.delta_bytes += len(blob)
        writer.input_offset = max(writer.input_offset, header.input_offset)
    if used_ids:
        writer.snapshot_id = max(writer.snapshot_id, used_ids)
        writer.snapshot_parts = max(writer.snapshot_parts, used_parts)
        writer.delta_keys = sorted(set(writer.delta_keys) | set(used_delta_keys))
    return state, writer


def _index(values: Iterable[bytes]) -> tuple[dict, dict]:
    """``({snapshot id: {part: (header, payload)}}, {(snapshot id, seq): {part: (header, payload)}})``."""
    snapshots: dict[int, dict[int, tuple[_Header, bytes]]] = {}
    deltas: dict[tuple[int, int], dict[int, tuple[_Header, bytes]]] = {}
    for value in values:
        header, part = decode_value(value)
        if header.kind == SNAPSHOT:
            snapshots.setdefault(header.snapshot_id, {})[header.part] = (header, part)
        else:
            deltas.setdefault((header.snapshot_id, header.seq), {})[header.part] = (header, part)
    return snapshots, deltas


def _complete(parts: dict[int, tuple[_Header, bytes]]) -> bool:
    count = next(iter(parts.values()))[0].parts
    return sorted(parts) == list(range(count)) and all(h.parts == count for h, _ in parts.values())


def _join(parts: dict[int, tuple[_Header, bytes]], count: int, what: str) -> bytes:
    if sorted(parts) != list(range(count)):
        raise DataError(f"changelog {what} is incomplete: parts {sorted(parts)} of {count}")
    return b"".join(parts[i][1] for i in range(count))


def _inflate(blob: bytes, flags: int, what: str) -> bytes:
    if not flags & _ZLIB:
        return blob
    try:
        return zlib.decompress(blob)
    except zlib.error as e:
        raise DataError(f"changelog {what} is corrupt: {e}") from None
