"""Cron scheduling of retrain runs, with Prometheus metrics and an injectable clock.

``Scheduler(cron, job, clock=...)`` waits for each fire time of a cron expression (croniter, UTC) and
calls ``job(fire_time)``, which returns an outcome (``promoted`` / ``rejected``). Runs never overlap:
they run one after the other in this process, fire times missed while a run was still going are
skipped (logged), and across processes the retrain job itself holds the registry's retrain lock. A run
that raises is logged with its traceback, counted as ``failed``, and the next fire time still comes.

Metrics (built by ``retrain_metrics`` on a caller's ``CollectorRegistry``; names used by the dashboard):

* ``fraudlite_retrain_runs_total{outcome="promoted|rejected|failed"}``
* ``fraudlite_retrain_last_success_timestamp_seconds`` (end of the last run that reached a decision)
* ``fraudlite_retrain_last_duration_seconds`` (the last run, whatever its outcome)
* ``fraudlite_champion_info{version="..."}`` 1, and ``fraudlite_champion_age_seconds`` — read from the
  registry at scrape time, so a manual ``fraudlite registry promote/rollback`` shows up too.

The clock (``now()`` and ``sleep(seconds)``) is injected so tests run a schedule without waiting.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from fraudlite.errors import ConfigError, UserError

__all__ = [
    "Clock",
    "SystemClock",
    "FakeClock",
    "CronSchedule",
    "RetrainMetrics",
    "retrain_metrics",
    "Scheduler",
    "RunRecord",
    "run_schedule",
    "OUTCOMES",
]

logger = logging.getLogger(__name__)

OUTCOMES = ("promoted", "rejected", "failed")
_MAX_SLEEP_S = 60.0


class Clock(Protocol):
    """Time source of the scheduler: aware UTC ``now()`` and a ``sleep`` that may return early."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall clock; ``sleep`` returns early when ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when slept on (or ``advance``d): schedules run without real waiting."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start
        self.slept = 0.0

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept += seconds
        self._now = self._now + timedelta(seconds=seconds)


class CronSchedule:
    """A validated cron expression evaluated in UTC.

    Raises:
        ConfigError: the expression is not valid cron.
    """

    def __init__(self, expression: str) -> None:
        from croniter import croniter

        expression = (expression or "").strip()
        if not expression or not croniter.is_valid(expression):
            raise ConfigError(
                f"--schedule: invalid cron expression {expression!r} "
                "(five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
            )
        self.expression = expression

    def next_after(self, t: datetime) -> datetime:
        """The first fire time strictly after ``t`` (aware UTC)."""
        from croniter import croniter

        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        nxt = croniter(self.expression, t.astimezone(UTC)).get_next(datetime)
        return nxt if nxt.tzinfo else nxt.replace(tzinfo=UTC)


class _ChampionCollector:
    """``fraudlite_champion_info`` and ``fraudlite_champion_age_seconds``, read from the registry per scrape."""

    def __init__(self, root: str | Path, clock: Clock) -> None:
        self.root = Path(root)
        self.clock = clock

    def describe(self):
        yield GaugeMetricFamily(
            "fraudlite_champion_info", "Champion model version (value 1)", labels=["version"]
        )
        yield GaugeMetricFamily("fraudlite_champion_age_seconds", "Seconds since the champion was promoted")

    def collect(self):
        from fraudlite.pipeline.registry import Registry, RegistryError

        info = GaugeMetricFamily(
            "fraudlite_champion_info", "Champion model version (value 1)", labels=["version"]
        )
        age = GaugeMetricFamily("fraudlite_champion_age_seconds", "Seconds since the champion was promoted")
        try:
            reg = Registry(self.root)
            champion = reg.champion()
            if champion is not None:
                info.add_metric([champion], 1.0)
                since = reg.champion_since()
                if since is not None:
                    age.add_metric([], max(0.0, self.clock.now().timestamp() - since))
        except (RegistryError, OSError) as e:
            logger.debug("champion metrics: %s", e)
        yield info
        yield age


@dataclass
class RetrainMetrics:
    """The scheduler's metrics (see the module docstring)."""

    runs: Counter
    last_success: Gauge
    last_duration: Gauge

    def observe(self, outcome: str, duration_s: float, finished_at: datetime) -> None:
        self.runs.labels(outcome=outcome).inc()
        self.last_duration.set(duration_s)
        if outcome != "failed":
            self.last_success.set(finished_at.timestamp())


def retrain_metrics(
    registry: CollectorRegistry, *, model_registry: str | Path | None = None, clock: Clock | None = None
) -> RetrainMetrics:
    """Create the retrain metrics on ``registry`` (never the global one).

    Args:
        registry: the Prometheus registry to register on.
        model_registry: the model registry whose champion the champion metrics report (None: none).
        clock: time source of ``fraudlite_champion_age_seconds`` (default: wall clock).
    """
    runs = Counter("fraudlite_retrain_runs", "Retrain runs by outcome", ["outcome"], registry=registry)
    for outcome in OUTCOMES:
        runs.labels(outcome=outcome)
    metrics = RetrainMetrics(
        runs=runs,
        last_success=Gauge(
            "fraudlite_retrain_last_success_timestamp_seconds",
            "Unix time at which the last retrain run that reached a decision finished",
            registry=registry,
        ),
        last_duration=Gauge(
            "fraudlite_retrain_last_duration_seconds", "Duration of the last retrain run", registry=registry
        ),
    )
    if model_registry is not None:
        registry.register(_ChampionCollector(model_registry, clock or SystemClock()))
    return metrics


@dataclass(frozen=True)
class RunRecord:
    """One scheduled run."""

    fire_time: datetime
    outcome: str
    duration_seconds: float
    error: str | None = None


class Scheduler:
    """Run ``job(fire_time) -> outcome`` at each fire time of ``cron``; never overlapping, never dying.

    Args:
        cron: cron expression (UTC).
        job: the run; returns ``"promoted"`` or ``"rejected"``; an exception counts as ``"failed"``.
        clock: time source (``SystemClock`` by default).
        metrics: where outcomes are counted (optional).
        stop: set it to end ``run`` (between runs, or during the wait).
    """

    def __init__(
        self,
        cron: str | CronSchedule,
        job: Callable[[datetime], str],
        *,
        clock: Clock | None = None,
        metrics: RetrainMetrics | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.schedule = cron if isinstance(cron, CronSchedule) else CronSchedule(cron)
        self.job = job
        self.stop = stop or threading.Event()
        self.clock = clock or SystemClock(self.stop)
        self.metrics = metrics
        self.records: list[RunRecord] = []
        self._running = threading.Lock()

    def wait_until(self, fire: datetime) -> bool:
        """Sleep until ``fire`` (in chunks, so a stop or a clock jump is noticed); False if stopped."""
        while not self.stop.is_set():
            remaining = (fire - self.clock.now()).total_seconds()
            if remaining <= 0:
                return True
            self.clock.sleep(min(remaining, _MAX_SLEEP_S))
        return False

    def run_once(self, fire: datetime) -> RunRecord:
        """Run the job now for ``fire`` and record its outcome (never raises for a failed run)."""
        if not self._running.acquire(blocking=False):  # a second caller in this process: refuse to overlap
            raise RuntimeError("a scheduled run is already in progress")
        t0 = time.perf_counter()
        error = None
        try:
            try:
                outcome = self.job(fire)
                if outcome not in OUTCOMES[:2]:
                    raise ValueError(f"retrain job returned {outcome!r}, expected promoted or rejected")
            except Exception as e:  # noqa: BLE001 - a failed run must not end the schedule
                # a user error (bad data, busy lock) needs its message, a bug its traceback
                logger.error(
                    "scheduler: run for %s failed: %s",
                    fire.isoformat(),
                    e,
                    exc_info=not isinstance(e, UserError),
                )
                outcome, error = "failed", f"{e.__class__.__name__}: {e}"
            duration = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.observe(outcome, duration, self.clock.now())
        finally:
            self._running.release()
        record = RunRecord(fire, outcome, round(duration, 3), error)
        self.records.append(record)
        logger.info(
            "scheduler: run fire_time=%s outcome=%s seconds=%.1f", fire.isoformat(), outcome, duration
        )
        return record

    def run(self, max_runs: int | None = None) -> list[RunRecord]:
        """Loop over fire times until ``stop`` is set (or ``max_runs`` runs happened)."""
        runs = 0
        while not self.stop.is_set() and (max_runs is None or runs < max_runs):
            now = self.clock.now()
            fire = self.schedule.next_after(now)
            logger.info("scheduler: next run at %s (%s)", fire.isoformat(), self.schedule.expression)
            if not self.wait_until(fire):
                break
            self.run_once(fire)
            runs += 1
            missed = 0
            nxt = self.schedule.next_after(fire)
            while nxt <= self.clock.now() and missed < 10_000:
                missed += 1
                nxt = self.schedule.next_after(nxt)
            if missed:
                logger.warning(
                    "scheduler: the run overran %d fire time(s); they are skipped, not queued", missed
                )
        return self.records


def run_schedule(
    cron: str,
    registry: str,
    data: str,
    columns: dict[str, str],
    config,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 9109,
    clock: Clock | None = None,
    max_runs: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """``fraudlite retrain --schedule CRON``: serve metrics and run retrains forever (SIGTERM stops it).

    Raises:
        ConfigError: invalid cron expression or metrics port (checked before anything starts).
    """
    from prometheus_client import start_http_server

    from fraudlite.data.transactions import parse_day
    from fraudlite.pipeline.retrain import run_retrain

    schedule = CronSchedule(cron)
    if not 0 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be in 0..65535, got {metrics_port}")
    stop = stop or threading.Event()
    clock = clock or SystemClock(stop)
    prom = CollectorRegistry()
    metrics = retrain_metrics(prom, model_registry=registry, clock=clock)
    try:
        server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=prom)
    except OSError as e:
        raise ConfigError(
            f"--metrics-port {metrics_port}: cannot listen on {metrics_host} ({e.strerror})"
        ) from e
    logger.info("scheduler: metrics on http://%s:%d/metrics", metrics_host, server.server_port)

    def job(fire: datetime) -> str:
        now_day = parse_day(fire.date().isoformat(), "--now")
        return run_retrain(
            registry, data, config, now_day=now_day, columns=columns, decided_at=clock.now()
        ).decision

    def on_signal(signum, _frame) -> None:
        logger.info("scheduler: signal %d, stopping after the current run", signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        Scheduler(schedule, job, clock=clock, metrics=metrics, stop=stop).run(max_runs=max_runs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.shutdown()
    return 0
