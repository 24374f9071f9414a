"""CLI glue of the model lifecycle: ``fraudlite registry``, ``retrain`` and ``collect`` (printing, exit codes).

Argument parsing is in ``fraudlite.cli``; the work is in ``fraudlite.pipeline.registry`` and
``fraudlite.pipeline.retrain``. The retrain modules are imported inside ``retrain_command`` so that
``fraudlite registry`` stays light (no pandas, no torch).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from fraudlite.errors import ConfigError
from fraudlite.pipeline.registry import Registry, RegistryError

__all__ = ["registry_command", "retrain_command", "collect_command"]

logger = logging.getLogger(__name__)


# --- `fraudlite registry` ------------------------------------------------------------------------------


def _fmt_ap(metrics: dict | None) -> str:
    if not metrics or metrics.get("average_precision") is None:
        return "-"
    return f"{metrics['average_precision']:.4f}"


def _table(rows: list[dict]) -> str:
    header = ("VERSION", "STATUS", "CREATED", "MODEL", "TRAIN WINDOW", "VALID AP", "RECENT AP", "PARENT")
    lines = [header]
    for r in rows:
        window = r.get("data_window") or {}
        span = f"{window.get('train_start', '?')}..{window.get('valid_end', window.get('train_end', '?'))}"
        lines.append(
            (
                r["version"] + (" *" if r["champion"] else ""),
                r["status"],
                str(r.get("created") or "-")[:19],
                str(r.get("model_type") or "-"),
                span if window else "-",
                _fmt_ap(r["metrics"]["validation"]),
                _fmt_ap(r["metrics"]["recent_window"]),
                str(r.get("parent_version") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    )


def registry_command(root: str, action: str, version: str | None = None, as_json: bool = False) -> int:
    """``fraudlite registry --root DIR list [--json] | show V | promote V | rollback | verify [V]``.

    Returns:
        0 on success; 1 when ``verify`` finds a problem (each printed on stderr, naming the file).

    Raises:
        RegistryError / IntegrityError: not a registry, unknown version, nothing to roll back, a promote
        of a version that fails verification (the registry is unchanged).
    """
    reg = Registry(root)
    if action == "list":
        rows = reg.list()
        if as_json:
            print(json.dumps({"root": str(reg.root), "champion": reg.champion(), "versions": rows}, indent=2))
        elif not rows:
            print(f"{reg.root}: no versions yet")
        else:
            print(_table(rows))
            print(f"\n* champion: {reg.champion() or 'none'}")
        return 0
    if action in ("show", "promote") and not version:
        raise RegistryError(f"registry {action}: give a VERSION")
    if action == "show":
        info = reg.describe(version)
        info["manifest"] = reg.load(version, verify=False).manifest
        info["history"] = [
            e
            for e in reg.history()
            if version in (e.get("challenger"), e.get("champion"), e.get("new_champion"))
        ]
        print(json.dumps(info, indent=2, default=str))
        return 0
    if action == "promote":
        entry = reg.promote(version, reason="manual promote (fraudlite registry promote)")
        if entry["decision"] == "unchanged":
            print(f"{version} is already the champion; nothing changed")
        else:
            print(f"promoted {version} (previous champion: {entry['champion'] or 'none'})")
        return 0
    if action == "rollback":
        entry = reg.rollback(reason="manual rollback (fraudlite registry rollback)")
        print(f"rolled back: champion {entry['champion']} -> {entry['new_champion']}")
        return 0
    if action == "verify":
        report = reg.verify(version)
        bad = 0
        for v, problems in report.items():
            if problems:
                bad += 1
                for p in problems:
                    print(f"FAILED {v}: {p}", file=sys.stderr)
            else:
                print(f"ok     {v}")
        if not report:
            print(f"{reg.root}: no versions to verify")
        if bad:
            print(f"{bad} of {len(report)} version(s) failed verification", file=sys.stderr)
            return 1
        return 0
    raise RegistryError(f"unknown registry action {action!r}")


# --- `fraudlite retrain` -------------------------------------------------------------------------------


def retrain_command(
    registry: str,
    data: str,
    columns: dict[str, str] | None = None,
    *,
    now: str | None = None,
    once: bool = False,
    schedule: str | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 9109,
    **settings,
) -> int:
    """``fraudlite retrain``: one run (``--once``; prints the decision as JSON) or a cron schedule.

    ``settings`` are RetrainConfig fields (train_days, delay_days, tolerance, max_ap_drop, ...).
    """
    from fraudlite.data.transactions import parse_day
    from fraudlite.pipeline.retrain import RetrainConfig, run_retrain

    if once == bool(schedule):
        raise ConfigError("give exactly one of --once or --schedule CRON")
    config = RetrainConfig(**settings)
    if schedule:
        if now:
            raise ConfigError("--now applies to --once; a scheduled run takes each run's own date")
        from fraudlite.pipeline.scheduler import run_schedule

        return run_schedule(
            schedule,
            registry,
            data,
            columns or {},
            config,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
        )
    now_day = parse_day(now, "--now") if now else None
    result = run_retrain(registry, data, config, now_day=now_day, columns=columns)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    sys.stdout.flush()
    return 0


# --- `fraudlite collect` -------------------------------------------------------------------------------


def collect_command(**settings) -> int:
    """``fraudlite collect``: run the collector (SIGTERM/SIGINT stop it after a final write).

    ``settings`` are CollectConfig fields.
    """
    from fraudlite.pipeline.label_collect import CollectConfig, collect
    from fraudlite.pipeline.label_store import LabelStore

    config = CollectConfig(**settings)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        logger.info("collect: signal %d, finishing", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = collect(config, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(stats.summary())
    print(json.dumps(LabelStore(config.store).summary()))
    return 0
