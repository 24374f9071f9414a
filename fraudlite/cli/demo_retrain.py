"""`fraudlite demo --retrain`: one retrain-and-promote cycle on generated data with drift, step by step."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fraudlite.cli.lifecycle_commands import registry_command
from fraudlite.data.simulator import SimulatorConfig, simulate
from fraudlite.data.transactions import format_day, parse_day, write_table
from fraudlite.pipeline.retrain import RetrainConfig, RetrainResult, run_retrain
from fraudlite.pipeline.scheduler import FakeClock, Scheduler

__all__ = ["retrain_demo"]


def retrain_demo(
    out_dir: str = "demo-out/retrain",
    customers: int = 1000,
    days: int = 90,
    drift_day: int = 50,
    seed: int = 42,
    max_epochs: int | None = 5,
    max_ap_drop: float = 0.02,
) -> int:
    """One retrain-and-promote cycle on generated data with drift, printed step by step.

    v1 is trained on the days before ``drift_day`` and promoted (first model); then a *scheduled* run
    (cron ``0 3 * * *`` on a simulated clock, no waiting) at the end of the data trains v2 on the drifted
    days, compares both on the most recent labelled week, and promotes v2 if it is not worse.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, registry = out / "transactions.parquet", out / "registry"
    if registry.exists():
        shutil.rmtree(registry)
    sim = SimulatorConfig(
        n_customers=customers,
        n_terminals=2 * customers,
        n_days=days,
        seed=seed,
        drift_day=drift_day,
        drift_rate=4e-3,
    )
    print(
        f"[1/3] generating {customers} customers x {days} days, new fraud pattern from day {drift_day} -> {data}"
    )
    write_table(simulate(sim), data)
    # A small demo population makes validation AP noisy, so the compression budget is wider than the
    # 0.005 default (pass --max-ap-drop to `fraudlite retrain` for real data).
    config = RetrainConfig(max_epochs=max_epochs, max_ap_drop=max_ap_drop)
    first_day = parse_day(sim.start_date, "--start-date")
    now_v1 = first_day + drift_day - 1 + config.delay_days
    print(f"[2/3] retrain --once --now {format_day(now_v1)} (labelled data ends just before the drift)")
    r1 = run_retrain(registry, data, config, now_day=now_v1)
    print(f"      {r1.decision} {r1.challenger}: {r1.reason}")
    now_v2 = first_day + days - 1 + config.delay_days
    clock = FakeClock(datetime.fromisoformat(format_day(now_v2)).replace(tzinfo=UTC) - timedelta(hours=6))
    print(f"[3/3] retrain --schedule '0 3 * * *' (simulated clock from {clock.now().isoformat()})")
    results: list[RetrainResult] = []

    def job(fire: datetime) -> str:
        results.append(
            run_retrain(registry, data, config, now_day=parse_day(fire.date().isoformat(), "--now"))
        )
        return results[-1].decision

    record = Scheduler("0 3 * * *", job, clock=clock).run(max_runs=1)[0]
    r2 = results[0]
    print(f"      run at {record.fire_time.isoformat()}: {r2.decision} {r2.challenger}: {r2.reason}")
    report = r2.compression.get("report") if isinstance(r2.compression, dict) else None
    if report:
        print(
            f"      compressed: compact artifact {report.get('compact_bytes')} bytes "
            f"({report.get('compact_ratio', 0):.0f}x smaller than the fp32 ONNX), AP drop {report.get('ap_drop', 0):+.4f}"
        )
    champ, chall = r2.metrics["champion"] or {}, r2.metrics["challenger"]
    print(
        f"\nAP on the most recent labelled week ({r2.windows['eval_start']}..{r2.windows['eval_end']}, drifted): "
        f"v1 {champ.get('average_precision', float('nan')):.4f} -> v2 {chall['average_precision']:.4f}\n"
    )
    registry_command(str(registry), "list")
    print(f"\nregistry: {registry}  (fraudlite registry --root {registry} list | show V | rollback | verify)")
    return 0
