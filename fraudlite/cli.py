"""Command line: argument parsing only; each command calls one function.

User errors (``fraudlite.errors.UserError``) print one line and exit with status 2; heavy imports happen
inside the command handlers so ``fraudlite --help`` and the serving commands stay light.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from fraudlite.errors import ConfigError, UserError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("fraudlite")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; keep its message to one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_columns(text: str | None) -> dict[str, str]:
    """``tx_id=id,timestamp=ts`` -> {"tx_id": "id", "timestamp": "ts"}."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        logical, sep, source = part.partition("=")
        if not sep or not logical.strip() or not source.strip():
            raise ConfigError(f"--columns: expected LOGICAL=SOURCE pairs separated by commas, got {part!r}")
        mapping[logical.strip()] = source.strip()
    return mapping


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="transactions file (.csv or .parquet)")
    p.add_argument(
        "--columns",
        help="map logical columns to the file's: tx_id=SRC,timestamp=SRC,customer_id=SRC,terminal_id=SRC,"
        "amount=SRC,label=SRC (unmapped names are taken as they are)",
    )


# --- foundation: generate / train / evaluate / score -------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.commands import generate

    return generate(
        out=args.out,
        customers=args.customers,
        terminals=args.terminals,
        days=args.days,
        start_date=args.start_date,
        seed=args.seed,
        drift_day=args.drift_day,
    )


def _train(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.commands import train

    return train(
        data=args.data,
        columns=parse_columns(args.columns),
        train_start=args.train_start,
        train_end=args.train_end,
        out=args.out,
        valid_start=args.valid_start,
        valid_end=args.valid_end,
        valid_days=args.valid_days,
        delay_days=args.delay_days,
        model_type=args.model_type,
        seed=args.seed,
        max_epochs=args.max_epochs,
    )


def _evaluate(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.commands import evaluate

    return evaluate(args.model, args.data, parse_columns(args.columns), args.start, args.end, k=args.k)


def _score(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.commands import score

    return score(args.model, args.data, parse_columns(args.columns), args.out)


def _demo(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.demo import run_demo

    return run_demo(args.out, args.customers, args.terminals, args.days, args.seed)


def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="simulate a transaction dataset with labelled fraud scenarios")
    p.add_argument("--out", required=True, help="output file; .csv or .parquet by extension")
    p.add_argument("--customers", type=int, default=5000, help="number of customers (default 5000)")
    p.add_argument("--terminals", type=int, default=10000, help="number of terminals (default 10000)")
    p.add_argument("--days", type=int, default=180, help="number of days (default 180)")
    p.add_argument("--start-date", default="2026-01-01", help="first day, YYYY-MM-DD UTC (default 2026-01-01)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--drift-day", type=int, help="day index from which a new fraud scenario appears")
    p.set_defaults(func=_generate)

    p = sub.add_parser("train", help="train a fraud model and write a model directory")
    _add_data_args(p)
    p.add_argument("--train-start", required=True, help="first training day, YYYY-MM-DD (inclusive)")
    p.add_argument("--train-end", required=True, help="last training day, YYYY-MM-DD (inclusive)")
    p.add_argument("--valid-start", help="first validation day (default: last --valid-days of the window)")
    p.add_argument("--valid-end", help="last validation day (default: --train-end)")
    p.add_argument("--valid-days", type=int, default=7, help="validation days at the window end (default 7)")
    p.add_argument("--delay-days", type=int, default=7, help="label delay in days (default 7)")
    p.add_argument(
        "--model-type", choices=["mlp", "teacher", "logreg", "hgb"], default="mlp", help="model (default mlp)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-epochs", type=int, help="cap on MLP epochs (default from the model config)")
    p.add_argument("--out", required=True, help="model directory to write (atomically)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a date window; prints one JSON object")
    p.add_argument("--model", required=True, help="model directory")
    _add_data_args(p)
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD (inclusive)")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    p.add_argument("--k", type=int, default=100, help="k for card precision@k (default 100)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("score", help="score every row of a file; writes tx_id,score")
    p.add_argument("--model", required=True, help="model directory")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.set_defaults(func=_score)

    p = sub.add_parser("demo", help="run the whole job on generated data and print a results table")
    p.add_argument("--out", default="demo-out", help="working directory (default demo-out)")
    p.add_argument("--customers", type=int, default=2000, help="customers to simulate (default 2000)")
    p.add_argument("--terminals", type=int, default=4000, help="terminals to simulate (default 4000)")
    p.add_argument("--days", type=int, default=120, help="days to simulate (default 120)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.set_defaults(func=_demo)


# --- streaming: broker / replay / serve (issue 4) ----------------------------------------------------
# (added by the streaming work)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fraudlite",
        description="Fraud detection with compressed models: simulate, train, compress, serve from Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _COMMAND_GROUPS:
        add(sub)
    return parser


_COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [_add_foundation]


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"fraudlite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fraudlite {args.command}: interrupted", file=sys.stderr)
        return 130
