"""Broker health of a running scorer: a small thread that follows the group consumer's connection.

The scorer's main thread can block for as long as the broker is away (kafka-python waits for a
transaction commit without a timeout) and ``poll`` alone cannot tell "no traffic" from "no broker", so
the connection is probed here every half second (``kafkaio.clients.broker_connected``: the group coordinator is
known and connected; no request is sent). Transitions set the ``fraudlite_scorer_healthy`` and
``fraudlite_scorer_ready`` gauges and are logged once each (plus a reminder every 30 s while down);
``take_reconnected()`` tells the scorer to check its topics after an outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fraudlite.kafkaio.clients import broker_connected
from fraudlite.streaming.metrics import ScorerMetrics

__all__ = ["BrokerHealth"]

logger = logging.getLogger(__name__)


class BrokerHealth:
    """Follows the broker connection of ``consumer()`` (see the module docstring).

    Args:
        metrics: the scorer's metrics (healthy / ready gauges).
        bootstrap: for log lines.
        consumer: returns the current group consumer (or None between sessions).
        assigned: returns whether the scorer owns partitions (ready = healthy and assigned).
        interval_s: probe period.
    """

    def __init__(
        self,
        metrics: ScorerMetrics,
        bootstrap: str,
        consumer: Callable[[], object],
        assigned: Callable[[], bool],
        interval_s: float = 0.5,
    ) -> None:
        self.metrics = metrics
        self.bootstrap = bootstrap
        self._consumer = consumer
        self._assigned = assigned
        self.interval_s = interval_s
        self.down_since: float | None = None  # monotonic time the connection was lost, None while up
        self._logged = 0.0
        self._seen_up = False  # before the coordinator was ever found, "unknown" is not an outage
        self._reconnected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fraudlite-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def new_session(self) -> None:
        """The scorer is reconnecting from scratch: wait for a coordinator again before judging."""
        self._seen_up = False

    def take_reconnected(self) -> bool:
        """True once after the connection came back from an outage."""
        if self._reconnected:
            self._reconnected = False
            return True
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - a probe must never kill the scorer
                logger.debug("health check: %s", e)

    def check(self) -> None:
        """One probe (also callable directly): update gauges, log transitions."""
        up = broker_connected(self._consumer())
        now = time.monotonic()
        self._seen_up = self._seen_up or up
        if not self._seen_up:
            return  # still joining the group: no coordinator yet is not an outage
        if up:
            if self.down_since is not None:
                logger.warning(
                    "kafka connection back after %.1fs (bootstrap=%s)", now - self.down_since, self.bootstrap
                )
                self.down_since = None
                self._reconnected = True
                self.metrics.healthy.set(1)
                self.metrics.ready.set(1 if self._assigned() else 0)
            return
        if self.down_since is None:
            self.down_since = self._logged = now
            self.metrics.healthy.set(0)
            self.metrics.ready.set(0)
            logger.warning(
                "kafka connection lost (bootstrap=%s, group coordinator unreachable); retrying, the scorer "
                "keeps running and resumes from the committed offsets", self.bootstrap,
            )  # fmt: skip
        elif now - self._logged >= 30:
            self._logged = now
            logger.warning("kafka still unreachable after %.0fs; retrying", now - self.down_since)
