"""The streaming scorer: one consumer-group member that turns transactions into decisions.

Per micro-batch (at most ``batch.max_records`` records; ``poll`` waits at most ``batch.max_ms``)::

    decode + validate (msgspec, vectorized checks)        -> invalid ones to the DLQ with a reason
    release in event-time lockstep across partitions     -> EventTimeSync (exact terminal features)
    other members' partitions + labels up to day - delay  -> TerminalFeed (its own consumer)
    online features per input partition                   -> OnlineFeatures.compute (also counts the
                                                             batch in the terminal table)
    one ONNX Runtime call for the whole batch             -> scores
    produce decisions (+ alerts, + DLQ, + changelog)      -> one Kafka transaction ...
    send_offsets_to_transaction + commit                  -> ... that also commits the input offsets

Exactly-once (default): the transactional producer carries the consumer's group metadata (KIP-447), so
a member that lost its partitions in a rebalance cannot commit; any failed transaction is aborted and
the in-memory state of every assigned partition is rebuilt (changelog + replay of the committed input
since its last record) before processing resumes from the committed offsets. At-least-once: produce
and flush the outputs, then the changelog, then commit the offsets; a crash in between repeats
decisions but never applies a record to the state twice (the state knows its input offset).

Customer state follows partitions (``state_store``): every ``changelog_interval_s`` the customers
changed since go to a compacted changelog topic inside the batch's transaction; on assignment the
state is restored from it and the committed input records after its last record are replayed.

Crash safety (``idempotence``): outputs of input partition ``p`` go to partition ``p`` of each output
topic, every batch records output ``positions`` in its transaction, and a new owner skips outputs a
crashed predecessor's transaction already made visible; the outputs of a batch are flushed before its
changelog records, so a state that includes a batch implies all of that batch's outputs exist. The
``transactional.id`` is stable per host slot (``claim_transactional_id``), so a restarted scorer ends
its predecessor's open transaction; the group member is kept alive during long restores.

The ``fraudlite serve`` entry point around it is ``fraudlite.streaming.serve.run_serve``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from fraudlite.errors import UserError
from fraudlite.features.online import CustomerState, OnlineFeatures, TerminalTable
from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.streaming.bulk_send import send_many
from fraudlite.streaming.config import ServeConfig
from fraudlite.streaming.decode import LabelDecoder, TransactionDecoder
from fraudlite.streaming.health import BrokerHealth
from fraudlite.streaming.idempotence import (
    OUTPUT_KINDS,
    POSITIONS_KEY,
    Decided,
    decode_positions,
    encode_positions,
    scan_outputs,
)
from fraudlite.streaming.kafka_io import (
    KafkaIOError,
    TopicSpec,
    claim_transactional_id,
    end_dead_transactions,
    ensure_topics,
    keep_alive,
    make_admin,
    make_consumer,
    make_producer,
    read_partition_to_end,
    release_parked,
)
from fraudlite.streaming.metrics import ScorerMetrics, serve_metrics
from fraudlite.streaming.outputs import dlq_envelope, dlq_headers, dlq_truncate, encode_decisions, iso_now
from fraudlite.streaming.reload import LoadedModel, ModelReloader
from fraudlite.streaming.state_store import ChangelogWriter, restore_state
from fraudlite.streaming.sync import EventTimeSync, Part
from fraudlite.streaming.terminal_feed import TerminalFeed

__all__ = ["Scorer", "ServeSummary"]

logger = logging.getLogger(__name__)


@dataclass
class ServeSummary:
    """Counts since start (for logs, the demo and tests)."""

    batches: int = 0
    consumed: int = 0
    scored: int = 0
    fraud: int = 0
    alerts: int = 0
    dlq: int = 0
    failures: int = 0
    reloads: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.consumed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"batches={self.batches} consumed={self.consumed} scored={self.scored} fraud={self.fraud} "
            f"alerts={self.alerts} dlq={self.dlq} failures={self.failures} reloads={self.reloads} "
            f"seconds={self.seconds:.1f} rate={rate:.0f}/s"
        )


class _Listener(ConsumerRebalanceListener):
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def on_partitions_revoked(self, revoked):
        self.scorer._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.scorer._on_assigned(assigned)

    def on_partitions_lost(self, lost):
        self.scorer._on_lost(lost)


class Scorer:
    """A consumer-group member scoring the input topic (see the module docstring).

    Args:
        config: serve settings.
        model: the model to start with.
        registry: Prometheus registry for this scorer's metrics (a fresh one by default).
        reloader: optional hot-reload watcher; its models are swapped in between batches.

    Use ``connect()``, then ``run()`` (blocks until ``stop()``), then ``close()``.
    """

    def __init__(
        self,
        config: ServeConfig,
        model: LoadedModel,
        registry: CollectorRegistry | None = None,
        reloader: ModelReloader | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.reloader = reloader
        self.metrics = ScorerMetrics(registry if registry is not None else CollectorRegistry())
        self.metrics.set_model(
            model.version, model.model_type, model.stages, model.model_dir.bytes_by_role(), model.loaded_at
        )
        self._set_thresholds()
        self.decoder = TransactionDecoder(config.limits)
        self.online = OnlineFeatures(model.spec, TerminalTable(model.spec))
        skew = max(0, min(model.spec.delay_days - 1, self.online.terminals.slack_days))
        self._sync = EventTimeSync(self.decoder, skew)
        self._paused: set[TopicPartition] = set()
        self.writers: dict[int, ChangelogWriter] = {}
        self._dirty: dict[int, dict[str, None]] = {}  # customers changed since their last changelog record
        self._last_changelog = time.monotonic()
        self.summary = ServeSummary()
        self.latency_sink: list[np.ndarray] | None = None  # benchmarks: per-batch latencies (s)
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._needs_recovery = False
        self._assigned: set[TopicPartition] = set()
        self._assignment_changed = False
        self._lost: set[int] = set()
        self._partitions: dict[str, int] = {}
        self._http = None
        self._consumer = self._producer = self._feed = None
        self._restore_reader = self._end_reader = None
        self._last_periodic = 0.0
        self._txn_id: str | None = config.transactional_id
        self._txn_fd: int | None = None
        self._dedupe = config.exactly_once and config.state_changelog
        self._decided: dict[int, Decided] = {}  # input partition -> outputs already there (after a crash)
        self._out_pos: dict[int, dict[str, int]] = {}  # input partition -> lower bound of its next outputs
        self._max_records = config.batch.max_records  # lowered while batches are slow (_adapt_batch)
        self._health = BrokerHealth(
            self.metrics, config.bootstrap_servers, lambda: self._consumer, lambda: bool(self._assigned)
        )
        self._topics_unverified = False  # set when the connection comes back: did the broker keep them?
        self._topic_ids: dict[str, str | None] = {}

    # -- lifecycle ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to finish the current batch, commit and return (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def connect(self, retry: bool = True) -> None:
        """Start the metrics endpoint, create missing topics and the Kafka clients.

        Retries with backoff while the broker is unreachable (until ``stop()``), unless ``retry`` is False.

        Raises:
            UserError: the metrics address cannot be bound.
            KafkaIOError / KafkaError: with ``retry=False``, the broker could not be reached.
        """
        cfg = self.config
        if cfg.metrics_port is not None and self._http is None:
            try:
                self._http, _ = serve_metrics(self.metrics.registry, cfg.metrics_host, cfg.metrics_port)
            except OSError as e:
                raise UserError(
                    f"--metrics-host/--metrics-port: cannot listen on {cfg.metrics_host}:{cfg.metrics_port} "
                    f"({e.strerror or e})"
                ) from None
            self.metrics_port = self._http.server_port
            logger.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_port)
        delay = 0.5
        while True:
            try:
                self._connect_once()
                self.metrics.healthy.set(1)
                if self.reloader is not None:
                    self.reloader.start()
                self._health.start()
                return
            except (KafkaError, KafkaIOError, OSError) as e:
                self.metrics.healthy.set(0)
                self._close_clients()
                if not retry or self._stop.is_set():
                    raise
                logger.warning(
                    "kafka not reachable at %s (%s); retrying in %.1fs", cfg.bootstrap_servers, e, delay
                )
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)

    def _connect_once(self) -> None:
        cfg, topics = self.config, self.config.topics
        sec = cfg.security
        logger.info(
            "connecting bootstrap=%s group=%s delivery=%s %s",
            cfg.bootstrap_servers, cfg.group_id, cfg.delivery, sec.describe(),
        )  # fmt: skip
        # A short first-contact timeout: the retry loop in connect() reports and backs off instead of
        # kafka-python waiting 30 s in silence for a broker that is not there (yet).
        counts, self._topic_ids = self._ensure_topics()
        n = counts[topics.input]
        if cfg.state_changelog and topics.changelog and counts[topics.changelog] != n:
            raise UserError(
                f"changelog topic {topics.changelog} has {counts[topics.changelog]} partitions but the input "
                f"topic {topics.input} has {n}; they must match (delete the changelog or use another group id)"
            )
        self._partitions = counts
        # Topics are created here, with their partition counts and configs, never implicitly by a send.
        common = {"client_id": cfg.client_id, "allow_auto_create_topics": False}
        if cfg.exactly_once:
            self._producer = make_producer(
                cfg.bootstrap_servers, sec, transactional_id=self._transactional_id(),
                transaction_timeout_ms=cfg.transaction_timeout_ms, linger_ms=5, batch_size=256 * 1024, **common,
            )  # fmt: skip
            self._producer.init_transactions()
        else:
            self._producer = make_producer(
                cfg.bootstrap_servers, sec, acks="all", linger_ms=5, batch_size=256 * 1024, **common
            )
        self._restore_reader = make_consumer(
            cfg.bootstrap_servers, sec, isolation_level="read_committed", client_id=f"{cfg.client_id}-restore",
            fetch_max_wait_ms=100, allow_auto_create_topics=False,
        )  # fmt: skip
        self._end_reader = make_consumer(
            cfg.bootstrap_servers, sec, client_id=f"{cfg.client_id}-offsets", allow_auto_create_topics=False
        )
        feed_consumer = make_consumer(
            cfg.bootstrap_servers, sec, isolation_level="read_committed", client_id=f"{cfg.client_id}-terminals",
            fetch_max_wait_ms=100, max_poll_records=100_000, allow_auto_create_topics=False,
        )  # fmt: skip
        self._feed = TerminalFeed(
            feed_consumer, self.online.terminals, topics.input, topics.labels, self.decoder,
            LabelDecoder(cfg.limits), timeout_s=30.0,
        )  # fmt: skip
        self._feed.assign(counts)
        self._consumer = make_consumer(
            cfg.bootstrap_servers, sec, group_id=cfg.group_id, isolation_level="read_committed",
            auto_offset_reset=cfg.auto_offset_reset, session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_interval_ms=cfg.max_poll_interval_ms,
            max_poll_records=cfg.batch.max_records, fetch_max_wait_ms=min(cfg.batch.max_ms, 500), **common,
        )  # fmt: skip
        self._consumer.subscribe([topics.input], listener=_Listener(self))

    def _ensure_topics(self) -> tuple[dict[str, int], dict[str, str | None]]:
        """Create missing topics; return their partition counts and topic ids (None if not reported)."""
        cfg, topics = self.config, self.config.topics
        # A short first-contact timeout: the retry loop in connect() reports and backs off instead of
        # kafka-python waiting 30 s in silence for a broker that is not there (yet).
        admin = make_admin(
            cfg.bootstrap_servers, cfg.security, client_id=f"{cfg.client_id}-admin", bootstrap_timeout_ms=5000
        )
        try:
            counts = ensure_topics(admin, [TopicSpec(topics.input, cfg.partitions)])
            n = counts[topics.input]
            specs = [TopicSpec(t, n) for t in (topics.output, topics.alerts, topics.dlq)]
            if topics.labels:
                specs.append(TopicSpec(topics.labels, cfg.partitions))
            if cfg.state_changelog and topics.changelog:
                specs.append(TopicSpec(topics.changelog, n, {"cleanup.policy": "compact"}))
            counts.update(ensure_topics(admin, specs))
            ids = {
                m.get("name") or m.get("topic"): m.get("topic_id")
                for m in admin.describe_topics(sorted(counts))
            }
        finally:
            admin.close()
        return counts, ids

    def _check_topics_after_outage(self) -> None:
        """After the broker came back: if it lost our topics (the embedded broker keeps nothing across a
        restart; Kafka does), start a fresh session: new clients, empty state, the new topics' offsets."""
        try:
            counts, ids = self._ensure_topics()
        except (KafkaError, KafkaIOError, OSError) as e:
            logger.warning("checking topics after the outage failed (%s); retrying", e)
            self._stop.wait(1.0)
            return
        self._topics_unverified = False
        lost = sorted(t for t, i in self._topic_ids.items() if i is not None and ids.get(t) != i)
        if not lost:
            return
        logger.warning(
            "the broker came back without our topics (%s recreated: memory storage restarted?); starting a new "
            "session from empty state and the new topics' committed offsets", ", ".join(lost),
        )  # fmt: skip
        self._close_clients()
        spec = self.model.spec
        self.online = OnlineFeatures(spec, TerminalTable(spec))
        skew = max(0, min(spec.delay_days - 1, self.online.terminals.slack_days))
        self._sync = EventTimeSync(self.decoder, skew)
        self._paused, self._assigned, self._lost = set(), set(), set()
        self.writers.clear()
        self._dirty.clear()
        self._decided.clear()
        self._out_pos.clear()
        self._assignment_changed = self._needs_recovery = False
        self._health.new_session()
        self.metrics.assigned.set(0)
        self.connect()

    def run(
        self, max_batches: int | None = None, until: Callable[[ServeSummary], bool] | None = None
    ) -> ServeSummary:
        """Consume, score and commit until ``stop()`` (or ``max_batches`` / ``until(summary)``).

        Raises:
            FraudliteError: state that cannot be restored (corrupt changelog) or another fatal error.
        """
        cfg = self.config
        start = time.monotonic()
        parts: list[Part] = []
        try:
            while not self._stop.is_set():
                self._swap_model()
                if self._health.take_reconnected():
                    self._topics_unverified = True
                if self._topics_unverified:
                    self._check_topics_after_outage()
                    continue
                try:
                    release_parked(self._consumer)
                    # Do not wait for new records while a full batch is already buffered.
                    full = parts and self._sync.buffered >= self._max_records
                    wait = 0 if full else cfg.batch.max_ms
                    batch = self._consumer.poll(timeout_ms=wait, max_records=self._max_records)
                except KafkaError as e:
                    self._unhealthy("poll", e)
                    continue
                if self._assignment_changed:
                    self._apply_assignment()
                    batch = {}
                if self._needs_recovery:
                    self._recover(None)
                    batch = {}
                t0 = perf_counter()
                for tp, records in batch.items():
                    self._sync.add(tp, records)
                parts = self._sync.take(self._assigned, self._caught_up, self._max_records)
                self._pause_held()
                if parts:
                    try:
                        self._process(parts, perf_counter() - t0)
                    except (KafkaError, KafkaIOError) as e:
                        self._recover(e)
                    else:
                        self._adapt_batch(sum(len(r) for _, r, _ in parts), perf_counter() - t0)
                    self.summary.seconds = time.monotonic() - start
                    if (max_batches is not None and self.summary.batches >= max_batches) or (
                        until is not None and until(self.summary)
                    ):
                        break
                self._periodic()
            if self._stop.is_set():
                if not self._health.down:
                    self._flush_changelog()
                else:  # would block until the broker is back; the next owner replays the input instead
                    logger.warning("kafka unreachable: stopping without the final changelog record")
        finally:
            self.summary.seconds = time.monotonic() - start
            self.metrics.ready.set(0)
        return self.summary

    def close(self) -> None:
        """Stop the reload watcher, leave the group, close every client and the metrics endpoint."""
        self.metrics.ready.set(0)
        self._health.stop()
        if self.reloader is not None:
            self.reloader.stop()
        self._close_clients()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._txn_fd is not None:  # frees the host slot of our transactional id
            os.close(self._txn_fd)
            self._txn_fd = None
            if not self.config.transactional_id:
                self._txn_id = None

    def _transactional_id(self) -> str:
        """The producer's ``transactional.id``, resolved once per scorer (a recreated producer reuses it,
        ending its predecessor's transaction): the configured one, else this host's first free slot."""
        if self._txn_id is None:
            cfg = self.config
            try:
                self._txn_id, self._txn_fd = claim_transactional_id(cfg.group_id, cfg.bootstrap_servers)
            except OSError as e:
                self._txn_id = cfg.resolved_transactional_id()
                logger.warning(
                    "no stable transactional id (%s); using %s: after a crash, restarting does not end "
                    "this process's open transaction", e, self._txn_id,
                )  # fmt: skip
            logger.info("transactional_id=%s", self._txn_id)
        return self._txn_id

    def _keep_alive(self) -> None:
        keep_alive(self._consumer)

    def _end_dead_transactions(self) -> None:
        """A member died? End its open transaction before reading what it wrote (see kafka_io)."""
        cfg = self.config
        if not cfg.exactly_once or cfg.transactional_id or self._txn_fd is None:
            return
        ended = end_dead_transactions(
            cfg.group_id, cfg.bootstrap_servers, cfg.security, client_id=cfg.client_id
        )
        if ended:
            logger.info("ended open transactions of stopped scorers on this host: %s", ", ".join(ended))

    def _adapt_batch(self, records: int, seconds: float) -> None:
        """Keep a batch well inside ``max.poll.interval.ms`` (else the member is kicked out mid-batch).

        A batch slower than a quarter of the interval shrinks the next ones to what fits in that
        quarter at the rate just measured; fast batches (under a sixteenth) let the size grow back.
        """
        budget = self.config.max_poll_interval_ms / 1000 / 4
        limit = self.config.batch.max_records
        if seconds > budget and records > 1:
            fits = max(1, int(records * budget / seconds))
            if fits < self._max_records:
                logger.warning(
                    "batch of %d records took %.1fs (max.poll.interval.ms=%d): batches now at most %d records",
                    records, seconds, self.config.max_poll_interval_ms, fits,
                )  # fmt: skip
                self._max_records = fits
        elif seconds < budget / 4 and self._max_records < limit and records >= self._max_records:
            self._max_records = min(limit, self._max_records * 2)

    def _close_clients(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)  # leaves the group
            except Exception as e:  # noqa: BLE001 - closing is best effort
                logger.debug("consumer close: %s", e)
        for client in (
            self._producer,
            self._restore_reader,
            self._end_reader,
            self._feed and self._feed.consumer,
        ):
            if client is not None:
                try:
                    client.close(timeout=5) if client is self._producer else client.close()
                except Exception as e:  # noqa: BLE001
                    logger.debug("client close: %s", e)
        self._consumer = self._producer = self._feed = None
        self._restore_reader = self._end_reader = None

    # -- the batch --------------------------------------------------------------------------------------

    def _caught_up(self, tp: TopicPartition) -> bool:
        high = self._consumer.highwater(tp)
        return high is not None and self._consumer.position(tp) >= high

    def _pause_held(self) -> None:
        """Stop fetching partitions whose buffers (event-time sync) are full; resume the others."""
        held = self._sync.full(self.config.batch.max_records)
        if held != self._paused:
            if held - self._paused:
                self._consumer.pause(*(held - self._paused))
            if self._paused - held:
                self._consumer.resume(*(self._paused - held))
            self._paused = held

    def _drop_buffers(self, reassigned: bool = False) -> None:
        """Forget buffered records before repositioning (a new assignment starts unpaused)."""
        self._sync.reset()
        if reassigned:
            self._paused = set()
        self._pause_held()

    def _process(self, parts: list[Part], decode_seconds: float) -> None:
        cfg, m, model, topics = self.config, self.metrics, self.model, self.config.topics
        t1 = perf_counter()
        t0 = t1 - decode_seconds
        n_in = sum(len(records) for _, records, _ in parts)
        valid = [(tp, d) for tp, _, d in parts if len(d)]
        if valid:
            last_day = max(int(d.ts.max()) for _, d in valid) // SECONDS_PER_DAY
            self._feed.advance(last_day - model.spec.delay_days)
        features = []
        for tp, records, d in parts:
            # The batch's own transactions go into the terminal table as it is computed (day by day),
            # unless some were counted before (a batch repeated after a rollback).
            counted = self._feed.is_new(tp.partition, records)
            if len(d):
                features.append(
                    self.online.compute(
                        tp.partition,
                        d.ts,
                        d.customer_id,
                        d.terminal_id,
                        d.amount_cents,
                        update_terminals=counted,
                    )
                )
            self._feed.add_batch(tp.partition, records, d, counted=counted)
        if valid:
            x = features[0] if len(features) == 1 else np.concatenate(features)
        t2 = perf_counter()
        self._keep_alive()
        scores = model.scorer.score(x) if valid else np.zeros(0, dtype=np.float32)
        t3 = perf_counter()
        self._keep_alive()

        producer = self._producer
        send = producer.send
        eos = cfg.exactly_once
        if eos:
            producer.begin_transaction()
        futures: list = []
        scored_at = iso_now(time.time())
        n_out = self._partitions[topics.output]
        n_alert = self._partitions[topics.alerts]
        n_dlq = self._partitions[topics.dlq]
        n_input = self._partitions[topics.input]
        offset = 0
        n_fraud = n_alerts = 0
        changelog: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []
        invalid_reasons: list[str] = []
        last_sent: dict[tuple[str, int], object] = {}  # (output kind, partition) -> its last future
        suppressed = {kind: 0 for kind in OUTPUT_KINDS}
        for tp, records, d in parts:
            p = tp.partition
            decided = self._decided.get(p)  # outputs a crashed predecessor already made visible
            if len(d):
                s = scores[offset : offset + len(d)]
                offset += len(d)
                values, fraud = encode_decisions(
                    d.tx_id, d.customer_id, s, model.threshold, model.version, scored_at
                )
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
                    futures.append(send(topics.alerts, value=values[i], key=keys[i], partition=alert_p))
                    last_sent[("alerts", p)] = futures[-1]
                if cfg.state_changelog:
                    self._dirty.setdefault(p, {}).update(dict.fromkeys(d.customer_id))
            self.writers.setdefault(p, ChangelogWriter()).input_offset = records[-1].offset + 1
            dlq_p = p if n_dlq == n_input else None
            for pos, reason in d.invalid:
                r = records[pos]
                invalid_reasons.append(reason)
                if decided is not None and r.offset in decided.dlq:
                    decided.dlq.discard(r.offset)
                    suppressed["dlq"] += 1
                    continue
                headers = dlq_headers(reason, tp.topic, p, r.offset)
                key, value, cut = dlq_truncate(r.key, r.value, cfg.dlq_max_value_bytes)
                headers += cut
                if cfg.dlq_envelope:
                    value = dlq_envelope(reason, tp.topic, p, r.offset, r.timestamp, key, value)
                elif not value and key is None:
                    value = b""
                futures.append(send(topics.dlq, value=value, key=key, headers=headers, partition=dlq_p))
                last_sent[("dlq", p)] = futures[-1]
            if self._dedupe:
                # Lower bound of where this batch's outputs of partition p start, committed with it.
                futures.append(
                    send(topics.changelog, key=POSITIONS_KEY, partition=p,
                         value=encode_positions(records[0].offset, self._output_positions(p)))
                )  # fmt: skip
            if decided is not None and records[-1].offset + 1 >= decided.until:
                del self._decided[p]  # past anything an uncommitted batch can have covered
        if not eos:
            producer.flush()
            self._check_sent(futures)
            futures = []
        if cfg.state_changelog and time.monotonic() - self._last_changelog >= cfg.changelog_interval_s:
            changelog = self._changelog_records()
        if changelog and eos:
            # The outputs reach the broker before the state that includes this batch: should the
            # transaction survive a crash only in part (the embedded broker commits a crashed producer's
            # open transaction), a restored state never claims a batch whose outputs are missing.
            producer.flush()
        for p, records in changelog:
            futures += send_many(
                producer, topics.changelog, p, [k for k, _ in records], [v for _, v in records]
            )
        t4 = perf_counter()
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records, _ in parts}
        try:
            if eos:
                producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
                producer.commit_transaction()
            else:
                producer.flush()
                self._check_sent(futures)
                self._consumer.commit(offsets)
        except KafkaError:
            m.commit_failures.labels("transaction" if eos else "commit").inc()
            raise
        t5 = perf_counter()
        now = time.time()
        for (kind, p), future in last_sent.items():
            if p not in self._decided and future.succeeded():
                self._out_pos.setdefault(p, {})[kind] = future.value.offset + 1
        for kind, n in suppressed.items():
            if n:
                m.duplicates_suppressed.labels(kind).inc(n)

        n_valid = len(scores)
        m.stage_seconds.labels("decode").observe(t1 - t0)
        m.stage_seconds.labels("features").observe(t2 - t1)
        m.stage_seconds.labels("inference").observe(t3 - t2)
        m.stage_seconds.labels("produce").observe(t4 - t3)
        m.stage_seconds.labels("commit").observe(t5 - t4)
        m.batches.inc()
        m.batch_size.observe(n_in)
        m.consumed.inc(n_in)
        if n_valid:
            m.scored.labels("fraud").inc(n_fraud)
            m.scored.labels("legit").inc(n_valid - n_fraud)
            m.scores.observe_many(scores)
            created = np.concatenate(
                [
                    np.array([r.timestamp for r in records], dtype=np.float64)[d.index]
                    for _, records, d in parts
                ]
            )
            latency = now - created / 1000.0
            m.latency.observe_many(latency)
            if self.latency_sink is not None:
                self.latency_sink.append(latency)
        if n_alerts:
            m.alerts.inc(n_alerts)
        if invalid_reasons:
            m.count_dlq(invalid_reasons)
        m.healthy.set(1)
        s = self.summary
        s.batches += 1
        s.consumed += n_in
        s.scored += n_valid
        s.fraud += n_fraud
        s.alerts += n_alerts
        s.dlq += len(invalid_reasons)

    def _changelog_records(self) -> list[tuple[int, list[tuple[bytes, bytes | None]]]]:
        """Changelog records for every partition with customers changed since its last record."""
        out = []
        for p, dirty in self._dirty.items():
            writer = self.writers.get(p)
            if dirty and writer is not None and p in self.online.states:
                out.append((p, writer.records(self.online.states[p], list(dirty), writer.input_offset)))
            dirty.clear()
        self._last_changelog = time.monotonic()
        return out

    def _flush_changelog(self) -> None:
        """Persist the state of every partition now (graceful stop): its own transaction, no offsets."""
        if not self.config.state_changelog or not any(self._dirty.values()) or self._producer is None:
            return
        producer, eos = self._producer, self.config.exactly_once
        try:
            if eos:
                producer.begin_transaction()
            for p, records in self._changelog_records():
                for key, value in records:
                    producer.send(self.config.topics.changelog, value=value, key=key, partition=p)
            if eos:
                producer.commit_transaction()
            else:
                producer.flush()
        except KafkaError as e:  # the next owner replays the input since the last record instead
            logger.warning("final changelog flush failed (%s)", e)

    @staticmethod
    def _check_sent(futures: list) -> None:
        for f in futures:
            if f.failed():
                raise KafkaIOError(f"produce failed: {f.exception}")

    # -- failures -------------------------------------------------------------------------------------

    def _unhealthy(self, what: str, error: Exception) -> None:
        self.metrics.healthy.set(0)
        logger.warning("%s failed (%s); retrying", what, error)
        self._stop.wait(1.0)

    def _recover(self, error: Exception | None) -> None:
        """Abort the open transaction, rebuild every assigned partition's state, rewind to the commits."""
        if error is not None:
            self.summary.failures += 1
            logger.warning(
                "batch failed (%s: %s); rolling back to the last commit", error.__class__.__name__, error
            )
        delay = 0.5
        while True:
            try:
                self._reset_producer()
                self._drop_buffers()
                for p in list(self.online.states):
                    self.online.drop_partition(p)
                self.writers.clear()
                self._dirty.clear()
                self._decided.clear()
                for tp in sorted(self._consumer.assignment(), key=lambda t: t.partition):
                    self._restore(tp.partition)
                    self._rewind(tp)
                self._needs_recovery = False
                self.metrics.healthy.set(1)
                return
            except (KafkaError, KafkaIOError, OSError, ValueError) as e:
                self.metrics.healthy.set(0)
                if self._stop.is_set():
                    raise
                logger.warning("recovery failed (%s); retrying in %.1fs", e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _reset_producer(self) -> None:
        if not self.config.exactly_once:
            return
        try:
            self._producer.abort_transaction()
            return
        except KafkaError as e:
            logger.info("abort_transaction: %s; recreating the producer", e)
        except Exception as e:  # noqa: BLE001 - e.g. IllegalStateError when no transaction is open
            logger.debug("abort_transaction: %s", e)
            return
        cfg = self.config
        try:
            self._producer.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
        self._producer = make_producer(
            cfg.bootstrap_servers, cfg.security, transactional_id=self._transactional_id(),
            transaction_timeout_ms=cfg.transaction_timeout_ms, linger_ms=5, batch_size=256 * 1024,
            client_id=cfg.client_id,
        )  # fmt: skip
        self._producer.init_transactions()

    def _rewind(self, tp: TopicPartition) -> None:
        """Position ``tp`` at its committed offset, or past what its restored state already holds."""
        committed = self._consumer.committed(tp)
        writer = self.writers.get(tp.partition)
        held = writer.input_offset if writer is not None else -1
        if held >= 0 and (committed is None or held > committed):
            self._consumer.seek(tp, held)
        elif committed is not None:
            self._consumer.seek(tp, committed)
        elif self.config.auto_offset_reset == "earliest":
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek_to_end(tp)
        position = self._consumer.position(tp)
        decided = self._decided.get(tp.partition)
        if decided is not None:  # an uncommitted batch covers at most max_records records from here
            decided.until = position + self.config.batch.max_records
        self._feed.own(tp.partition, position)

    # -- partitions and state -------------------------------------------------------------------------

    def _restore(self, partition: int) -> None:
        cfg, spec = self.config, self.model.spec
        t0 = perf_counter()
        if not cfg.state_changelog:
            self.online.set_state(partition, CustomerState(spec))
            self.writers[partition] = ChangelogWriter()
            return
        records: list[tuple[bytes | None, bytes | None]] = []
        read_partition_to_end(
            self._restore_reader,
            self._end_reader,
            TopicPartition(cfg.topics.changelog, partition),
            lambda batch: records.extend((r.key, r.value) for r in batch),
            timeout_s=cfg.transaction_timeout_ms / 1000 + 30,
            tick=self._keep_alive,
        )
        positions = None
        state_records = []
        for key, value in records:
            if key == POSITIONS_KEY:
                positions = decode_positions(value)
            else:
                state_records.append((key, value))
        state, writer = restore_state(spec, state_records)
        touched: dict[str, None] = {}
        replayed = self._replay_input(partition, state, writer, touched)
        self.online.set_state(partition, state)
        self.writers[partition] = writer
        # Customers changed by the replay are in no changelog record yet: the next one must carry them,
        # else a later restore that starts from that record (past the replayed range) loses them.
        self._dirty[partition] = touched
        decided = self._scan_outputs(partition, positions) if self._dedupe else 0
        seconds = perf_counter() - t0
        self.metrics.state_restore_seconds.observe(seconds)
        logger.info(
            "restored partition=%d customers=%d changelog_records=%d replayed=%d input_offset=%d "
            "outputs_already_there=%d seconds=%.3f",
            partition, len(state), len(records), replayed, writer.input_offset, decided, seconds,
        )  # fmt: skip

    def _output_positions(self, partition: int) -> dict[str, int]:
        """Offsets in the output partitions below which no output of this partition's next input lies."""
        decided = self._decided.get(partition)
        return decided.start if decided is not None else self._out_pos.get(partition, {})

    def _scan_outputs(self, partition: int, start: dict[str, int] | None) -> int:
        """What a predecessor already wrote for ``partition`` (``idempotence.scan_outputs``); returns how
        many outputs were found (each is skipped once when its input is processed again)."""
        cfg, topics = self.config, self.config.topics
        n_in = self._partitions[topics.input]
        outputs = {
            kind: topic
            for kind, topic in zip(OUTPUT_KINDS, (topics.output, topics.alerts, topics.dlq), strict=True)
            if self._partitions.get(topic) == n_in  # else not aligned with input partitions: nothing to find
        }
        decided, ends = scan_outputs(
            self._restore_reader, self._end_reader, outputs, topics.input, partition, start,
            timeout_s=cfg.transaction_timeout_ms / 1000 + 30, tick=self._keep_alive,
        )  # fmt: skip
        self._out_pos[partition] = ends
        if decided:
            self._decided[partition] = decided
        else:
            self._decided.pop(partition, None)
        return len(decided)

    def _replay_input(
        self, partition: int, state: CustomerState, writer: ChangelogWriter, touched: dict[str, None]
    ) -> int:
        """Apply the input records committed after the changelog's last record to ``state``.

        The changelog is written every ``changelog_interval_s``, so up to that much committed input is
        not in it; re-running those records through the same customer-state update gives exactly the
        state an uninterrupted scorer has (terminal features are not part of it). The customers it
        changes are added to ``touched``.
        """
        tp = TopicPartition(self.config.topics.input, partition)
        committed = self._consumer.committed(tp)
        if committed is None or writer.input_offset >= committed:
            return 0
        spec = self.model.spec
        scratch = OnlineFeatures(spec, TerminalTable(spec))
        scratch.set_state(partition, state)
        count = 0

        def apply(records: list) -> None:
            nonlocal count
            d = self.decoder.decode([r.value for r in records])
            if len(d):
                scratch.compute(partition, d.ts, d.customer_id, d.terminal_id, d.amount_cents)
                touched.update(dict.fromkeys(d.customer_id))
            count += len(records)

        start = writer.input_offset if writer.input_offset >= 0 else None
        read_partition_to_end(
            self._restore_reader, self._end_reader, tp, apply,
            timeout_s=self.config.transaction_timeout_ms / 1000 + 30, start=start, end=committed,
            tick=self._keep_alive,
        )  # fmt: skip
        writer.input_offset = committed
        return count

    # kafka-python runs rebalance callbacks on its IO thread, where blocking consumer calls are not
    # allowed: the callbacks only record the change; ``_apply_assignment`` does the work on the main
    # thread right after ``poll`` returns (discarding that poll's records, which it rewinds over).

    def _on_assigned(self, assigned) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        self._assigned = {tp for tp in assigned if tp.topic == self.config.topics.input}
        self._assignment_changed = True

    def _on_revoked(self, revoked) -> None:
        # Every batch is committed before the next poll, so nothing is in flight here; the state is
        # kept in case the same partitions come back (checked against the committed offset then).
        self.metrics.rebalances.labels("revoked").inc()
        logger.info("revoked partitions=%s", sorted(tp.partition for tp in revoked))

    def _on_lost(self, lost) -> None:
        self._lost |= {tp.partition for tp in lost}
        self._assignment_changed = True
        self._on_revoked(lost)

    def _apply_assignment(self) -> None:
        """Restore (or keep) the state of each assigned partition and position it (main thread)."""
        self._assignment_changed = False
        self._drop_buffers(reassigned=True)
        assigned = sorted(self._assigned, key=lambda tp: tp.partition)
        mine = [tp.partition for tp in assigned]
        logger.info("assigned partitions=%s", mine)
        for p in list(self.online.states):
            if p not in mine or p in self._lost:
                self.online.drop_partition(p)
                self.writers.pop(p, None)
        for p in set(self._decided) | set(self._out_pos):
            if p not in mine:
                self._decided.pop(p, None)
                self._out_pos.pop(p, None)
        self._lost = set()
        try:
            self._end_dead_transactions()
            for tp in assigned:
                p = tp.partition
                writer = self.writers.get(p)
                committed = self._consumer.committed(tp)
                current = writer is not None and p in self.online.states and writer.input_offset == committed
                if not current:
                    self._restore(p)
                elif self._dedupe:  # kept state; another member may still have written outputs meanwhile
                    self._scan_outputs(p, self._output_positions(p))
                self._rewind(tp)
            for p in set(self._feed.owned) - set(mine):
                self._feed.disown(p)
        except (KafkaError, KafkaIOError, OSError, ValueError) as e:
            # ValueError: kafka-python's "Unassigned partition" when the assignment was lost meanwhile
            logger.warning("restoring state on assignment failed (%s); will retry", e)
            self._needs_recovery = True
        self.metrics.assigned.set(len(mine))
        self.metrics.ready.set(1 if mine else 0)

    # -- between batches ------------------------------------------------------------------------------

    def _set_thresholds(self) -> None:
        self.metrics.threshold.labels("decision").set(self.model.threshold)
        self.metrics.threshold.labels("alert").set(self.model.alert_threshold)

    def _swap_model(self) -> None:
        if self.reloader is None:
            return
        model = self.reloader.take()
        if model is None:
            return
        old, self.model = self.model, model
        self.metrics.set_model(
            model.version, model.model_type, model.stages, model.model_dir.bytes_by_role(), model.loaded_at
        )
        self._set_thresholds()
        self.metrics.model_reloads.labels("success").inc()
        self.summary.reloads += 1
        logger.info("model swapped version=%s (was %s)", model.version, old.version)

    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_periodic < self.config.lag_interval_s:
            return
        self._last_periodic = now
        m, consumer = self.metrics, self._consumer
        lags = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:  # records buffered by the event-time sync are not processed yet
                lags[tp.partition] = high - consumer.position(tp) + self._sync.buffered_in(tp)
        m.set_lag(self.config.topics.input, lags)
        states = self.online.states.values()
        m.state_entries.labels("customer").set(sum(len(s) for s in states))
        m.state_bytes.labels("customer").set(sum(s.nbytes for s in states))
        m.state_entries.labels("terminal").set(len(self.online.terminals))
        m.state_bytes.labels("terminal").set(self.online.terminals.nbytes)
