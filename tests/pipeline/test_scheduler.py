"""Scheduler: cron fire times on an injected clock, no overlap, failed runs survived, metrics content."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fraudlite.cli import main
from fraudlite.errors import ConfigError
from fraudlite.pipeline.registry import Registry
from fraudlite.pipeline.scheduler import (
    CronSchedule,
    FakeClock,
    Scheduler,
    retrain_metrics,
    run_schedule,
)

T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)


def metric(prom: CollectorRegistry, name: str, labels: dict | None = None) -> float | None:
    return prom.get_sample_value(name, labels or {})


def test_cron_validation_and_next_fire():
    s = CronSchedule("0 3 * * *")
    assert s.next_after(T0) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert s.next_after(datetime(2026, 3, 2, 3, 0, tzinfo=UTC)) == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    assert CronSchedule("*/15 * * * *").next_after(T0) == datetime(2026, 3, 1, 22, 45, tzinfo=UTC)
    for bad in ("", "61 * * * *", "* * *", "every day", "0 3 * * * * * *"):
        with pytest.raises(ConfigError, match="invalid cron expression"):
            CronSchedule(bad)


def test_runs_at_fire_times_without_real_waiting_and_survives_failures():
    clock = FakeClock(T0)
    prom = CollectorRegistry()
    metrics = retrain_metrics(prom)
    outcomes = iter(["promoted", RuntimeError("training blew up"), "rejected", "promoted"])
    fired: list[datetime] = []

    def job(fire: datetime) -> str:
        assert clock.now() == fire  # the job starts exactly at its fire time
        fired.append(fire)
        clock.advance(600)  # a 10-minute run
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    t = time.perf_counter()
    records = Scheduler("0 3 * * *", job, clock=clock, metrics=metrics).run(max_runs=4)
    assert time.perf_counter() - t < 5  # three and a half simulated days, no real waiting
    assert fired == [datetime(2026, 3, d, 3, 0, tzinfo=UTC) for d in (2, 3, 4, 5)]
    assert [r.outcome for r in records] == ["promoted", "failed", "rejected", "promoted"]
    assert records[1].error == "RuntimeError: training blew up"
    assert metric(prom, "fraudlite_retrain_runs_total", {"outcome": "promoted"}) == 2
    assert metric(prom, "fraudlite_retrain_runs_total", {"outcome": "rejected"}) == 1
    assert metric(prom, "fraudlite_retrain_runs_total", {"outcome": "failed"}) == 1
    # last success = end of the last run that decided (fire 2026-03-05 03:00 + 10 min)
    assert metric(prom, "fraudlite_retrain_last_success_timestamp_seconds") == pytest.approx(
        datetime(2026, 3, 5, 3, 10, tzinfo=UTC).timestamp()
    )
    assert metric(prom, "fraudlite_retrain_last_duration_seconds") >= 0


def test_a_failed_run_does_not_update_last_success():
    clock = FakeClock(T0)
    prom = CollectorRegistry()
    metrics = retrain_metrics(prom)

    def job(fire):
        raise ValueError("bad data")

    Scheduler("0 3 * * *", job, clock=clock, metrics=metrics).run(max_runs=2)
    assert metric(prom, "fraudlite_retrain_runs_total", {"outcome": "failed"}) == 2
    assert metric(prom, "fraudlite_retrain_last_success_timestamp_seconds") == 0
    # a job returning something that is not an outcome is a failed run too
    Scheduler("0 3 * * *", lambda fire: "maybe", clock=clock, metrics=metrics).run(max_runs=1)
    assert metric(prom, "fraudlite_retrain_runs_total", {"outcome": "failed"}) == 3


def test_runs_never_overlap_and_missed_fires_are_skipped():
    clock = FakeClock(T0)
    active = []
    starts = []

    def job(fire):
        active.append(fire)
        assert len(active) == 1, "two runs at once"
        starts.append(clock.now())
        clock.advance(3.5 * 3600)  # hourly cron, a run of 3.5 hours: 3 fire times pass meanwhile
        active.pop()
        return "rejected"

    sched = Scheduler("0 * * * *", job, clock=clock)
    sched.run(max_runs=3)
    assert starts == [
        datetime(2026, 3, 1, 23, 0, tzinfo=UTC),
        datetime(2026, 3, 2, 3, 0, tzinfo=UTC),
        datetime(2026, 3, 2, 7, 0, tzinfo=UTC),
    ]
    # a second caller in the same process cannot start a run while one is going
    gate, release = threading.Event(), threading.Event()

    def slow(fire):
        gate.set()
        release.wait(10)
        return "promoted"

    s2 = Scheduler("0 * * * *", slow, clock=FakeClock(T0))
    t = threading.Thread(target=s2.run_once, args=(T0,))
    t.start()
    assert gate.wait(10)
    with pytest.raises(RuntimeError, match="already in progress"):
        s2.run_once(T0)
    release.set()
    t.join(10)


def test_stop_ends_the_wait():
    stop = threading.Event()
    sched = Scheduler(
        "0 3 * * *", lambda fire: "promoted", stop=stop
    )  # the real clock: next fire is hours away
    t = threading.Thread(target=sched.run)
    t.start()
    time.sleep(0.2)
    stop.set()
    t.join(5)
    assert not t.is_alive() and sched.records == []


def _fake_version(reg: Registry, tmp_path, name: str):
    from fraudlite.features.spec import FeatureSpec
    from fraudlite.modeldir import write_model_dir

    def write(tmp):
        (tmp / "model.onnx").write_bytes(b"onnx " + name.encode())
        (tmp / "feature_spec.json").write_text(json.dumps({"spec": FeatureSpec().to_dict()}))
        return {"model.onnx": "onnx", "feature_spec.json": "spec"}

    md = write_model_dir(tmp_path / "src" / name, write, {"version": name, "threshold": 0.5})
    return reg.add(md)


def test_champion_metrics_follow_the_registry(tmp_path):
    reg = Registry(tmp_path / "reg", create=True)
    for v in ("v1", "v2"):
        _fake_version(reg, tmp_path, v)
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    prom = CollectorRegistry()
    retrain_metrics(prom, model_registry=reg.root, clock=clock)
    assert metric(prom, "fraudlite_champion_info", {"version": "v1"}) is None
    assert metric(prom, "fraudlite_champion_age_seconds") is None
    reg.promote("v1", time="2026-03-01T10:00:00+00:00")
    assert metric(prom, "fraudlite_champion_info", {"version": "v1"}) == 1
    assert metric(prom, "fraudlite_champion_age_seconds") == 7200
    reg.promote("v2", time="2026-03-01T11:30:00+00:00")  # e.g. a manual promote from the CLI
    clock.advance(60)
    assert metric(prom, "fraudlite_champion_info", {"version": "v1"}) is None
    assert metric(prom, "fraudlite_champion_info", {"version": "v2"}) == 1
    assert metric(prom, "fraudlite_champion_age_seconds") == 1860
    text = generate_latest(prom).decode()
    for name in (
        "fraudlite_retrain_runs_total",
        "fraudlite_retrain_last_success_timestamp_seconds",
        "fraudlite_retrain_last_duration_seconds",
        "fraudlite_champion_info",
        "fraudlite_champion_age_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')} " in text or f"# TYPE {name} " in text, name


class _SlowFakeClock(FakeClock):
    """Fake time, but each sleep also takes a few real milliseconds (so a scrape can happen meanwhile)."""

    def sleep(self, seconds: float) -> None:
        time.sleep(0.005)
        self.advance(seconds)


def test_run_schedule_serves_metrics_and_counts_a_failed_run(tmp_path):
    """The real entry point: metrics over HTTP, a run that fails on missing data, the schedule goes on."""
    import socket

    from fraudlite.pipeline.retrain import RetrainConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock, stop, exit_code = _SlowFakeClock(T0), threading.Event(), []
    args = ("0 3 * * *", str(tmp_path / "reg"), str(tmp_path / "missing.parquet"), {}, RetrainConfig())
    kwargs = {"metrics_port": port, "clock": clock, "stop": stop}
    t = threading.Thread(target=lambda: exit_code.append(run_schedule(*args, **kwargs)))
    t.start()
    body = ""
    deadline = time.monotonic() + 30
    while 'outcome="failed"} 1.0' not in body and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            continue
    stop.set()
    t.join(10)
    assert exit_code == [0] and not t.is_alive()
    assert 'fraudlite_retrain_runs_total{outcome="failed"} 1.0' in body
    assert 'fraudlite_retrain_runs_total{outcome="promoted"} 0.0' in body
    assert clock.now() > datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # waiting for the next fire when stopped
    assert not (tmp_path / "reg").exists()  # failed runs leave no registry behind


def test_cli_schedule_bad_input_exits_2(tmp_path, capsys):
    argv = ["retrain", "--registry", str(tmp_path / "r"), "--data", str(tmp_path / "x.parquet")]
    assert main(argv + ["--schedule", "0 25 * * *"]) == 2
    assert "invalid cron expression '0 25 * * *'" in capsys.readouterr().err
    assert main(argv + ["--schedule", "0 3 * * *", "--metrics-port", "70000"]) == 2
    assert "--metrics-port must be in 0..65535" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
