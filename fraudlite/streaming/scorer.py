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

The scorer's collaborators, one concept each: ``connection`` (topics, transactional id, clients),
``assignment`` (rebalance listener; restore, output scan and positioning of assigned partitions),
``batch_output`` (a batch's decisions, alerts, DLQ, ``positions`` and changelog records) and
``batch_features`` (a batch's online features), ``partition_state`` (the per-partition bookkeeping they
share), ``reporting`` (summary, metrics) and ``flow`` (batch size, paused partitions).

The ``fraudlite serve`` entry point around it is ``fraudlite.streaming.serve.run_serve``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from time import perf_counter

import numpy as np
from kafka import TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from fraudlite.features.online import OnlineFeatures, TerminalTable
from fraudlite.kafkaio.clients import KafkaIOError, keep_alive, release_parked
from fraudlite.kafkaio.wire import TransactionDecoder
from fraudlite.streaming.assignment import PartitionRestorer, RebalanceListener
from fraudlite.streaming.batch_features import batch_features
from fraudlite.streaming.batch_output import (
    changelog_records,
    check_sent,
    commit_batch,
    flush_changelog,
    send_changelog,
    send_outputs,
)
from fraudlite.streaming.config import ServeConfig
from fraudlite.streaming.connection import (
    TransactionalIdClaim,
    abort_transaction,
    check_changelog_partitions,
    close_clients,
    ensure_serving_topics,
    make_end_reader,
    make_group_consumer,
    make_restore_reader,
    make_scorer_producer,
    make_terminal_feed,
    topics_lost,
)
from fraudlite.streaming.flow import adapt_max_records, update_paused
from fraudlite.streaming.health import BrokerHealth
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.outputs import iso_now
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.reload import LoadedModel, ModelReloader
from fraudlite.streaming.reporting import ServeSummary, record_batch, record_gauges, start_metrics_endpoint
from fraudlite.streaming.state_store import ChangelogWriter
from fraudlite.streaming.sync import EventTimeSync, Part

__all__ = ["Scorer", "ServeSummary"]

logger = logging.getLogger(__name__)


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
        self._empty_state()
        # changelog writers, customers changed since their last changelog record, outputs already there
        self.book = PartitionBook()
        self._last_changelog = time.monotonic()
        self.summary = ServeSummary()
        self.latency_sink: list[np.ndarray] | None = None  # benchmarks: per-batch latencies (s)
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._needs_recovery = False
        self._rebalance = RebalanceListener(config.topics.input, self.metrics)
        self._partitions: dict[str, int] = {}
        self._http = None
        self._consumer = self._producer = self._feed = None
        self._restore_reader = self._end_reader = None
        self._restorer: PartitionRestorer | None = None  # per session: over the current clients
        self._last_periodic = 0.0
        self._txn_id = TransactionalIdClaim(config)
        self._max_records = config.batch.max_records  # lowered while batches are slow (flow)
        self._health = BrokerHealth(
            self.metrics,
            config.bootstrap_servers,
            lambda: self._consumer,
            lambda: bool(self._rebalance.assigned),
        )
        self._topics_unverified = False  # set when the connection comes back: did the broker keep them?
        self._topic_ids: dict[str, str | None] = {}

    def _empty_state(self) -> None:
        """Online features and event-time buffers as a fresh scorer starts them."""
        spec = self.model.spec
        self.online = OnlineFeatures(spec, TerminalTable(spec))
        skew = max(0, min(spec.delay_days - 1, self.online.terminals.slack_days))
        self._sync = EventTimeSync(self.decoder, skew)
        self._paused: set[TopicPartition] = set()

    @property
    def writers(self) -> dict[int, ChangelogWriter]:
        """Changelog bookkeeping per owned input partition (``book.writers``)."""
        return self.book.writers

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
            self._http = start_metrics_endpoint(self.metrics.registry, cfg.metrics_host, cfg.metrics_port)
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
        cfg = self.config
        logger.info(
            "connecting bootstrap=%s group=%s delivery=%s %s",
            cfg.bootstrap_servers, cfg.group_id, cfg.delivery, cfg.security.describe(),
        )  # fmt: skip
        counts, self._topic_ids = ensure_serving_topics(cfg)
        check_changelog_partitions(cfg, counts)
        self._partitions = counts
        txn_id = self._txn_id.get() if cfg.exactly_once else None
        self._producer = make_scorer_producer(cfg, txn_id)
        if cfg.exactly_once:
            self._producer.init_transactions()
        self._restore_reader = make_restore_reader(cfg)
        self._end_reader = make_end_reader(cfg)
        self._feed = make_terminal_feed(cfg, self.online.terminals, self.decoder)
        self._feed.assign(counts)
        self._consumer = make_group_consumer(cfg)
        self._consumer.subscribe([cfg.topics.input], listener=self._rebalance)
        self._restorer = PartitionRestorer(
            cfg, self.model.spec, self.decoder, self.metrics, self.online, self.book, counts,
            self._consumer, self._restore_reader, self._end_reader, self._feed,
        )  # fmt: skip

    def _check_topics_after_outage(self) -> None:
        """After the broker came back: if it lost our topics (the embedded broker keeps nothing across a
        restart; Kafka does), start a fresh session: new clients, empty state, the new topics' offsets."""
        lost = topics_lost(self.config, self._topic_ids)
        if lost is None:
            self._stop.wait(1.0)
            return
        self._topics_unverified = False
        if not lost:
            return
        logger.warning(
            "the broker came back without our topics (%s recreated: memory storage restarted?); starting a new "
            "session from empty state and the new topics' committed offsets", ", ".join(lost),
        )  # fmt: skip
        self._close_clients()
        self._empty_state()
        self._rebalance.reset()
        self.book.clear()
        self._needs_recovery = False
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
        rebalance = self._rebalance
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
                if rebalance.changed:
                    self._apply_assignment()
                    batch = {}
                if self._needs_recovery:
                    self._recover(None)
                    batch = {}
                t0 = perf_counter()
                for tp, records in batch.items():
                    self._sync.add(tp, records)
                parts = self._sync.take(rebalance.assigned, self._caught_up, self._max_records)
                self._pause_held()
                if parts:
                    try:
                        self._process(parts, perf_counter() - t0)
                    except (KafkaError, KafkaIOError) as e:
                        self._recover(e)
                    else:
                        records = sum(len(r) for _, r, _ in parts)
                        self._max_records = adapt_max_records(
                            self._max_records, records, perf_counter() - t0,
                            cfg.batch.max_records, cfg.max_poll_interval_ms,
                        )  # fmt: skip
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
        self._txn_id.release()  # frees the host slot of our transactional id

    def _keep_alive(self) -> None:
        keep_alive(self._consumer)

    def _close_clients(self) -> None:
        close_clients(self._consumer, self._producer, self._restore_reader, self._end_reader, self._feed)
        self._consumer = self._producer = self._feed = None
        self._restore_reader = self._end_reader = None
        self._restorer = None

    # -- the batch --------------------------------------------------------------------------------------

    def _caught_up(self, tp: TopicPartition) -> bool:
        high = self._consumer.highwater(tp)
        return high is not None and self._consumer.position(tp) >= high

    def _pause_held(self) -> None:
        """Stop fetching partitions whose buffers (event-time sync) are full; resume the others."""
        held = self._sync.full(self.config.batch.max_records)
        self._paused = update_paused(self._consumer, held, self._paused)

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
        x = batch_features(parts, self.online, self._feed, model.spec.delay_days)
        t2 = perf_counter()
        self._keep_alive()
        scores = model.scorer.score(x) if x is not None else np.zeros(0, dtype=np.float32)
        t3 = perf_counter()
        self._keep_alive()

        producer = self._producer
        eos = cfg.exactly_once
        if eos:
            producer.begin_transaction()
        out = send_outputs(
            producer, cfg, self._partitions, parts, scores, model, iso_now(time.time()), self.book
        )
        futures = out.futures
        if not eos:
            producer.flush()
            check_sent(futures)
            futures = []
        changelog = []
        if cfg.state_changelog and time.monotonic() - self._last_changelog >= cfg.changelog_interval_s:
            changelog = self._changelog_records()
        if changelog and eos:
            # The outputs reach the broker before the state that includes this batch: should the
            # transaction survive a crash only in part (the embedded broker commits a crashed producer's
            # open transaction), a restored state never claims a batch whose outputs are missing.
            producer.flush()
        futures += send_changelog(producer, topics.changelog, changelog)
        t4 = perf_counter()
        commit_batch(producer, self._consumer, parts, futures, eos, m)
        t5 = perf_counter()
        now = time.time()
        self.book.note_sent(out.last_sent)
        record_batch(m, self.summary, parts, scores, out, (t0, t1, t2, t3, t4, t5), now, self.latency_sink)

    def _changelog_records(self) -> list[tuple[int, list[tuple[bytes, bytes | None]]]]:
        """Changelog records for every partition with customers changed since its last record."""
        out = changelog_records(self.book, self.online.states)
        self._last_changelog = time.monotonic()
        return out

    def _flush_changelog(self) -> None:
        """Persist the state of every partition now (graceful stop): its own transaction, no offsets."""
        if not self.config.state_changelog or not any(self.book.dirty.values()) or self._producer is None:
            return
        cfg = self.config
        try:
            flush_changelog(self._producer, cfg.exactly_once, cfg.topics.changelog, self._changelog_records)
        except KafkaError as e:  # the next owner replays the input since the last record instead
            logger.warning("final changelog flush failed (%s)", e)

    # -- partitions and failures ----------------------------------------------------------------------

    def _apply_assignment(self) -> None:
        """Restore (or keep) the state of each assigned partition and position it (main thread, after
        ``poll``: see ``assignment``)."""
        self._rebalance.changed = False
        self._drop_buffers(reassigned=True)
        if not self._restorer.apply(self._rebalance, self._txn_id.end_dead_transactions):
            self._needs_recovery = True

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
                self._restorer.rebuild_all()
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
        """Abort the open transaction (exactly-once); a producer that cannot is replaced."""
        if self.config.exactly_once and not abort_transaction(self._producer):
            self._producer = make_scorer_producer(self.config, self._txn_id.get())
            self._producer.init_transactions()

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
        record_gauges(self.metrics, self._consumer, self._sync, self.online, self.config.topics.input)
