"""Thin kafka-python adapters: client construction, topic creation, reading a partition to its end.

Everything that talks to the broker outside the scorer's consume/produce loop lives here, so the rest of
the streaming package is pure logic over arrays. Broker quirks we work around (both seen on the embedded
Tansu broker, harmless on Apache Kafka):

* ``ListOffsets(latest)`` may report the base offset of the last record batch + 1 instead of the true
  end; a fetch returns whole batches, so "read until position >= end" still reads everything.
* Under ``read_committed`` the end offset reads 0 while any transaction is open on the partition, so
  targets are taken from a ``read_uncommitted`` view (the high watermark) and the ``read_committed``
  reader simply waits until the open transaction ends.

And one kafka-python 3.0.x bug (``release_parked``): a partition paused while it had fetched records is
never fetched again after ``resume``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from fraudlite.errors import FraudliteError
from fraudlite.streaming.config import KafkaSecurity

__all__ = [
    "KafkaIOError",
    "TopicSpec",
    "make_consumer",
    "make_producer",
    "make_admin",
    "ensure_topics",
    "partition_counts",
    "read_partition_to_end",
    "release_parked",
]

logger = logging.getLogger(__name__)


class KafkaIOError(FraudliteError, RuntimeError):
    """A Kafka operation failed; the message names topic/partition/offset where known."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create if missing; ``configs`` are topic-level settings such as ``cleanup.policy``."""

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)


def make_consumer(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaConsumer:
    """A KafkaConsumer with our security settings; offsets never auto-committed unless asked."""
    kwargs.setdefault("enable_auto_commit", False)
    return KafkaConsumer(bootstrap_servers=bootstrap, **security.client_kwargs(), **kwargs)


def make_producer(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, **security.client_kwargs(), **kwargs)


def make_admin(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, **security.client_kwargs(), **kwargs)


def release_parked(consumer: KafkaConsumer) -> None:
    """Call before each ``poll`` of a consumer that pauses/resumes partitions.

    kafka-python 3.0.x parks the fetched records of a paused partition (KAFKA-7548) and gives them back
    after ``resume`` only when its in-line slot is ``None``; an exhausted slot is left in place instead,
    and a partition with parked records is excluded from fetching, so a resumed partition stalls for
    good. Clearing an exhausted slot lets the parked records through on the next poll.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and getattr(fetcher, "_paused_partition_records", None):
        if not fetcher._next_partition_records:
            fetcher._next_partition_records = None


def partition_counts(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """``{topic: number of partitions}`` for the topics that exist."""
    wanted = set(topics)
    out: dict[str, int] = {}
    for meta in admin.describe_topics(sorted(wanted)):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            out[meta.get("name") or meta.get("topic")] = len(meta["partitions"])
    return out


def ensure_topics(
    admin: KafkaAdminClient, specs: Iterable[TopicSpec], timeout_s: float = 30.0
) -> dict[str, int]:
    """Create the topics that do not exist yet; return every topic's partition count.

    Raises:
        KafkaIOError: a topic could not be created or did not show up within ``timeout_s``.
    """
    specs = list(specs)
    names = [s.name for s in specs]
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if missing:
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs) or None) for s in missing]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # created concurrently by another scorer
        except KafkaError as e:
            raise KafkaIOError(f"cannot create topics {', '.join(s.name for s in missing)}: {e}") from e
        logger.info("created topics %s", " ".join(f"{s.name}(partitions={s.partitions})" for s in missing))
    deadline = time.monotonic() + timeout_s
    while True:
        counts = partition_counts(admin, names)
        if all(n in counts for n in names):
            return counts
        if time.monotonic() > deadline:
            absent = [n for n in names if n not in counts]
            raise KafkaIOError(f"topics {', '.join(absent)} not available after {timeout_s:.0f}s")
        time.sleep(0.1)


def read_partition_to_end(
    reader: KafkaConsumer,
    end_reader: KafkaConsumer,
    tp: TopicPartition,
    handle: Callable[[list], None],
    timeout_s: float,
    start: int | None = None,
    end: int | None = None,
) -> int:
    """Feed every record of ``tp`` (from ``start`` or the beginning) to ``handle`` in offset order.

    Args:
        reader: a group-less consumer (``read_committed`` for changelogs); it is (re)assigned to ``tp``.
        end_reader: a ``read_uncommitted`` consumer used only for the high watermark.
        tp: the partition.
        handle: called with each non-empty list of records.
        timeout_s: give up if the end is not reached by then (e.g. a dangling transaction).
        start: first offset; None = the beginning.
        end: stop before this offset (records from it on are not handed over); None = the high watermark.

    Returns:
        The position reached (next offset).

    Raises:
        KafkaIOError: the end was not reached within ``timeout_s``.
    """
    stop = end
    if end is None:
        end = end_reader.end_offsets([tp])[tp]
    reader.assign([tp])
    if start is None:
        reader.seek_to_beginning(tp)
    else:
        reader.seek(tp, start)
    deadline = time.monotonic() + timeout_s
    position = reader.position(tp)
    while position < end:
        records = reader.poll(timeout_ms=200, max_records=100_000).get(tp)
        if records and stop is not None and records[-1].offset >= stop:
            records = [r for r in records if r.offset < stop]
        if records:
            handle(records)
        position = reader.position(tp)
        if time.monotonic() > deadline:
            raise KafkaIOError(
                f"{tp.topic}[{tp.partition}]: could not read to offset {end} within {timeout_s:.0f}s "
                f"(stuck at offset {position}; an open transaction from a crashed producer?)"
            )
    return position
