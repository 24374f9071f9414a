"""What the scorer reports: its summary counts, each batch's metrics, the periodic gauges, the endpoint.

``record_batch`` runs once per committed batch (stage times, sizes, scores, end-to-end latency, alerts,
DLQ reasons, suppressed duplicates); ``record_gauges`` every ``lag_interval_s`` (consumer lag including
the records the event-time sync still holds, state sizes). Both only read what they are given.
``start_metrics_endpoint`` serves the registry (``--metrics-host``/``--metrics-port``).
"""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import numpy as np
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from fraudlite.errors import UserError
from fraudlite.features.online import OnlineFeatures
from fraudlite.streaming.batch_output import SentBatch
from fraudlite.streaming.metrics import ScorerMetrics, serve_metrics
from fraudlite.streaming.sync import EventTimeSync, Part

__all__ = ["ServeSummary", "record_batch", "record_gauges", "start_metrics_endpoint"]

STAGES = ("decode", "features", "inference", "produce", "commit")


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


def record_batch(
    m: ScorerMetrics,
    summary: ServeSummary,
    parts: list[Part],
    scores: np.ndarray,
    sent: SentBatch,
    stamps: tuple[float, float, float, float, float, float],
    now: float,
    latency_sink: list[np.ndarray] | None = None,
) -> None:
    """Count a committed batch in the metrics and the summary.

    Args:
        m: the scorer's metrics.
        summary: the scorer's summary.
        parts: the batch, ``[(tp, records, decoded)]``.
        scores: one score per valid transaction.
        sent: what ``batch_output.send_outputs`` sent for it.
        stamps: ``perf_counter`` at the start of each stage of ``STAGES`` and after the last one.
        now: wall-clock time after the commit (latency = now - the records' create time).
        latency_sink: if given, each batch's latencies (s) are appended to it (benchmarks).
    """
    for kind, n in sent.suppressed.items():
        if n:
            m.duplicates_suppressed.labels(kind).inc(n)
    n_in = sum(len(records) for _, records, _ in parts)
    n_valid, n_fraud, n_alerts, invalid_reasons = len(scores), sent.fraud, sent.alerts, sent.invalid_reasons
    for stage, start, end in zip(STAGES, stamps, stamps[1:], strict=False):
        m.stage_seconds.labels(stage).observe(end - start)
    m.batches.inc()
    m.batch_size.observe(n_in)
    m.consumed.inc(n_in)
    if n_valid:
        m.scored.labels("fraud").inc(n_fraud)
        m.scored.labels("legit").inc(n_valid - n_fraud)
        m.scores.observe_many(scores)
        created = np.concatenate(
            [np.array([r.timestamp for r in records], dtype=np.float64)[d.index] for _, records, d in parts]
        )
        latency = now - created / 1000.0
        m.latency.observe_many(latency)
        if latency_sink is not None:
            latency_sink.append(latency)
    if n_alerts:
        m.alerts.inc(n_alerts)
    if invalid_reasons:
        m.count_dlq(invalid_reasons)
    m.healthy.set(1)
    s = summary
    s.batches += 1
    s.consumed += n_in
    s.scored += n_valid
    s.fraud += n_fraud
    s.alerts += n_alerts
    s.dlq += len(invalid_reasons)


def record_gauges(
    m: ScorerMetrics, consumer: KafkaConsumer, sync: EventTimeSync, online: OnlineFeatures, input_topic: str
) -> None:
    """Consumer lag per assigned input partition and the size of the customer and terminal state."""
    lags = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:  # records buffered by the event-time sync are not processed yet
            lags[tp.partition] = high - consumer.position(tp) + sync.buffered_in(tp)
    m.set_lag(input_topic, lags)
    states = online.states.values()
    m.state_entries.labels("customer").set(sum(len(s) for s in states))
    m.state_bytes.labels("customer").set(sum(s.nbytes for s in states))
    m.state_entries.labels("terminal").set(len(online.terminals))
    m.state_bytes.labels("terminal").set(online.terminals.nbytes)


def start_metrics_endpoint(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (``metrics.serve_metrics``); returns the server.

    Raises:
        UserError: the address cannot be bound.
    """
    try:
        server, _ = serve_metrics(registry, host, port)
    except OSError as e:
        raise UserError(
            f"--metrics-host/--metrics-port: cannot listen on {host}:{port} ({e.strerror or e})"
        ) from None
    return server
