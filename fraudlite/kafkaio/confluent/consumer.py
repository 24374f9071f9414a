"""librdkafka's group consumer with the kafka-python calls of the scorer (``kafkaio.confluent``).

Where librdkafka differs from kafka-python, and what ``ConfluentConsumer`` does about it:

* rebalance callbacks run inside ``poll`` on the calling thread (kafka-python: its IO thread); the listener
  only records the change either way, and the partitions are assigned from their committed offsets, as
  kafka-python does;
* ``position`` after a ``seek`` is unknown to librdkafka until a record is consumed, so the adapter keeps
  each partition's position itself (the seek target, then the last polled offset + 1);
* a ``seek`` on a partition whose fetcher has not started yet (just assigned) fails with ``_STATE``; the
  adapter then re-assigns every partition at its kept position, which always takes;
* librdkafka's ``pause`` drops the records it has fetched for the partition and fetches them again after
  ``resume``: one broker round trip per pause, and the event-time sync pauses partitions all the time.
  ``pause`` here parks instead, as kafka-python does: records of a paused partition that arrive are kept
  and handed out, first, after ``resume``; only a partition with ``PARK_LIMIT`` records parked is paused
  in librdkafka too (it then fetches again from after the parked records);
* librdkafka has no liveness hook between polls: ``keep_alive`` consumes at most one record (at most once
  a second) and parks it;
* ``connected`` asks the broker for the topic's metadata on a handle of its own (librdkafka reports a lost
  connection only inside ``poll``, and the main thread may be blocked in a commit when the broker goes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from kafka import TopicPartition
from kafka.errors import IllegalStateError

from fraudlite.kafkaio.confluent.config import kafka_error, librdkafka_tp, require_confluent

__all__ = ["ConfluentConsumer", "Record", "PARK_LIMIT"]

logger = logging.getLogger(__name__)

PARK_LIMIT = 20_000  # parked records of a paused partition before librdkafka stops fetching it


class Record(NamedTuple):
    """The parts of kafka-python's ``ConsumerRecord`` the streaming package reads."""

    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int  # ms
    headers: list | None


class ConfluentConsumer:
    """A librdkafka group consumer with the kafka-python calls of the scorer (see the module docstring)."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._ck = require_confluent()
        self._topic: str | None = None  # subscribed (the health probe asks for its metadata)
        self._probe = None
        self._probe_conf = {
            k: v
            for k, v in conf.items()
            if k.split(".")[0] in ("bootstrap", "security", "sasl", "ssl", "client")
        } | {"log_level": 0}
        # librdkafka prefetches up to 64 MB by default; a few batches ahead keep the scorer busy as well
        prefetch = {"queued.max.messages.kbytes": 16_384, "queued.min.messages": 20_000}
        self._c = self._ck.Consumer({**prefetch, **conf, "error_cb": self._on_error})
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()  # paused for the caller
        self._stopped: set[TopicPartition] = set()  # ... and in librdkafka (PARK_LIMIT records parked)
        self._parked: dict[TopicPartition, list[Record]] = {}  # consumed from librdkafka, not handed out
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._last_keep_alive = 0.0

    def _on_error(self, err) -> None:
        E = self._ck.KafkaError
        # a lost broker is the health probe's to report (``connected``); anything else is worth a line
        quiet = err.code() in (E._ALL_BROKERS_DOWN, E._TRANSPORT, E._RESOLVE)
        logger.log(logging.DEBUG if quiet else logging.WARNING, "librdkafka: %s", err.str())

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def _tp_set(self, parts) -> set[TopicPartition]:
        return {self._tp(p.topic, p.partition) for p in parts}

    # -- the group ------------------------------------------------------------------------------------

    def subscribe(self, topics: list[str], listener=None) -> None:
        """Join the group for ``topics``; ``listener`` is kafka-python's ``ConsumerRebalanceListener``."""

        def on_assign(_consumer, parts) -> None:
            # The client assigns ``parts`` (from the committed offsets) when this returns.
            assigned = self._tp_set(parts)
            self._forget(assigned)
            if listener is not None:
                listener.on_partitions_assigned(assigned)

        def on_revoke(_consumer, parts) -> None:
            revoked = self._tp_set(parts)
            self._forget(revoked)
            if listener is not None:
                listener.on_partitions_revoked(revoked)

        def on_lost(_consumer, parts) -> None:
            lost = self._tp_set(parts)
            self._forget(lost)
            if listener is not None:
                listener.on_partitions_lost(lost)

        self._topic = topics[0]
        self._call(
            "subscribe", self._c.subscribe, topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost
        )

    def _forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._positions.pop(tp, None)
            self._parked.pop(tp, None)
        self._paused -= tps
        self._stopped -= tps

    def assignment(self) -> set[TopicPartition]:
        return self._tp_set(self._call("assignment", self._c.assignment))

    def group_metadata(self):
        return self._c.consumer_group_metadata()

    # -- records --------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records`` records of unpaused partitions, ``{tp: [Record]}`` in offset order; waits up
        to ``timeout_ms`` for the first when none is there, and returns as soon as one is.

        Raises:
            KafkaError: a fetch or the group failed (other than a partition's end).
        """
        out: dict[TopicPartition, list[Record]] = {}
        room = max_records
        for tp in [tp for tp in self._parked if tp not in self._paused]:
            rows = self._parked[tp]
            out[tp], rest = rows[:room], rows[room:]
            room -= len(out[tp])
            if rest:
                self._parked[tp] = rest
            else:
                del self._parked[tp]
            if room == 0:
                break
        if room > 0:
            # What is there now; else wait for the first record only: librdkafka's consume waits for all
            # ``room`` records (or the timeout), kafka-python's poll returns as soon as any are there.
            messages = self._call("poll", self._c.consume, room, 0)
            if not messages and not out and timeout_ms > 0:
                messages = self._call("poll", self._c.consume, 1, timeout_ms / 1000)
                if messages and room > 1:
                    messages += self._call("poll", self._c.consume, room - 1, 0)
            self._take(messages, out)
        for tp, rows in out.items():
            self._positions[tp] = rows[-1].offset + 1
        return out

    def _take(self, messages: list, out: dict[TopicPartition, list[Record]]) -> None:
        """Sort consumed ``messages`` into ``out`` (unpaused partitions) or the parked records."""
        key = None
        rows: list[Record] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == self._ck.KafkaError._PARTITION_EOF:
                    continue
                raise kafka_error(self._ck.KafkaException(err), "poll")
            k = (m.topic(), m.partition())
            if k != key:
                key = k
                tp = self._tp(*k)
                rows = (self._parked if tp in self._paused else out).setdefault(tp, [])
            rows.append(Record(m.key(), m.value(), m.offset(), m.timestamp()[1], m.headers()))
        full = [tp for tp in self._paused - self._stopped if len(self._parked.get(tp, ())) >= PARK_LIMIT]
        if full:
            self._call("pause", self._c.pause, [librdkafka_tp(tp) for tp in full])
            self._stopped.update(full)

    def keep_alive(self) -> None:
        """Reset ``max.poll.interval.ms`` during long work between polls (see the module docstring)."""
        now = time.monotonic()
        if now - self._last_keep_alive < 1.0:
            return
        self._last_keep_alive = now
        try:
            messages = self._c.consume(1, 0)
        except self._ck.KafkaException as e:  # reported by the next poll
            logger.debug("keep_alive: %s", e)
            return
        for m in messages:
            if m.error() is None:
                tp = self._tp(m.topic(), m.partition())
                self._parked.setdefault(tp, []).append(
                    Record(m.key(), m.value(), m.offset(), m.timestamp()[1], m.headers())
                )

    # -- positions ------------------------------------------------------------------------------------

    def committed(self, tp: TopicPartition) -> int | None:
        (part,) = self._call("committed", self._c.committed, [librdkafka_tp(tp)], timeout=30)
        return part.offset if part.offset >= 0 else None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._parked.pop(tp, None)
        if tp in self._stopped:  # the fetcher must run to take the seek
            self._call("resume", self._c.resume, [librdkafka_tp(tp)])
            self._stopped.discard(tp)
        try:
            self._c.seek(librdkafka_tp(tp, offset))
        except self._ck.KafkaException as e:
            if e.args[0].code() != self._ck.KafkaError._STATE:
                raise kafka_error(e, f"seek {tp.topic}[{tp.partition}] to {offset}") from e
            self._positions[tp] = offset
            self._reassign()
        self._positions[tp] = offset

    def _reassign(self) -> None:
        """Assign every partition at its kept position (else its committed offset), keep the paused ones."""
        parts = [
            librdkafka_tp(tp, self._positions[tp]) if tp in self._positions else librdkafka_tp(tp)
            for tp in self._tp_set(self._c.assignment())
        ]
        self._call("assign", self._c.assign, parts)
        self._parked.clear()
        self._stopped.clear()

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        return self._call("watermarks", self._c.get_watermark_offsets, librdkafka_tp(tp), timeout=30)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps or self.assignment():
            self.seek(tp, self._watermarks(tp)[0])

    def seek_to_end(self, *tps: TopicPartition) -> None:
        # The high watermark of a fetch response first: the embedded broker's ListOffsets(latest) may
        # answer the last batch's base offset + 1 (kafkaio.clients); kafka-python's seek_to_end sees the same.
        for tp in tps or self.assignment():
            high = self.highwater(tp)
            self.seek(tp, self._watermarks(tp)[1] if high is None else high)

    def position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            (part,) = self._call("position", self._c.position, [librdkafka_tp(tp)])
            if part.offset >= 0:
                return part.offset
            committed = self.committed(tp)
            if committed is not None:
                return committed
            return self._watermarks(tp)[0]
        return self._positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        """The high watermark from the last fetch response (no request); None before one."""
        try:
            _, high = self._c.get_watermark_offsets(librdkafka_tp(tp), cached=True)
        except self._ck.KafkaException:
            return None
        return high if high >= 0 else None

    def pause(self, *tps: TopicPartition) -> None:
        """Hand out no records of ``tps`` until ``resume`` (they are parked: see the module docstring)."""
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)
        stopped = self._stopped.intersection(tps)
        if stopped:
            self._call("resume", self._c.resume, [librdkafka_tp(tp) for tp in stopped])
            self._stopped -= stopped

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def commit(self, offsets: Mapping[TopicPartition, Any]) -> None:
        """Commit ``{tp: OffsetAndMetadata}`` synchronously (at-least-once).

        Raises:
            KafkaError: the commit failed (a lost generation: ``CommitFailedError``).
        """
        parts = [librdkafka_tp(tp, o.offset) for tp, o in offsets.items()]
        for part in self._call("commit", self._c.commit, offsets=parts, asynchronous=False) or ():
            if part.error is not None:
                raise kafka_error(self._ck.KafkaException(part.error), "commit")

    # -- liveness -------------------------------------------------------------------------------------

    def connected(self) -> bool:
        """Whether the broker answers a metadata request for the subscribed topic within a second.

        A request, unlike kafka-python's probe: librdkafka reports a lost connection only through callbacks
        that run inside ``poll``, and the main thread may be blocked in a commit when the broker goes. On
        a handle of its own: the consumer's serializes calls, so a blocked commit would block the probe.
        """
        if self._probe is None:
            self._probe = self._ck.Producer(self._probe_conf)
        try:
            self._probe.list_topics(self._topic, timeout=1.0)
        except self._ck.KafkaException:
            return False
        return True

    def close(self, autocommit: bool = False) -> None:
        """Leave the group (offsets are committed by transactions or ``commit``, never here)."""
        self._probe = None
        self._c.close()

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._ck.KafkaException as e:
            raise kafka_error(e, what) from e
        except RuntimeError as e:  # a closed consumer
            raise IllegalStateError(f"{what}: {e}") from e
