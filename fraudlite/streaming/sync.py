"""Event-time synchronization of the partitions one scorer owns.

Terminal features of a transaction on day ``D`` count every partition's transactions of days
``<= D - delay_days``. The scorer feeds its own partitions into the terminal table as it processes them,
so it must not let one partition run ahead: a row of day ``D`` may be processed only once every owned
partition has processed all of its days ``<= D - delay_days``. kafka-python readily hands over a
whole partition before the next one (a fetch returns up to 1 MB per partition), so without this a
replayed backlog would be scored with most of the other partitions' history missing.

``EventTimeSync`` keeps, per partition, the records fetched but not processed yet (decoded once) and
releases them in event-time lockstep: with ``f[p]`` the day of partition ``p``'s next unprocessed row,
rows up to day ``min_p f[p] + max_skew_days`` are released, where ``max_skew_days`` is at most
``delay_days - 1`` (exactness) and the terminal table's slack (no day still needed is recycled). A
partition with nothing buffered does not hold the others back once it is caught up (nothing more to
read) or has not produced anything for ``max_idle_s``; until then it does, by its last processed day.
``max_idle_s`` is a liveness escape for a partition whose announced data never arrives, not a pacing
knob: on a loaded machine a fetch can take over a second, and releasing the others then lets them run
more than ``delay_days`` ahead, scoring terminal features without that partition's days (measured: an
uninterrupted scorer over a 200 000-transaction backlog got ~1% of its terminal counts wrong with 1 s).
So it is 30 s, and using it is logged.
The slowest partition can always proceed, so this never deadlocks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
from kafka import TopicPartition

from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.kafkaio.wire import DecodedBatch, TransactionDecoder

__all__ = ["EventTimeSync", "Part"]

logger = logging.getLogger(__name__)

Part = tuple[TopicPartition, list, DecodedBatch]


class EventTimeSync:
    """Per-partition buffers of decoded records, released in event-time lockstep.

    Args:
        decoder: decodes raw record values.
        max_skew_days: how many days a partition may be ahead of the slowest one; None = no limit.
        max_idle_s: how long a partition with nothing fetched may hold the others back.
    """

    def __init__(
        self, decoder: TransactionDecoder, max_skew_days: int | None, max_idle_s: float = 30.0
    ) -> None:
        self.decoder = decoder
        self.max_skew_days = max_skew_days
        self.max_idle_s = max_idle_s
        self._held: dict[TopicPartition, tuple[list, DecodedBatch]] = {}
        self._last_day: dict[TopicPartition, int] = {}
        self._since: dict[TopicPartition, float] = {}
        self._released: set[TopicPartition] = set()  # partitions the idle escape was used for (logged)

    def add(self, tp: TopicPartition, records: list) -> None:
        """Decode and buffer records just polled for ``tp`` (after anything already held)."""
        decoded = self.decoder.decode([r.value for r in records])
        held = self._held.get(tp)
        if held is None:
            self._held[tp] = (records, decoded)
        else:
            self._held[tp] = (held[0] + records, DecodedBatch.concat(held[1], decoded, len(held[0])))

    @property
    def buffered(self) -> int:
        """Records buffered in all."""
        return sum(len(records) for records, _ in self._held.values())

    def buffered_in(self, tp: TopicPartition) -> int:
        """Records buffered for one partition."""
        held = self._held.get(tp)
        return 0 if held is None else len(held[0])

    @property
    def held(self) -> set[TopicPartition]:
        """Partitions with buffered records."""
        return set(self._held)

    def full(self, max_records: int) -> set[TopicPartition]:
        """Partitions holding more than ``max_records`` records: pause their fetching (bounds memory;
        pausing only then keeps the consumer's own prefetched data for the others)."""
        return {tp for tp, (records, _) in self._held.items() if len(records) > max_records}

    def clear(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Drop buffered records (e.g. before seeking), of some or all partitions."""
        for tp in list(self._held) if partitions is None else list(partitions):
            self._held.pop(tp, None)
            self._since.pop(tp, None)

    def reset(self) -> None:
        """Forget everything (before the consumer is repositioned: rebalance, rollback)."""
        self._held.clear()
        self._since.clear()
        self._released.clear()
        self._last_day.clear()

    def take(
        self,
        assigned: Iterable[TopicPartition],
        caught_up: Callable[[TopicPartition], bool],
        max_records: int | None = None,
    ) -> list[Part]:
        """Release what may be processed now: ``[(tp, records, decoded)]`` (records in offset order).

        Args:
            assigned: the partitions this scorer owns.
            caught_up: whether a partition's position is at its end (nothing more to fetch now).
            max_records: release at most this many records in all (the batch size).
        """
        if not self._held:
            return []
        limit = self._limit(assigned, caught_up)
        budget = math.inf if max_records is None else max_records
        out: list[Part] = []
        held = self._held
        order = sorted(held, key=lambda tp: int(held[tp][1].ts[0]) if len(held[tp][1]) else -(2**62))
        for tp in order:  # the furthest behind first
            if budget <= 0:
                break
            records, decoded = self._held[tp]
            cut = len(records)
            if limit is not None and len(decoded):
                late = np.flatnonzero(decoded.ts // SECONDS_PER_DAY > limit)
                if len(late):
                    cut = int(decoded.index[late[0]])
            cut = int(min(cut, budget))
            if cut == 0:
                continue
            budget -= cut
            if cut == len(records):
                del self._held[tp]
                part = (tp, records, decoded)
            else:
                head, tail = decoded.split(cut)
                self._held[tp] = (records[cut:], tail)
                part = (tp, records[:cut], head)
            if len(part[2]):
                self._last_day[tp] = int(part[2].ts[-1]) // SECONDS_PER_DAY
            out.append(part)
        return out

    def _limit(
        self, assigned: Iterable[TopicPartition], caught_up: Callable[[TopicPartition], bool]
    ) -> int | None:
        """Last day that may be released now, or None for no limit."""
        if self.max_skew_days is None:
            return None
        now = time.monotonic()
        frontier = math.inf
        for tp in assigned:
            held = self._held.get(tp)
            if held is not None and len(held[1]):
                frontier = min(frontier, int(held[1].ts[0]) // SECONDS_PER_DAY)
                self._since.pop(tp, None)
                self._released.discard(tp)
                continue
            if held is not None or caught_up(tp):
                self._since.pop(tp, None)  # an idle wait starts afresh next time
                self._released.discard(tp)
                continue  # only invalid records buffered, or nothing more to read: no constraint
            since = self._since.setdefault(tp, now)
            if now - since > self.max_idle_s:
                if tp not in self._released:
                    self._released.add(tp)
                    logger.warning(
                        "%s[%d]: records announced but none fetched for %.0fs; no longer holding the other "
                        "partitions back for it (its terminal counts may arrive late)",
                        tp.topic, tp.partition, now - since,
                    )  # fmt: skip
                continue  # data announced but not arriving: do not stall everyone
            self._released.discard(tp)
            frontier = min(frontier, self._last_day.get(tp, -math.inf))
        if frontier == math.inf:
            return None
        if frontier == -math.inf:
            return -(2**62)  # wait for that partition's first records
        return int(frontier) + self.max_skew_days
