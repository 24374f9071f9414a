"""`fraudlite demo`: the main job end to end on generated data, with a results table at the end."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fraudlite.compression.served import open_model
from fraudlite.data.transactions import day_of, format_day, load_transactions
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.models.evaluation import evaluate_window, score_frame
from fraudlite.models.training import TrainConfig, prepare_training_data, train_model

__all__ = ["Windows", "default_windows", "run_demo"]

logger = logging.getLogger(__name__)

HISTORY_DAYS = 30


@dataclass(frozen=True)
class Windows:
    """Train (with trailing validation), a label-delay gap, then the test window. Epoch days, inclusive."""

    train_start: int
    train_end: int
    test_start: int
    test_end: int

    def describe(self) -> str:
        return (
            f"train {format_day(self.train_start)}..{format_day(self.train_end)}, "
            f"test {format_day(self.test_start)}..{format_day(self.test_end)}"
        )


def default_windows(first_day: int, last_day: int, delay_days: int = 7, test_days: int = 14) -> Windows:
    """Leave 30 days of feature history, test on the last ``test_days``, and keep a delay gap before them
    (labels of the last ``delay_days`` before the test are not known yet when the model is trained)."""
    test_start = last_day - test_days + 1
    return Windows(first_day + HISTORY_DAYS, test_start - delay_days - 1, test_start, last_day)


def run_demo(
    out_dir: str = "demo-out",
    customers: int = 2000,
    terminals: int = 4000,
    days: int = 120,
    seed: int = 42,
    max_ap_drop: float = 0.01,
    stream: bool = True,
    forever: bool = False,
    metrics_port: int = 9108,
    rate: float = 3000.0,
) -> int:
    """Generate data, train the MLP and two baselines, evaluate, compress, then stream the test window
    through the embedded broker and the scorer serving the compressed model."""
    from fraudlite.cli.foundation_commands import generate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "transactions.parquet"
    t0 = time.perf_counter()
    steps = 5 if stream else 4
    print(f"[1/{steps}] generating {customers} customers x {days} days -> {data}", flush=True)
    generate(str(data), customers, terminals, days, "2026-01-01", seed)
    df = load_transactions(data, require_label=True)
    day = day_of(df["ts"].to_numpy())
    windows = default_windows(int(day.min()), int(day.max()))
    print(f"[2/{steps}] training ({windows.describe()}, {len(df)} transactions)", flush=True)
    spec = FeatureSpec()
    rows = []
    prepared = None
    for model_type in ("logreg", "hgb", "mlp"):
        config = TrainConfig(windows.train_start, windows.train_end, model_type=model_type)
        prepared = prepared or prepare_training_data(df, config, spec)
        model = train_model(prepared, config, spec, out / f"model-{model_type}")
        scores = score_frame(open_model(model), df, prepared.X)
        metrics = evaluate_window(model, df, windows.test_start, windows.test_end, scores=scores)
        rows.append((model_type, model, metrics))
        print(f"      {model_type}: test AP={metrics['average_precision']:.4f}", flush=True)
    print(f"[3/{steps}] compressing the MLP (validation AP drop <= {max_ap_drop})", flush=True)
    serving = _compress(rows[-1][1], df, out / "model-compressed", max_ap_drop)
    if serving is not rows[-1][1]:
        metrics = evaluate_window(
            serving,
            df,
            windows.test_start,
            windows.test_end,
            scores=score_frame(open_model(serving), df, prepared.X),
        )
        rows.append(("mlp-compressed", serving, metrics))
    print(f"[4/{steps}] results on the test window (known-compromised cards excluded)\n", flush=True)
    print(_table(rows))
    results = {m: r for m, _, r in rows}
    if stream:
        from fraudlite.cli.demo_streaming import stream_demo

        history_start = format_day(windows.test_start - HISTORY_DAYS)
        print(
            f"\n[5/{steps}] streaming {history_start}..{format_day(windows.test_end)} (30 days of feature history, "
            f"then the test window) through Kafka into the scorer",
            flush=True,
        )
        live = stream_demo(
            serving.path,
            data,
            history_start,
            format_day(windows.test_end),
            metrics_port=metrics_port,
            forever=forever,
            rate=rate,
        )
        print(
            f"      {live.scored:,} of {live.replayed:,} transactions scored ({live.labels:,} late labels), "
            f"{live.rate:,.0f} tx/s, end-to-end latency p50 {live.latency_p50_ms:.1f} ms / p99 "
            f"{live.latency_p99_ms:.1f} ms, {live.alerts:,} alerts, {live.dlq} to the DLQ"
        )
        results["stream"] = live.__dict__
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(
        f"\ndata: {data}\nmodels: {', '.join(str(md.path) for _, md, _ in rows)}\nresults: {out / 'results.json'}"
    )
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _compress(model: ModelDir, df, out: Path, max_ap_drop: float) -> ModelDir:
    """The compressed model, or the fp32 one (saying why) when nothing fits the AP budget."""
    from fraudlite.compression import compress_model_dir
    from fraudlite.errors import UserError

    try:
        compressed = compress_model_dir(model, df, out, max_ap_drop=max_ap_drop, measure_memory=False)
    except UserError as e:
        print(f"      compression did not fit the budget ({e}); serving the fp32 MLP", flush=True)
        return model
    c = compressed.manifest["compression"]
    print(
        f"      stages {', '.join(str(st) for st in c.get('stages', []))}; ships {compressed.serve_bytes():,} B "
        f"to serve vs {model.serve_bytes():,} B fp32 (compact {c.get('compact_ratio', float('nan')):.1f}x "
        f"smaller than the fp32 ONNX), runs as {compressed.manifest['runtime']['form']}; "
        f"validation AP drop {c.get('ap_drop', float('nan')):+.4f}",
        flush=True,
    )
    return compressed


def _table(rows: list[tuple[str, ModelDir, dict]]) -> str:
    header = f"| {'model':<14} | {'ROC AUC':>8} | {'AP':>7} | {'CP@100':>7} | {'recall@1%':>9} | {'serve bytes':>11} |"
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, md, m in rows:
        lines.append(
            f"| {name:<14} | {m['roc_auc']:>8.4f} | {m['average_precision']:>7.4f} | {m['card_precision_at_100']:>7.4f} "
            f"| {m['recall_at_0.01_budget']:>9.4f} | {md.serve_bytes():>11,} |"
        )
    return "\n".join(lines)
