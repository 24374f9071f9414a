"""Fixtures of the retrain tests (``test_retrain``, ``test_retrain_serving``): one drift dataset and one
trained lifecycle per session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from retrain_support import CONFIG, DAYS, DRIFT_DAY, NOW_V1, NOW_V2, START

from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import format_day, parse_day, write_table
from fraudlite.pipeline.retrain import (
    run_retrain,
)


@pytest.fixture(scope="session")
def drift_data(tmp_path_factory) -> Path:
    """A small simulated dataset whose fraud changes from DRIFT_DAY on."""
    path = tmp_path_factory.mktemp("retrain-data") / "tx.parquet"
    cfg = SimulatorConfig(
        n_customers=600,
        n_terminals=1200,
        n_days=DAYS,
        start_date=START,
        seed=7,
        drift_day=DRIFT_DAY,
        drift_rate=4e-3,
    )
    write_table(simulate(cfg), path)
    return path


@pytest.fixture(scope="session")
def lifecycle(drift_data, tmp_path_factory) -> dict:
    """v1 trained and promoted before the drift, then one *scheduled* run (fake clock) after it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from fraudlite.pipeline.scheduler import FakeClock, Scheduler, retrain_metrics

    root = tmp_path_factory.mktemp("lifecycle") / "registry"
    first = run_retrain(root, drift_data, CONFIG, now_day=NOW_V1)
    prom = CollectorRegistry()
    # the clock starts the evening before NOW_V2; the cron fires at 03:00 on NOW_V2 without real waiting
    fire_day = datetime.fromisoformat(format_day(NOW_V2)).replace(tzinfo=UTC)
    clock = FakeClock(fire_day - timedelta(hours=5))
    metrics = retrain_metrics(prom, model_registry=root, clock=clock)
    results = []

    def job(fire: datetime) -> str:
        result = run_retrain(
            root, drift_data, CONFIG, now_day=parse_day(fire.date().isoformat(), "now"), decided_at=fire
        )
        results.append(result)
        return result.decision

    records = Scheduler("0 3 * * *", job, clock=clock, metrics=metrics).run(max_runs=1)
    return {
        "root": root,
        "first": first,
        "second": results[0],
        "records": records,
        "clock": clock,
        "metrics_text": generate_latest(prom).decode(),
    }
