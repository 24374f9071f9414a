"""The streaming half of ``fraudlite demo``: embedded broker, replay, scorer, a live status line.

Runs the scorer in a thread of this process with the same code as ``fraudlite serve``; the replay runs
in another thread, so one command shows the whole path on a laptop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudlite.kafkaio.broker import EmbeddedBroker, free_port
from fraudlite.streaming.config import ServeConfig
from fraudlite.streaming.serve import make_scorer

__all__ = ["StreamDemoResult", "stream_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamDemoResult:
    replayed: int
    labels: int
    scored: int
    alerts: int
    dlq: int
    seconds: float
    rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    model_version: str
    metrics_url: str


def _metrics_port(preferred: int) -> int:
    try:
        return free_port() if preferred == 0 else _check(preferred)
    except OSError:
        port = free_port()
        print(f"      port {preferred} is taken; metrics on {port} instead", flush=True)
        return port


def _check(port: int) -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    return port


def stream_demo(
    model_dir: Path,
    data: Path,
    start: str,
    end: str,
    metrics_port: int = 9108,
    forever: bool = False,
    rate: float = 3000.0,
    timeout_s: float = 600.0,
) -> StreamDemoResult:
    """Replay ``data`` days [start, end] (with labels, late) through a scorer serving ``model_dir``.

    Prints a status line every second; returns when every replayed transaction is scored (or after
    ``timeout_s``); with ``forever``, keeps serving until Ctrl-C. ``rate`` paces the replay (tx/s, 0 = flat
    out): latency is measured from produce time, so an unpaced replay measures its own backlog.
    """
    from fraudlite.streaming.replay import replay

    kafka_logger = logging.getLogger("kafka")
    if kafka_logger.getEffectiveLevel() > logging.DEBUG:
        # its event-loop warnings would break the status line; --verbose keeps them
        kafka_logger.setLevel(logging.ERROR)

    port = _metrics_port(metrics_port)
    with EmbeddedBroker() as broker:
        config = ServeConfig(
            bootstrap_servers=broker.bootstrap,
            model_dir=model_dir,
            group_id="fraudlite-demo",
            metrics_port=port,
        )
        scorer = make_scorer(config)
        sink: list[np.ndarray] = []
        scorer.latency_sink = sink
        scorer.connect()
        url = f"http://127.0.0.1:{scorer.metrics_port}/metrics"
        print(f"      broker {broker.bootstrap}, metrics {url}, model {scorer.model.version}", flush=True)
        serving = threading.Thread(target=scorer.run, name="scorer", daemon=True)
        serving.start()
        replayed: dict = {}

        def produce() -> None:
            replayed["result"] = replay(
                str(data), bootstrap_servers=broker.bootstrap, start=start, end=end, labels_topic="fraud-labels",
                rate=rate, progress_every_s=3600,
            )  # fmt: skip

        producer = threading.Thread(target=produce, name="replay", daemon=True)
        t0 = time.perf_counter()
        producer.start()
        try:
            while True:
                time.sleep(1.0)
                _status(scorer.summary, sink, time.perf_counter() - t0)
                done = "result" in replayed and scorer.summary.consumed >= replayed["result"].transactions
                if (done and not forever) or not serving.is_alive():
                    break
                if time.perf_counter() - t0 > timeout_s and not forever:
                    print("\n      time limit reached; stopping", flush=True)
                    break
        except KeyboardInterrupt:
            print("\n      interrupted; stopping", flush=True)
        finally:
            print(flush=True)
            scorer.stop()
            serving.join(timeout=30)
            scorer.close()
        seconds = time.perf_counter() - t0
        s = scorer.summary
        lat = np.concatenate(sink) if sink else np.zeros(1)
        result = replayed.get("result")
        return StreamDemoResult(
            replayed=result.transactions if result else 0,
            labels=result.labels if result else 0,
            scored=s.scored,
            alerts=s.alerts,
            dlq=s.dlq,
            seconds=seconds,
            rate=s.consumed / seconds,
            latency_p50_ms=float(np.percentile(lat, 50) * 1000),
            latency_p99_ms=float(np.percentile(lat, 99) * 1000),
            model_version=scorer.model.version,
            metrics_url=url,
        )


def _status(s, sink: list[np.ndarray], elapsed: float) -> None:
    recent = np.concatenate(sink[-20:]) if sink else None
    latency = (
        f"p50 {np.percentile(recent, 50) * 1000:6.1f} ms  p99 {np.percentile(recent, 99) * 1000:6.1f} ms"
        if recent is not None and len(recent)
        else "p50      - ms  p99      - ms"
    )
    print(
        f"\r      scored {s.scored:>8,}  {s.consumed / max(elapsed, 1e-9):>7,.0f} tx/s  {latency}  "
        f"alerts {s.alerts:>6,}  dlq {s.dlq:>4,}",
        end="",
        flush=True,
    )
