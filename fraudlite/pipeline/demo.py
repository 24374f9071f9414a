"""`fraudlite demo`: the main job end to end on generated data, with a results table at the end."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.pipeline.data import day_of, format_day, load_transactions
from fraudlite.pipeline.evaluation import evaluate_window, score_frame
from fraudlite.pipeline.training import TrainConfig, prepare_training_data, train_model

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
    out_dir: str = "demo-out", customers: int = 2000, terminals: int = 4000, days: int = 120, seed: int = 42
) -> int:
    """Generate data, train the MLP and two baselines, evaluate on the test window, print a table."""
    from fraudlite.pipeline.commands import generate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "transactions.parquet"
    t0 = time.perf_counter()
    print(f"[1/3] generating {customers} customers x {days} days -> {data}", flush=True)
    generate(str(data), customers, terminals, days, "2026-01-01", seed)
    df = load_transactions(data, require_label=True)
    day = day_of(df["ts"].to_numpy())
    windows = default_windows(int(day.min()), int(day.max()))
    print(f"[2/3] training ({windows.describe()}, {len(df)} transactions)", flush=True)
    spec = FeatureSpec()
    rows = []
    prepared = None
    for model_type in ("logreg", "hgb", "mlp"):
        config = TrainConfig(windows.train_start, windows.train_end, model_type=model_type)
        prepared = prepared or prepare_training_data(df, config, spec)
        model = train_model(prepared, config, spec, out / f"model-{model_type}")
        scores = score_frame(model, df, prepared.X)
        metrics = evaluate_window(model, df, windows.test_start, windows.test_end, scores=scores)
        rows.append((model_type, model, metrics))
        print(f"      {model_type}: test AP={metrics['average_precision']:.4f}", flush=True)
    print("[3/3] results on the test window (known-compromised cards excluded)\n", flush=True)
    print(_table(rows))
    (out / "results.json").write_text(json.dumps({m: r for m, _, r in rows}, indent=2))
    print(
        f"\ndata: {data}\nmodels: {', '.join(str(md.path) for _, md, _ in rows)}\nresults: {out / 'results.json'}"
    )
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _table(rows: list[tuple[str, ModelDir, dict]]) -> str:
    header = f"| {'model':<8} | {'ROC AUC':>8} | {'AP':>7} | {'CP@100':>7} | {'recall@1%':>9} | {'ONNX bytes':>10} |"
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, md, m in rows:
        lines.append(
            f"| {name:<8} | {m['roc_auc']:>8.4f} | {m['average_precision']:>7.4f} | {m['card_precision_at_100']:>7.4f} "
            f"| {m['recall_at_0.01_budget']:>9.4f} | {md.bytes_by_role()['onnx']:>10,} |"
        )
    return "\n".join(lines)
