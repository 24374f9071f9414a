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
                                                             (Checkpoint.commit)

Exactly-once (default): a member that lost its partitions in a rebalance cannot commit (KIP-447); any
failed transaction is aborted and the in-memory state of every assigned partition is rebuilt
(changelog + replay of the committed input since its last record) before processing resumes from the
committed offsets. At-least-once: outputs, then changelog, then offsets (``checkpoint``).

Customer state follows partitions (``state_store``): every ``changelog_interval_s`` the customers
changed since go to a compacted changelog topic inside the batch's transaction; on assignment the
state is restored from it and the committed input records after its last record are replayed.

Crash safety (``idempotence``): outputs of input partition ``p`` go to partition ``p`` of each output
topic, every batch records output ``positions`` in its transaction, and a new owner skips outputs a
crashed predecessor's transaction already made visible; the outputs of a batch are flushed before its
changelog records, so a state that includes a batch implies all of that batch's outputs exist. The
``transactional.id`` is stable per host slot (``claim_transactional_id``), so a restarted scorer ends
its predecessor's open transaction; the group member is kept alive during long restores.

The scorer's collaborators, one concept each: ``settings`` (what each collaborator is configured with,
built here once), ``clients`` (the Kafka clients of a session) over ``connection`` (topics,
transactional id, client factories), ``checkpoint`` (a batch's transaction), ``assignment`` (rebalance
listener; restore, output scan and positioning of assigned partitions), ``batch_output`` (a batch's
decisions, alerts, DLQ, ``positions`` and changelog records) and ``batch_features`` (a batch's online
features), ``partition_state`` (the per-partition bookkeeping they share), ``reporting`` (summary,
metrics) and ``flow`` (batch size, paused partitions).

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
from fraudlite.kafkaio.clients import KafkaIOError
from fraudlite.kafkaio.wire import TransactionDecoder
from fraudlite.runtime.forms import one_blas_thread
from fraudlite.streaming.assignment import PartitionRestorer, RebalanceListener
from fraudlite.streaming.batch_features import batch_features
from fraudlite.streaming.checkpoint import Checkpoint
from fraudlite.streaming.clients import ScorerClients
from fraudlite.streaming.config import ServeConfig
from fraudlite.streaming.drift_watch import DriftWatch
from fraudlite.streaming.explain import Explainer
from fraudlite.streaming.flow import adapt_max_records, update_paused
from fraudlite.streaming.health import BrokerHealth
from fraudlite.streaming.label_outcomes import LabelOutcomes
from fraudlite.streaming.metrics import ScorerMetrics
from fraudlite.streaming.partition_state import PartitionBook
from fraudlite.streaming.reload import LoadedModel, ModelReloader
from fraudlite.streaming.reporting import ServeSummary, record_batch, record_gauges, start_metrics_endpoint
from fraudlite.streaming.settings import scorer_settings
from fraudlite.streaming.shadow import Shadow
from fraudlite.streaming.state_store import ChangelogWriter
from fraudlite.streaming.sync import EventTimeSync, Part

__all__ = ["Scorer", "ServeSummary", "scorer_settings"]

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
        shadow: LoadedModel | None = None,
    ) -> None:
        self.config = config
        one_blas_thread()  # the scorer computes on one thread: the other core is the Kafka client's
        self.settings = scorer_settings(config)
        self.model = model
        self.reloader = reloader
        self.metrics = ScorerMetrics(registry if registry is not None else CollectorRegistry())
        self.metrics.set_model(
            model.version, model.model_type, model.stages, model.loaded_bytes(), model.loaded_at, model.form
        )
        self.drift = DriftWatch(self.metrics)
        self.explainer: Explainer | None = Explainer(self.metrics, config.explain_all)  # None: no reasons
        self.shadow = None if shadow is None else Shadow(shadow, config.topics, self.metrics)
        self._set_thresholds()
        # Reads the spec's extra fields; a hot swap never changes the spec (``reload``), nor this decoder.
        self.decoder = TransactionDecoder(config.limits, model.spec.extra_columns)
        self._empty_state()
        # changelog writers, customers changed since their last changelog record, outputs already there
        self.book = PartitionBook()
        self.summary = ServeSummary()
        self.latency_sink: list[np.ndarray] | None = None  # benchmarks: per-batch latencies (s)
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._needs_recovery = False
        self._rebalance = RebalanceListener(config.topics.input, self.metrics)
        self.outcomes = LabelOutcomes(self.metrics, config.label_join(model.spec.delay_days), self._rebalance)
        self._http = None
        self.clients = ScorerClients(self.settings.clients)
        self._restorer: PartitionRestorer | None = None  # per session: over the current clients
        self.checkpoint = Checkpoint(
            self.settings.checkpoint, self.settings.outputs, self.clients, self.book,
            lambda: self.online.states, self.metrics,
        )  # fmt: skip
        self._last_periodic = 0.0
        self._max_records = config.batch.max_records  # lowered while batches are slow (flow)
        self._health = BrokerHealth(
            self.metrics,
            config.bootstrap_servers,
            lambda: self.clients.consumer,
            lambda: bool(self._rebalance.assigned),
        )
        self._topics_unverified = False  # set when the connection comes back: did the broker keep them?

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

    @property
    def _restore_reader(self):
        """The session's restore reader (tests slow its fetches down through it)."""
        return self.clients.restore_reader

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
        self.clients.open(self.online.terminals, self.decoder, self._rebalance)
        self.outcomes.attach(self.clients.feed, self.clients.partitions[cfg.topics.input])  # labels -> join
        self._restorer = PartitionRestorer(
            self.settings.restore, self.model.spec, self.decoder, self.metrics, self.online, self.book,
            self.clients,
        )  # fmt: skip

    def _close_clients(self) -> None:
        self.clients.close()
        self._restorer = None

    def _check_topics_after_outage(self) -> None:
        """After the broker came back: if it lost our topics (the embedded broker keeps nothing across a
        restart; Kafka does), start a fresh session: new clients, empty state, the new topics' offsets."""
        lost = self.clients.topics_lost()
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
        start = time.monotonic()
        parts: list[Part] = []
        try:
            while not self._stop.is_set():
                self._swap_model()
                if self._outage_unchecked():
                    continue
                batch = self._poll(bool(parts))
                if batch is None:
                    continue
                if self._repartitioned():
                    batch = {}  # rewound over: the partitions were repositioned
                t0 = perf_counter()
                parts = self._release(batch)
                if parts:
                    try:
                        self._process(parts, perf_counter() - t0)
                    except (KafkaError, KafkaIOError) as e:
                        self._recover(e)
                    else:
                        self._adapt_batch_size(parts, perf_counter() - t0)
                    self.summary.seconds = time.monotonic() - start
                    if self._done(max_batches, until):
                        break
                self._periodic()
            if self._stop.is_set():
                self._flush_changelog()
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
        self.clients.txn_id.release()  # frees the host slot of our transactional id

    # -- the loop's steps -----------------------------------------------------------------------------

    def _outage_unchecked(self) -> bool:
        """After an outage: check whether the broker kept our topics; True until that check is done."""
        if self._health.take_reconnected():
            self._topics_unverified = True
        if self._topics_unverified:
            self._check_topics_after_outage()
            return True
        return False

    def _poll(self, pending: bool) -> dict | None:
        """The next records (``pending``: the last batch released records); None when the poll failed."""
        # Do not wait for new records while a full batch is already buffered.
        full = pending and self._sync.buffered >= self._max_records
        try:
            return self.clients.poll(0 if full else self.config.batch.max_ms, self._max_records)
        except KafkaError as e:
            self._unhealthy("poll", e)
            return None

    def _repartitioned(self) -> bool:
        """Apply a rebalance, then a pending rollback; True when either repositioned the partitions."""
        changed = self._rebalance.changed
        if changed:
            self._apply_assignment()
        if self._needs_recovery:
            self._recover(None)
            changed = True
        return changed

    def _release(self, batch: dict) -> list[Part]:
        """Buffer the polled records and release what the event-time sync lets through."""
        for tp, records in batch.items():
            self._sync.add(tp, records)
        parts = self._sync.take(self._rebalance.assigned, self.clients.caught_up, self._max_records)
        self._pause_held()
        return parts

    def _process(self, parts: list[Part], decode_seconds: float) -> None:
        """Features, scores, then the batch's transaction (``Checkpoint.commit``); counts the batch."""
        model, clients = self.model, self.clients
        t1 = perf_counter()
        t0 = t1 - decode_seconds
        x = batch_features(parts, self.online, clients.feed, model.spec.delay_days)
        t2 = perf_counter()
        clients.keep_alive()
        scores = model.scorer.score(x) if x is not None else np.zeros(0, dtype=np.float32)
        self.drift.observe(x, scores)
        t3 = perf_counter()
        why = self.explainer(model, x, scores) if self.explainer is not None else None
        e = perf_counter() - t3  # the explain stage's own time: the stamps before it move by it
        shadow = self.shadow.batch(x, parts, clients.partitions) if self.shadow is not None else None
        moved = e + (shadow.seconds if shadow is not None else 0.0)  # the shadow's own time moves them too
        clients.keep_alive()
        done = self.checkpoint.commit(parts, scores, model, why, shadow.send if shadow is not None else None)
        stamps = (t0 + moved, t1 + moved, t2 + moved, t3 + moved, done.sent_at, done.committed_at)
        record_batch(
            self.metrics, self.summary, parts, scores, done.sent, stamps, time.time(), self.latency_sink
        )
        if shadow is not None:
            self.shadow.record(shadow, scores, model)
        self.outcomes.record(parts, scores, model, shadow)

    def _adapt_batch_size(self, parts: list[Part], seconds: float) -> None:
        cfg = self.config
        records = sum(len(r) for _, r, _ in parts)
        self._max_records = adapt_max_records(
            self._max_records, records, seconds, cfg.batch.max_records, cfg.max_poll_interval_ms
        )

    def _done(self, max_batches: int | None, until: Callable[[ServeSummary], bool] | None) -> bool:
        return (max_batches is not None and self.summary.batches >= max_batches) or (
            until is not None and until(self.summary)
        )

    def _flush_changelog(self) -> None:
        """On a graceful stop: persist the state of every partition (``Checkpoint.flush_changelog``)."""
        # Unreachable, it would block until the broker is back; the next owner replays the input instead.
        if self._health.down:
            logger.warning("kafka unreachable: stopping without the final changelog record")
        else:
            self.checkpoint.flush_changelog()

    def _pause_held(self) -> None:
        """Stop fetching partitions whose buffers (event-time sync) are full; resume the others."""
        held = self._sync.full(self.config.batch.max_records)
        self._paused = update_paused(self.clients.consumer, held, self._paused)

    def _drop_buffers(self, reassigned: bool = False) -> None:
        """Forget buffered records before repositioning (a new assignment starts unpaused)."""
        self._sync.reset()
        if reassigned:
            self._paused = set()
        self._pause_held()

    # -- partitions and failures ----------------------------------------------------------------------

    def _apply_assignment(self) -> None:
        """Restore (or keep) the state of each assigned partition and position it (main thread, after
        ``poll``: see ``assignment``)."""
        self._rebalance.changed = False
        self._drop_buffers(reassigned=True)
        if not self._restorer.apply(self._rebalance, self.clients.txn_id.end_dead_transactions):
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
                self.checkpoint.abort()
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

    # -- between batches ------------------------------------------------------------------------------

    def _set_thresholds(self) -> None:
        """Publish the model's thresholds and alert budget; watch its drift from now on."""
        self.metrics.threshold.labels("decision").set(self.model.threshold)
        self.metrics.threshold.labels("alert").set(self.model.alert_threshold)
        budget = self.model.scorer.alert_budget_per_1k
        self.metrics.alert_budget.set(float("nan") if budget is None else budget)
        self.drift.use(self.model)

    def _swap_model(self) -> None:
        if self.reloader is None:
            return
        model = self.reloader.take()
        if model is None:
            return
        old, self.model = self.model, model
        self.metrics.set_model(
            model.version, model.model_type, model.stages, model.loaded_bytes(), model.loaded_at, model.form
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
        record_gauges(self.metrics, self.clients.consumer, self._sync, self.online, self.config.topics.input)
