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

``claim_transactional_id`` gives a scorer a ``transactional.id`` that a restart on the same host reuses:
Tansu never times out the open transaction of a crashed (``kill -9``) producer, so only a new producer with
the same id ends it; with a fresh id per process the partitions it wrote stay unreadable for
``read_committed`` consumers for good. ``keep_alive`` tells the group coordinator the member is alive
while the main thread does long work between polls (state restore).

Secrets: kafka-python logs a client's whole configuration at DEBUG (``KafkaAdminClient``), passwords
included. Every client made here first installs a filter on the ``kafka.*`` loggers that replaces the
configured passwords with ``***`` in their records (``protect_secrets``), whatever handlers the
application has.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from fraudlite.errors import FraudliteError
from fraudlite.kafkaio.security import KafkaSecurity

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
    "claim_transactional_id",
    "end_dead_transactions",
    "keep_alive",
    "broker_connected",
    "protect_secrets",
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


class _RedactSecrets(logging.Filter):
    """Replaces known secret strings in log records with ``***`` (one shared instance)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        if any(secret in message for secret in self.secrets):
            for secret in sorted(self.secrets, key=len, reverse=True):
                message = message.replace(secret, "***")
            record.msg, record.args = message, ()
        return True


_REDACT = _RedactSecrets()


def protect_secrets(security: KafkaSecurity | None = None, *values: str | None) -> None:
    """Keep ``security``'s passwords (and any other ``values``) out of kafka-python's log records."""
    secrets = {v for v in values if v}
    if security is not None:
        secrets |= {s for s in (security.sasl_password, security.ssl_password) if s}
    if not secrets:
        return
    _REDACT.secrets |= secrets
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if (name == "kafka" or name.startswith("kafka.")) and isinstance(lg, logging.Logger):
            if _REDACT not in lg.filters:
                lg.addFilter(_REDACT)


def make_consumer(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaConsumer:
    """A KafkaConsumer with our security settings; offsets never auto-committed unless asked."""
    kwargs.setdefault("enable_auto_commit", False)
    protect_secrets(security)
    return KafkaConsumer(bootstrap_servers=bootstrap, **security.client_kwargs(), **kwargs)


def make_producer(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaProducer:
    protect_secrets(security)
    return KafkaProducer(bootstrap_servers=bootstrap, **security.client_kwargs(), **kwargs)


def make_admin(bootstrap: str, security: KafkaSecurity, **kwargs) -> KafkaAdminClient:
    protect_secrets(security)
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


def broker_connected(consumer: KafkaConsumer | None) -> bool:
    """Cheap (no request) liveness probe of a group consumer: its coordinator is known and connected.

    When the broker goes away the connection drops at once and kafka-python forgets the coordinator;
    ``poll`` itself just keeps returning nothing, so without this a dead broker looks like no traffic.
    """
    probe = getattr(consumer, "connected", None)
    if callable(probe):  # an adapter with its own probe (kafkaio.confluent)
        return bool(probe())
    coordinator = getattr(consumer, "_coordinator", None)
    client = getattr(consumer, "_client", None)
    if coordinator is None or client is None or not hasattr(client, "connected"):
        return True  # unknown internals: do not claim an outage
    node = getattr(coordinator, "coordinator_id", None)
    try:
        return node is not None and bool(client.connected(node))
    except Exception:  # noqa: BLE001 - a probe must not fail the loop
        return True


def keep_alive(consumer: KafkaConsumer | None) -> None:
    """Reset the consumer's ``max.poll.interval.ms`` timer from the main thread during long work.

    kafka-python's heartbeat thread leaves the group when ``poll`` has not been called for
    ``max_poll_interval_ms``; a long state restore on assignment would then get the member kicked out,
    rejoin, be assigned, restore again... (the livelock Quix Streams documents for slow revocation).
    Calling this between steps of that work says "alive and making progress" without polling records
    (``poll_heartbeat`` is the coordinator's own liveness hook; it also surfaces a dead heartbeat thread).
    """
    own = getattr(consumer, "keep_alive", None)
    if callable(own):  # an adapter with its own (kafkaio.confluent)
        own()
        return
    coordinator = getattr(consumer, "_coordinator", None)
    poll_heartbeat = getattr(coordinator, "poll_heartbeat", None)
    if poll_heartbeat is None:
        return
    try:
        poll_heartbeat()
    except Exception as e:  # noqa: BLE001 - a dead heartbeat thread: the next poll() respawns and reports it
        logger.debug("keep_alive: %s", e)


def _slot_files(group_id: str, bootstrap: str, lock_dir: str | None) -> tuple[str, str, str]:
    host = socket.gethostname()
    root = lock_dir or os.path.join(tempfile.gettempdir(), "fraudlite-transactional-ids")
    digest = hashlib.sha256(f"{bootstrap}|{group_id}|{host}".encode()).hexdigest()[:20]
    return host, root, digest


def claim_transactional_id(group_id: str, bootstrap: str, lock_dir: str | None = None) -> tuple[str, int]:
    """A ``transactional.id`` stable across restarts on this host: ``<group>-<host>-<slot>``.

    The slot is the lowest number whose lock file (``flock``) no live process holds, so a scorer killed
    with ``kill -9`` and started again gets its predecessor's id back, and its producer's
    ``init_transactions`` ends the predecessor's open transaction (aborts it on Apache Kafka; the
    embedded broker commits it -- ``fraudlite.streaming.idempotence`` handles that). Several scorers of
    one group on one host get distinct slots.

    Returns:
        (transactional id, file descriptor holding the slot; ``os.close`` it when done).

    Raises:
        OSError: the lock directory is not usable.
    """
    host, root, digest = _slot_files(group_id, bootstrap, lock_dir)
    os.makedirs(root, exist_ok=True)
    slot = 0
    while True:
        fd = os.open(os.path.join(root, f"{digest}-{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process: try the next slot
            os.close(fd)
            slot += 1
            continue
        except OSError:  # no flock here (e.g. ENOLCK): not "held", or this would loop forever
            os.close(fd)
            raise
        return f"{group_id}-{host}-{slot}", fd


def end_dead_transactions(
    group_id: str, bootstrap: str, security: KafkaSecurity, lock_dir: str | None = None, **producer_kwargs
) -> list[str]:
    """End the open transactions of dead scorers of this group on this host.

    A slot whose lock file exists but that no process holds belonged to a scorer that is gone; if it died
    mid-transaction, that transaction blocks ``read_committed`` reads of the partitions it wrote until a
    producer with the same id starts (the embedded broker never times it out). Claiming the slot for a
    moment and calling ``init_transactions`` ends it. Called on assignment, before restoring state, so
    the survivors of a ``kill -9`` do not wait for a replacement.

    Returns:
        The transactional ids that were ended (those of free slots).
    """
    host, root, digest = _slot_files(group_id, bootstrap, lock_dir)
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith(digest + "-") and n.endswith(".lock"))
    except FileNotFoundError:
        return []
    ended = []
    for name in names:
        slot = name[len(digest) + 1 : -len(".lock")]
        try:
            fd = os.open(os.path.join(root, name), os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live scorer holds it
            txn_id = f"{group_id}-{host}-{slot}"
            producer = make_producer(bootstrap, security, transactional_id=txn_id, **producer_kwargs)
            try:
                producer.init_transactions()
            finally:
                producer.close(timeout=5)
            ended.append(txn_id)
        finally:
            os.close(fd)
    return ended


def partition_counts(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """``{topic: number of partitions}`` for the topics that exist."""
    wanted = set(topics)
    out: dict[str, int] = {}
    if not wanted:  # describe_topics([]) describes every topic
        return out
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
    tick: Callable[[], None] | None = None,
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
        tick: called before every fetch (e.g. ``keep_alive`` of the group consumer).

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
        if tick is not None:
            tick()
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
