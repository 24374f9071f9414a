"""kafka-python adapters: client construction, secret redaction, transactional-id host slots, topics,
reading a partition to its end (the liveness probe and keep-alive: ``test_liveness.py``).

Tests marked ``integration`` run against the embedded broker (real clients, no mocks); the others need
none (clients are constructed with ``api_version`` so they do not probe a broker). Fakes only inject
faults (stale metadata, a failing create, a filesystem without flock, a broken probe).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, PolicyViolationError

from fraudlite.kafkaio import clients
from fraudlite.kafkaio.broker import free_port
from fraudlite.kafkaio.clients import (
    KafkaIOError,
    TopicSpec,
    claim_transactional_id,
    end_dead_transactions,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    partition_counts,
    protect_secrets,
    read_partition_to_end,
)
from fraudlite.kafkaio.security import KafkaSecurity

integration = pytest.mark.integration
PLAIN = KafkaSecurity()
HOST = socket.gethostname()


def sasl(password: str) -> KafkaSecurity:
    return KafkaSecurity(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=password,
    )


def closed_bootstrap() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def redact():
    """The shared redaction filter, its secrets restored afterwards."""
    saved = set(clients._REDACT.secrets)
    yield clients._REDACT
    clients._REDACT.secrets.clear()
    clients._REDACT.secrets.update(saved)


# -- construction -----------------------------------------------------------------------------------


def test_make_consumer_passes_security_and_never_auto_commits_unless_asked(redact):
    sec = sasl(f"pw-{uuid.uuid4().hex}")
    c = make_consumer(closed_bootstrap(), sec, api_version=(2, 8), group_id="g")
    try:
        assert c.config["enable_auto_commit"] is False
        assert c.config["security_protocol"] == "SASL_PLAINTEXT" and c.config["sasl_mechanism"] == "PLAIN"
        assert (
            c.config["sasl_plain_username"] == "svc" and c.config["sasl_plain_password"] == sec.sasl_password
        )
    finally:
        c.close()
    c = make_consumer(closed_bootstrap(), PLAIN, api_version=(2, 8), group_id="g", enable_auto_commit=True)
    try:
        assert c.config["enable_auto_commit"] is True and c.config["security_protocol"] == "PLAINTEXT"
    finally:
        c.close()
    assert sec.sasl_password in redact.secrets  # constructing a client registers its secrets


def test_make_producer_passes_security_and_registers_its_secrets(redact):
    sec = sasl(f"pw-{uuid.uuid4().hex}")
    p = make_producer(closed_bootstrap(), sec, api_version=(2, 8), linger_ms=7)
    try:
        assert p.config["sasl_plain_password"] == sec.sasl_password and p.config["linger_ms"] == 7
    finally:
        p.close(timeout=1)
    assert sec.sasl_password in redact.secrets


# -- protect_secrets --------------------------------------------------------------------------------


def test_protect_secrets_redacts_kafka_log_records(redact, caplog):
    secret, token = f"pw-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    protect_secrets(sasl(secret), token, None, "")
    caplog.set_level(logging.DEBUG, logger="kafka")
    logging.getLogger("kafka.net.connection").debug(
        "config %s extra %r", {"sasl_plain_password": secret}, token
    )
    logging.getLogger("kafka").warning("failed with %s", secret)
    assert secret not in caplog.text and token not in caplog.text
    assert [r.getMessage() for r in caplog.records] == [
        "config {'sasl_plain_password': '***'} extra '***'",
        "failed with ***",
    ]
    assert "" not in redact.secrets and None not in redact.secrets


def test_protect_secrets_replaces_the_longest_secret_first(redact, caplog):
    short = f"s{uuid.uuid4().hex[:8]}"
    protect_secrets(None, short, short + "-and-more")
    caplog.set_level(logging.INFO, logger="kafka")
    logging.getLogger("kafka.admin.client").info("%s and %s", short + "-and-more", short)
    assert caplog.records[-1].getMessage() == "*** and ***"


def test_protect_secrets_covers_kafka_loggers_created_since_the_last_call(redact, caplog):
    first, second = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    protect_secrets(None, first)
    late = logging.getLogger(f"kafka.late{uuid.uuid4().hex[:6]}")  # e.g. a kafka module imported lazily
    protect_secrets(None, second)  # the next client made covers it
    caplog.set_level(logging.INFO, logger="kafka")
    late.info("%s %s", first, second)
    assert caplog.records[-1].getMessage() == "*** ***"


def test_a_record_that_cannot_be_formatted_passes_the_filter(redact):
    protect_secrets(None, f"x-{uuid.uuid4().hex}")
    lg = logging.getLogger("kafka.net.connection")
    record = lg.makeRecord(lg.name, logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert lg.filter(record)
    assert record.msg == "%d" and record.args == ("not a number",)  # left for logging to report


def test_kafka_pythons_configuration_dump_is_redacted(redact, caplog):
    """KafkaAdminClient logs its whole configuration at DEBUG before it bootstraps."""
    sec = sasl(f"pw-{uuid.uuid4().hex}")
    caplog.set_level(logging.DEBUG, logger="kafka")
    with pytest.raises(KafkaError):
        make_admin(closed_bootstrap(), sec, bootstrap_timeout_ms=300, request_timeout_ms=300)
    assert "'sasl_plain_password': '***'" in caplog.text
    assert sec.sasl_password not in caplog.text


# -- claim_transactional_id -------------------------------------------------------------------------


def test_claim_gives_each_live_holder_its_own_slot_and_reuses_freed_ones(tmp_path):
    id0, fd0 = claim_transactional_id("g1", "k:9092", str(tmp_path))
    id1, fd1 = claim_transactional_id("g1", "k:9092", str(tmp_path))
    try:
        assert (id0, id1) == (f"g1-{HOST}-0", f"g1-{HOST}-1")
        os.close(fd0)
        id_again, fd0 = claim_transactional_id("g1", "k:9092", str(tmp_path))
        assert id_again == id0  # a restart gets its predecessor's id back
        other_group, fd2 = claim_transactional_id("g2", "k:9092", str(tmp_path))
        other_cluster, fd3 = claim_transactional_id("g1", "other:9092", str(tmp_path))
        os.close(fd2)
        os.close(fd3)
        assert (other_group, other_cluster) == (f"g2-{HOST}-0", f"g1-{HOST}-0")
    finally:
        os.close(fd0)
        os.close(fd1)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_a_killed_holder_frees_its_slot(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from fraudlite.kafkaio.clients import claim_transactional_id\n"
         f"print(claim_transactional_id('g', 'k:1', {str(tmp_path)!r})[0], flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == f"g-{HOST}-0"
        taken, fd = claim_transactional_id("g", "k:1", str(tmp_path))
        os.close(fd)
        assert taken == f"g-{HOST}-1"
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    restarted, fd = claim_transactional_id("g", "k:1", str(tmp_path))
    os.close(fd)
    assert restarted == f"g-{HOST}-0"


def test_claim_raises_when_the_lock_dir_is_unusable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        claim_transactional_id("g", "k:1", str(blocker / "locks"))


def test_claim_raises_instead_of_looping_when_flock_is_unsupported(tmp_path, monkeypatch):
    calls = []

    def no_locks(fd, op):
        calls.append(fd)
        if len(calls) > 3:
            raise RuntimeError("claim_transactional_id keeps trying new slots")
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(clients.fcntl, "flock", no_locks)
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as e:
        claim_transactional_id("g", "k:1", str(tmp_path))
    assert e.value.errno == errno.ENOLCK and len(calls) == 1
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the slot's file was closed


# -- end_dead_transactions -------------------------------------------------------------------------


def test_end_dead_transactions_without_any_slot_files(tmp_path):
    assert end_dead_transactions("g", "k:1", PLAIN, lock_dir=str(tmp_path / "never-created")) == []


def _ends(bootstrap: str, tp: TopicPartition) -> tuple[int, int]:
    """(read_committed, read_uncommitted) end offsets."""
    out = []
    for iso in ("read_committed", "read_uncommitted"):
        c = make_consumer(bootstrap, PLAIN, isolation_level=iso)
        try:
            out.append(c.end_offsets([tp])[tp])
        finally:
            c.close()
    return out[0], out[1]


@integration
def test_end_dead_transactions_ends_the_open_transaction_of_a_free_slot_only(broker, make_topic, tmp_path):
    topic, group, lock_dir = make_topic(partitions=1), f"g-{uuid.uuid4().hex[:6]}", str(tmp_path)
    tp = TopicPartition(topic, 0)
    dead_id, dead_fd = claim_transactional_id(group, broker.bootstrap, lock_dir)
    live_id, live_fd = claim_transactional_id(group, broker.bootstrap, lock_dir)
    other_id, other_fd = claim_transactional_id("another-group", broker.bootstrap, lock_dir)
    os.close(other_fd)  # free, but not this group's
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=dead_id)
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(3):
            producer.send(topic, value=b"%d" % i, partition=0)
        producer.flush()
        producer.close(timeout=5)  # no abort: the transaction stays open, as after kill -9
        os.close(dead_fd)
        committed, high = _ends(broker.bootstrap, tp)
        assert committed < high  # read_committed readers are blocked
        ended = end_dead_transactions(group, broker.bootstrap, PLAIN, lock_dir=lock_dir)
        assert ended == [dead_id]  # the live slot and the other group's slot are left alone
        committed, high = _ends(broker.bootstrap, tp)
        assert committed == high
        again, fd = claim_transactional_id(group, broker.bootstrap, lock_dir)
        os.close(fd)
        assert again == dead_id  # the slot was only borrowed
    finally:
        os.close(live_fd)
    assert live_id.endswith("-1") and other_id.startswith("another-group-")


# -- topics ---------------------------------------------------------------------------------------------


@pytest.fixture
def admin(broker):
    a = make_admin(broker.bootstrap, PLAIN, client_id="test-clients-admin")
    yield a
    a.close()


def _name() -> str:
    return f"clients-{uuid.uuid4().hex[:10]}"


@integration
def test_ensure_topics_creates_the_missing_ones_and_keeps_existing_counts(admin, make_topic):
    existing = make_topic(partitions=2)
    new, compacted = _name(), _name()
    counts = ensure_topics(
        admin,
        [TopicSpec(existing, 5), TopicSpec(new, 3), TopicSpec(compacted, 1, {"cleanup.policy": "compact"})],
    )
    assert counts == {existing: 2, new: 3, compacted: 1}
    assert partition_counts(admin, [new, existing]) == {new: 3, existing: 2}


class _StaleAdmin:
    """A real admin whose topic list is stale (another scorer created the topics meanwhile)."""

    def __init__(self, admin) -> None:
        self._admin = admin

    def __getattr__(self, name):
        return getattr(self._admin, name)

    def list_topics(self):
        return []


@integration
def test_ensure_topics_tolerates_topics_created_concurrently(admin, make_topic):
    existing, new = make_topic(partitions=2), _name()
    assert ensure_topics(_StaleAdmin(admin), [TopicSpec(existing, 2), TopicSpec(new, 1)]) == {
        existing: 2,
        new: 1,
    }


class _RefusingAdmin(_StaleAdmin):
    def list_topics(self):
        return self._admin.list_topics()

    def create_topics(self, new_topics, **kwargs):
        raise PolicyViolationError("topic creation is disabled")


@integration
def test_ensure_topics_names_topics_it_cannot_create(admin, make_topic):
    existing, new = make_topic(partitions=1), _name()
    with pytest.raises(KafkaIOError, match=f"cannot create topics {new}: .*PolicyViolation"):
        ensure_topics(_RefusingAdmin(admin), [TopicSpec(existing, 1), TopicSpec(new, 1)])


@integration
def test_ensure_topics_gives_up_on_a_topic_that_never_appears(admin):
    # the embedded broker accepts a 0-partition topic and never shows it (Kafka refuses it): both raise
    name = _name()
    t0 = time.monotonic()
    with pytest.raises(KafkaIOError, match=name):
        ensure_topics(admin, [TopicSpec(name, 0)], timeout_s=0.3)
    assert time.monotonic() - t0 < 5


@integration
def test_partition_counts_lists_existing_topics_only(admin, make_topic):
    a, b = make_topic(partitions=3), make_topic(partitions=1)
    assert partition_counts(admin, [a, b, _name()]) == {a: 3, b: 1}
    assert partition_counts(admin, iter([a])) == {a: 3}
    assert partition_counts(admin, []) == {}  # not every topic of the cluster


# -- read_partition_to_end -----------------------------------------------------------------------------


@pytest.fixture
def readers(broker):
    reader = make_consumer(broker.bootstrap, PLAIN, isolation_level="read_committed", fetch_max_wait_ms=100)
    end_reader = make_consumer(broker.bootstrap, PLAIN)
    yield reader, end_reader
    reader.close()
    end_reader.close()


def _produce(bootstrap: str, topic: str, n: int, one_batch: bool = False) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    for i in range(n):
        producer.send(topic, value=b"%d" % i, partition=0)
        if not one_batch:
            producer.flush()
    producer.close(timeout=5)


@integration
def test_read_partition_to_end_hands_over_every_record_in_offset_order(broker, make_topic, readers):
    topic = make_topic(partitions=1)
    _produce(broker.bootstrap, topic, 6)
    batches, ticks = [], []
    end = read_partition_to_end(
        *readers, TopicPartition(topic, 0), batches.append, 10, tick=lambda: ticks.append(1)
    )
    assert end == 6 and all(batches)
    assert [r.offset for b in batches for r in b] == list(range(6))
    assert [r.value for b in batches for r in b] == [b"%d" % i for i in range(6)]
    assert len(ticks) >= len(batches) >= 1


@integration
def test_read_partition_to_end_between_start_and_end(broker, make_topic, readers):
    topic = make_topic(partitions=1)
    _produce(broker.bootstrap, topic, 6)
    got = []
    read_partition_to_end(*readers, TopicPartition(topic, 0), got.extend, 10, start=2, end=4)
    assert [r.offset for r in got] == [2, 3]
    got.clear()
    assert read_partition_to_end(*readers, TopicPartition(topic, 0), got.extend, 10, start=5) == 6
    assert [r.offset for r in got] == [5]


@integration
def test_read_partition_to_end_of_an_empty_partition_reads_nothing(make_topic, readers):
    topic = make_topic(partitions=1)
    calls = []
    assert (
        read_partition_to_end(
            *readers, TopicPartition(topic, 0), calls.append, 10, tick=lambda: calls.append(0)
        )
        == 0
    )
    assert calls == []


@integration
def test_read_partition_to_end_gives_up_on_an_open_transaction(broker, make_topic, readers):
    topic = make_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"open-{topic}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, value=b"pending", partition=0)
    producer.flush()
    try:
        t0 = time.monotonic()
        with pytest.raises(KafkaIOError, match=rf"{topic}\[0\]: could not read to offset \d+ within"):
            read_partition_to_end(*readers, TopicPartition(topic, 0), lambda records: None, 0.5)
        assert time.monotonic() - t0 < 5
    finally:
        producer.abort_transaction()
        producer.close(timeout=5)


@integration
@pytest.mark.xfail(
    strict=True,
    reason="embedded broker: ListOffsets answers the last batch's base offset + 1, so a start inside the "
    "last record batch looks like the end (clients.read_partition_to_end; reported)",
)
def test_read_partition_to_end_from_inside_the_last_record_batch(broker, make_topic, readers):
    topic = make_topic(partitions=1)
    _produce(broker.bootstrap, topic, 4, one_batch=True)
    got = []
    read_partition_to_end(*readers, TopicPartition(topic, 0), got.extend, 5, start=2)
    assert [r.offset for r in got] == [2, 3]


# -- broker_connected / keep_alive ---------------------------------------------------------------------
