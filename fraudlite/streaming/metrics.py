"""Prometheus metrics of the streaming scorer (docs/ARCHITECTURE.md, "Metrics").

``ScorerMetrics(registry)`` builds every metric on the given ``CollectorRegistry`` (never the global one,
never at import time), plus the standard process metrics (RSS, CPU, open fds) and Python info.
``serve_metrics(registry, host, port)`` exposes it over HTTP.

Per-message values (scores, end-to-end latencies) are recorded a batch at a time with
``BatchHistogram.observe_many``: one numpy ``searchsorted`` + ``bincount`` per batch instead of a
Python call per message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fraudlite.kafkaio.wire import REASONS, base_reason

__all__ = [
    "ScorerMetrics",
    "BatchHistogram",
    "serve_metrics",
    "LATENCY_BUCKETS",
    "STAGE_BUCKETS",
    "SCORE_BUCKETS",
    "STAGES",
    "DECISIONS",
    "EXTRA_STAGES",
    "OUTCOMES",
]

#: End-to-end latency (record timestamp -> decision produced), seconds. Steps of at most ~1.5x from 1 ms to
#: 1 s: a quantile is interpolated linearly inside its bucket, so with the earlier 0.1 / 0.25 / 0.5 edges the
#: soak's per-minute p99 read 247 ms and a minute later 428 ms: past 250 ms its true value was anywhere in 0.5 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Per-stage time of one batch, seconds (sub-millisecond resolution).
STAGE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
STAGES = ("decode", "features", "inference", "produce", "commit")
#: Per-batch time of the optional steps (reason codes of alerted rows, the shadow model).
EXTRA_STAGES = ("explain", "shadow")
#: |shadow score - served score| per transaction.
DELTA_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: A late label against the alert made (or not) for its transaction: positive = alerted.
OUTCOMES = ("true_positive", "false_positive", "false_negative", "true_negative")
DECISIONS = ("fraud", "legit")
DECISION_KINDS = ("decision", "alert")


class BatchHistogram(Collector):
    """A histogram (optionally with labels) that takes a whole numpy array per call.

    Exposed exactly like ``prometheus_client.Histogram`` (``_bucket``/``_sum``/``_count``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], list] = {}
        if not self.labelnames:
            self._series[()] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0.0]
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray, labels: tuple[str, ...] = ()) -> None:
        """Record every value of ``values`` (NaNs are ignored)."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        values = values[~np.isnan(values)]
        idx = np.searchsorted(self.bounds, values, side="left")  # bucket i holds values <= bounds[i]
        counts = np.bincount(idx, minlength=len(self.bounds) + 1)
        total = float(values.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0.0]
            series[0] += counts
            series[1] += total

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, v[0].copy(), v[1]) for k, v in self._series.items()]
        edges = [floatToGoString(b) for b in self.bounds.tolist()] + ["+Inf"]
        for labels, counts, total in snapshot:
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(edges, cumulative, strict=True)), total)
        yield family


class ScorerMetrics:
    """Every metric the scorer exports, on one registry.

    Args:
        registry: where to register (a fresh ``CollectorRegistry()`` per scorer/test).
        process: also register the standard process and platform collectors.
    """

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        self.registry = registry
        r = registry
        self.scored = Counter(
            "fraudlite_transactions_scored_total",
            "Transactions scored, by decision.",
            ["decision"],
            registry=r,
        )
        self.consumed = Counter(
            "fraudlite_messages_consumed_total", "Input messages consumed (valid and invalid).", registry=r
        )
        self.dlq = Counter(
            "fraudlite_dlq_messages_total",
            "Invalid input messages sent to the DLQ, by base reason (bad_type:<field> counts as bad_type).",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            "fraudlite_alerts_total", "Alerts produced (score >= alert threshold).", registry=r
        )
        self.batches = Counter("fraudlite_batches_total", "Micro-batches processed.", registry=r)
        self.batch_size = Histogram(
            "fraudlite_batch_size", "Messages per micro-batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "fraudlite_stage_seconds",
            "Time per micro-batch in each stage (decode, features, inference, produce, commit).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.latency = BatchHistogram(
            "fraudlite_end_to_end_latency_seconds",
            "Record timestamp (producer create time) to decision produced, per transaction.",
            LATENCY_BUCKETS,
            registry=r,
        )
        self.scores = BatchHistogram(
            "fraudlite_score", "Fraud score per transaction.", SCORE_BUCKETS, registry=r
        )
        self.lag = Gauge(
            "fraudlite_consumer_lag_messages",
            "Messages behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "fraudlite_assigned_partitions", "Input partitions assigned to this member.", registry=r
        )
        self.rebalances = Counter(
            "fraudlite_rebalances_total", "Partition assignments and revocations.", ["kind"], registry=r
        )
        self.commit_failures = Counter(
            "fraudlite_commit_failures_total",
            "Failed commits or Kafka transactions (the batch is retried from the last commit).",
            ["kind"],
            registry=r,
        )
        self.model_info = Gauge(
            "fraudlite_model_info",
            "The model being served (value 1): version, model type, compression stages, runnable form.",
            ["version", "model_type", "stages", "form"],
            registry=r,
        )
        self.model_bytes = Gauge(
            "fraudlite_model_bytes",
            "Bytes loaded to serve the model, by file role (manifest, compact or onnx, spec); "
            "documentation and training files are never loaded.",
            ["role"],
            registry=r,
        )
        self.threshold = Gauge("fraudlite_threshold", "Decision thresholds in use.", ["kind"], registry=r)
        self.model_reloads = Counter(
            "fraudlite_model_reloads_total", "Model reload attempts, by result.", ["result"], registry=r
        )
        self.model_loaded_at = Gauge(
            "fraudlite_model_loaded_timestamp_seconds",
            "When the current model was loaded (epoch s).",
            registry=r,
        )
        self.state_entries = Gauge(
            "fraudlite_state_entries", "Entities held in online feature state.", ["kind"], registry=r
        )
        self.state_bytes = Gauge(
            "fraudlite_state_bytes", "Bytes of online feature state.", ["kind"], registry=r
        )
        self.state_restore_seconds = Histogram(
            "fraudlite_state_restore_seconds",
            "Time to restore one partition's customer state from its changelog.",
            buckets=STAGE_BUCKETS + (10.0, 30.0, 60.0),
            registry=r,
        )
        self.duplicates_suppressed = Counter(
            "fraudlite_duplicate_outputs_suppressed_total",
            "Outputs not produced again after a crash because the predecessor's transaction already made "
            "them visible, by output kind (decisions, alerts, dlq).",
            ["kind"],
            registry=r,
        )
        self.ready = Gauge(
            "fraudlite_scorer_ready",
            "1 when the scorer has a model, an assignment and is consuming.",
            registry=r,
        )
        self.healthy = Gauge(
            "fraudlite_scorer_healthy",
            "1 while the last Kafka round trip succeeded, 0 while it fails.",
            registry=r,
        )
        self._monitoring_metrics(r)
        for decision in DECISIONS:
            self.scored.labels(decision)
        for reason in REASONS:
            self.dlq.labels(reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in ("assigned", "revoked"):
            self.rebalances.labels(kind)
        for kind in ("commit", "transaction"):
            self.commit_failures.labels(kind)
        for result in ("success", "failure"):
            self.model_reloads.labels(result)
        for kind in ("decisions", "alerts", "dlq"):
            self.duplicates_suppressed.labels(kind)
        for stage in EXTRA_STAGES:
            self.stage_seconds.labels(stage)
        for kind in DECISION_KINDS:
            self.shadow_disagreements.labels(kind)
        for reason in ("capacity", "horizon"):
            self.label_join_evictions.labels(reason)
        self.healthy.set(1)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def _monitoring_metrics(self, r: CollectorRegistry) -> None:
        """Drift, realized quality from late labels, reason codes, the shadow model, the alert budget."""
        self.feature_drift = Gauge(
            "fraudlite_feature_drift_psi",
            "Population stability index of each model input over the drift window vs the training reference.",
            ["feature"],
            registry=r,
        )
        self.score_drift = Gauge(
            "fraudlite_score_drift_psi",
            "Population stability index of the served score over the drift window vs the training reference.",
            registry=r,
        )
        self.drift_rows = Gauge(
            "fraudlite_drift_window_rows", "Transactions in the drift window.", registry=r
        )
        self.label_outcomes = Counter(
            "fraudlite_label_outcomes_total",
            "Late labels joined to this scorer's decisions: alerted (positive) or not vs the label.",
            ["outcome", "model_version"],
            registry=r,
        )
        self.labels_unmatched = Counter(
            "fraudlite_labels_unmatched_total",
            "Labels of this member's transactions (its partitions, after it took them over) that found no "
            "decision: evicted from the bounded join, or never scored. Other members' labels are not counted.",
            registry=r,
        )
        self.label_join_entries = Gauge(
            "fraudlite_label_join_entries", "Decisions held waiting for their late label.", registry=r
        )
        self.label_join_bytes = Gauge(
            "fraudlite_label_join_bytes", "Estimated bytes of the decisions the label join holds.", registry=r
        )
        self.label_join_evictions = Counter(
            "fraudlite_label_join_evictions_total",
            "Decisions dropped from the label join before their label came, by reason (capacity: the "
            "join was full; horizon: older than the label horizon).",
            ["reason"],
            registry=r,
        )
        self.explained = Counter("fraudlite_explained_total", "Transactions given reason codes.", registry=r)
        self.shadow_info = Gauge(
            "fraudlite_shadow_model_info",
            "The shadow model scoring the same batches (value 1): version, runnable form.",
            ["version", "form"],
            registry=r,
        )
        self.shadow_scored = Counter(
            "fraudlite_shadow_scored_total", "Transactions scored by the shadow model.", registry=r
        )
        self.shadow_disagreements = Counter(
            "fraudlite_shadow_disagreements_total",
            "Transactions where the shadow model's decision (or alert) differs from the served model's.",
            ["kind"],
            registry=r,
        )
        self.shadow_score_delta = BatchHistogram(
            "fraudlite_shadow_score_delta",
            "|shadow score - served score| per transaction.",
            DELTA_BUCKETS,
            registry=r,
        )
        self.shadow_label_outcomes = Counter(
            "fraudlite_shadow_label_outcomes_total",
            "Late labels joined to the shadow model's alerts (as if it had served).",
            ["outcome", "model_version"],
            registry=r,
        )
        self.alert_budget = Gauge(
            "fraudlite_alert_budget_per_1k",
            "The alert budget the alert threshold was set for (alerts per 1,000 transactions); NaN when "
            "the model has none.",
            registry=r,
        )

    def set_model(
        self,
        version: str,
        model_type: str,
        stages: Sequence[str],
        bytes_by_role: Mapping[str, int],
        loaded_at: float,
        form: str = "",
    ) -> None:
        """Publish the model now being served (replaces the previous model's info series); its label
        outcome counters start at 0."""
        self.model_info.clear()
        self.model_info.labels(version, model_type, ",".join(stages) or "none", form).set(1)
        self.model_bytes.clear()
        for role, n in bytes_by_role.items():
            self.model_bytes.labels(role).set(n)
        self.model_loaded_at.set(loaded_at)
        for outcome in OUTCOMES:
            self.label_outcomes.labels(outcome, version)

    def set_shadow(self, version: str, form: str) -> None:
        """Publish the shadow model (``streaming.shadow``); its label outcome counters start at 0."""
        self.shadow_info.clear()
        self.shadow_info.labels(version, form).set(1)
        for outcome in OUTCOMES:
            self.shadow_label_outcomes.labels(outcome, version)

    def set_lag(self, topic: str, lags: Mapping[int, int]) -> None:
        """Replace the lag series with ``{partition: messages behind}`` of the current assignment."""
        self.lag.clear()
        for partition, lag in lags.items():
            self.lag.labels(topic, str(partition)).set(max(0, int(lag)))

    def count_dlq(self, reasons: Iterable[str]) -> None:
        """Count DLQ records by base reason (``bad_type:device_score`` counts as ``bad_type``)."""
        counts: dict[str, int] = {}
        for reason in map(base_reason, reasons):
            counts[reason] = counts.get(reason, 0) + 1
        for reason, n in counts.items():
            self.dlq.labels(reason).inc(n)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    Returns:
        (server, thread); ``server.server_port`` is the bound port (useful with port 0);
        stop with ``server.shutdown(); server.server_close()``.

    Raises:
        OSError: the address is taken or not bindable.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread
