"""Command line: argument parsing only; each command calls one function.

User errors (``fraudlite.errors.UserError``) print one line and exit with status 2; heavy imports happen
inside the command handlers so ``fraudlite --help`` and the serving commands stay light.
"""

from __future__ import annotations

import argparse
import errno
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

    return evaluate(
        args.model,
        args.data,
        parse_columns(args.columns),
        args.start,
        args.end,
        k=args.k,
        known_fraud_days=args.known_fraud_days,
    )


def _score(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.commands import score

    return score(args.model, args.data, parse_columns(args.columns), args.out)


def _demo(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.demo import run_demo

    if args.retrain:
        from fraudlite.pipeline.retrain_demo import retrain_demo

        return retrain_demo(f"{args.out}/retrain", seed=args.seed)
    return run_demo(
        args.out,
        args.customers,
        args.terminals,
        args.days,
        args.seed,
        max_ap_drop=args.max_ap_drop,
        stream=not args.no_stream,
        forever=args.forever,
        metrics_port=args.metrics_port,
        rate=args.rate,
    )


def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="simulate a transaction dataset with labelled fraud scenarios")
    p.add_argument("--out", required=True, help="output file; .csv or .parquet by extension")
    p.add_argument("--customers", type=int, default=5000, help="number of customers (default 5000)")
    p.add_argument("--terminals", type=int, default=10000, help="number of terminals (default 10000)")
    p.add_argument("--days", type=int, default=180, help="number of days (default 180)")
    p.add_argument(
        "--start-date", default="2026-01-01", help="first day, YYYY-MM-DD UTC (default 2026-01-01)"
    )
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
    p.add_argument(
        "--known-fraud-days",
        type=int,
        default=28,
        help="exclude a card for this many days after its fraud label is known (0 = keep all; default 28)",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("score", help="score every row of a file; writes tx_id,score")
    p.add_argument("--model", required=True, help="model directory")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "demo",
        help="the whole loop on generated data: train, compress, stream through Kafka, score",
        description="Generate data, train the MLP and baselines, compress the MLP, then replay the test window "
        "through the embedded Kafka broker into the scorer serving the compressed model, with a live status "
        "line and Prometheus metrics; --retrain shows one retrain-and-promote cycle instead.",
    )
    p.add_argument("--out", default="demo-out", help="working directory (default demo-out)")
    p.add_argument("--customers", type=int, default=2000, help="customers to simulate (default 2000)")
    p.add_argument("--terminals", type=int, default=4000, help="terminals to simulate (default 4000)")
    p.add_argument("--days", type=int, default=120, help="days to simulate (default 120)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument(
        "--max-ap-drop", type=float, default=0.01, help="compression budget in validation AP (default 0.01)"
    )
    p.add_argument("--no-stream", action="store_true", help="stop after training and compression")
    p.add_argument("--forever", action="store_true", help="keep serving after the replay (Ctrl-C to stop)")
    p.add_argument("--metrics-port", type=int, default=9108, help="scorer metrics port (default 9108)")
    p.add_argument(
        "--rate", type=float, default=3000, help="replay rate in tx/s, 0 = flat out (default 3000)"
    )
    p.add_argument(
        "--retrain", action="store_true", help="show one retrain-and-promote cycle on drifted data"
    )
    p.set_defaults(func=_demo)


# --- streaming: broker / replay / serve (issue 4) ----------------------------------------------------


def _quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every connection at INFO; keep its chatter for --verbose."""
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)


def _broker(args: argparse.Namespace) -> int:
    from fraudlite.streaming.broker import run_broker

    _quiet_kafka(args)
    return run_broker(host=args.host, port=args.port)


def _replay(args: argparse.Namespace) -> int:
    from fraudlite.streaming.config import kafka_security_from_env, kafka_security_from_file
    from fraudlite.streaming.replay import replay

    _quiet_kafka(args)
    base = kafka_security_from_file(args.kafka_config) if args.kafka_config else None
    result = replay(
        data=args.data,
        columns=parse_columns(args.columns),
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        rate=args.rate,
        limit=args.limit,
        start=args.start,
        end=args.end,
        labels_topic=args.labels_topic,
        label_delay_days=args.label_delay_days,
        partitions=args.partitions,
        kafka_config=kafka_security_from_env(base=base).client_kwargs(),
    )
    print(result.summary())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from fraudlite.streaming.config import build_serve_config
    from fraudlite.streaming.serve import run_serve

    _quiet_kafka(args)
    return run_serve(build_serve_config(args))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="score a Kafka transaction stream (consumer group, exactly-once, Prometheus metrics)",
        description="Kafka security settings come from --kafka-config and FRAUDLITE_KAFKA_* variables "
        "(SECURITY_PROTOCOL, SASL_MECHANISM, SASL_USERNAME, SASL_PASSWORD, SSL_CAFILE, SSL_CERTFILE, "
        "SSL_KEYFILE, SSL_PASSWORD); secrets are never logged. SIGTERM/SIGINT stop gracefully, SIGHUP "
        "checks the registry now.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory to serve")
    src.add_argument("--registry", help="registry directory: serve its champion, hot-reload promotions")
    p.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, H:P[,H:P...]")
    p.add_argument("--input-topic", default="transactions", help="(default transactions)")
    p.add_argument("--output-topic", default="fraud-decisions", help="(default fraud-decisions)")
    p.add_argument("--alerts-topic", default="fraud-alerts", help="(default fraud-alerts)")
    p.add_argument("--dlq-topic", default="transactions-dlq", help="(default transactions-dlq)")
    p.add_argument("--labels-topic", default="fraud-labels", help="'' for none (default fraud-labels)")
    p.add_argument("--changelog-topic", help="state changelog (default GROUP-customer-state-changelog)")
    p.add_argument("--no-changelog", action="store_true", help="keep customer state in memory only")
    p.add_argument("--group-id", default="fraudlite-scorer", help="consumer group (default fraudlite-scorer)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of topics this creates (default 4)")
    p.add_argument(
        "--delivery", choices=["exactly-once", "at-least-once"], default="exactly-once",
        help="(default exactly-once: Kafka transactions; readers use read_committed)",
    )  # fmt: skip
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument("--alert-threshold", type=float, help="alert threshold (default: the model's)")
    p.add_argument("--batch-max-records", type=int, default=2000, help="records per batch (default 2000)")
    p.add_argument("--batch-max-ms", type=int, default=50, help="longest wait for a batch, ms (default 50)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=9108, help="0 = any free, -1 = off (default 9108)")
    p.add_argument("--kafka-config", help="properties file with security.protocol, sasl.*, ssl.* settings")
    p.add_argument("--transactional-id", help="stable per replica (e.g. the pod name); default: unique")
    p.add_argument("--session-timeout-ms", type=int, default=6000, help="group session (default 6000)")
    p.add_argument("--max-message-bytes", type=int, default=16384, help="larger: DLQ (default 16384)")
    p.add_argument("--max-amount", type=float, default=1e7, help="larger amounts go to the DLQ (default 1e7)")
    p.add_argument("--max-id-chars", type=int, default=128, help="longer ids go to the DLQ (default 128)")
    p.add_argument(
        "--event-time-range",
        help="accepted event times, FIRST..LAST day UTC (default 2000-01-01..2099-12-31); others: DLQ",
    )  # fmt: skip
    p.add_argument(
        "--dlq-max-value-bytes", type=int, default=512 * 1024,
        help="longer DLQ values are cut, headers say so (default 524288)",
    )  # fmt: skip
    p.add_argument("--dlq-envelope", action="store_true", help="DLQ values as a JSON envelope, not raw bytes")
    p.add_argument("--reload-interval", type=float, default=5.0, help="registry poll interval, s (default 5)")
    p.set_defaults(func=_serve)


def _add_streaming(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="listen and advertised host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="port, 0 = any free one (default 9092)")
    p.set_defaults(func=_broker)

    p = sub.add_parser("replay", help="produce a transactions file to Kafka in time order (and late labels)")
    _add_data_args(p)
    p.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, H:P[,H:P...]")
    p.add_argument("--topic", default="transactions", help="transactions topic (default transactions)")
    p.add_argument("--rate", type=float, default=0.0, help="transactions per second, 0 = max (default 0)")
    p.add_argument("--limit", type=int, help="stop after N transactions")
    p.add_argument("--start", help="first day to replay, YYYY-MM-DD (inclusive)")
    p.add_argument("--end", help="last day to replay, YYYY-MM-DD (inclusive)")
    p.add_argument(
        "--labels-topic", help="also emit each label to this topic, --label-delay-days after its day"
    )
    p.add_argument("--label-delay-days", type=int, default=7, help="label delay in days (default 7)")
    p.add_argument("--partitions", type=int, default=4, help="partitions for topics this creates (default 4)")
    p.add_argument(
        "--kafka-config",
        help="properties file with security.protocol, sasl.*, ssl.* settings (FRAUDLITE_KAFKA_* env on top)",
    )
    p.set_defaults(func=_replay)

    _add_serve(sub)


# --- registry / collect / retrain (issue 5) ----------------------------------------------------------


def _registry(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.lifecycle_commands import registry_command

    return registry_command(
        args.root, args.registry_action, getattr(args, "version", None), as_json=getattr(args, "json", False)
    )


def _collect(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.label_store import collect_command

    _quiet_kafka(args)
    return collect_command(
        bootstrap_servers=args.bootstrap_servers,
        store=args.store,
        transactions_topic=args.transactions_topic,
        labels_topic=args.labels_topic,
        group_id=args.group_id,
        flush_interval_s=args.flush_interval,
        idle_exit_s=args.idle_exit,
        max_messages=args.max_messages,
        partitions=args.partitions,
    )


def _retrain(args: argparse.Namespace) -> int:
    from fraudlite.pipeline.lifecycle_commands import retrain_command

    return retrain_command(
        args.registry,
        args.data,
        parse_columns(args.columns),
        now=args.now,
        once=args.once,
        schedule=args.schedule,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        train_days=args.train_days,
        delay_days=args.delay_days,
        valid_days=args.valid_days,
        tolerance=args.tolerance,
        max_ap_drop=args.max_ap_drop,
        min_ap=args.min_ap,
        model_type=args.model_type,
        seed=args.seed,
        max_epochs=args.max_epochs,
        recipe=args.recipe,
        compress=not args.no_compress,
    )


def _add_lifecycle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="model registry: list, show, promote, roll back and verify versions")
    p.add_argument("--root", required=True, help="registry directory")
    actions = p.add_subparsers(dest="registry_action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="every version and which one is the champion")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = actions.add_parser("show", help="one version's manifest, status and history (JSON)")
    a.add_argument("version", help="version name")
    a = actions.add_parser("promote", help="make a version the champion (verified first)")
    a.add_argument("version", help="version name")
    actions.add_parser("rollback", help="make the previous champion the champion again")
    a = actions.add_parser("verify", help="re-hash files; exit 1 naming every file that does not match")
    a.add_argument("version", nargs="?", help="one version (default: all)")
    p.set_defaults(func=_registry)

    p = sub.add_parser("collect", help="consume transactions and late labels into a Parquet label store")
    p.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, H:P[,H:P...]")
    p.add_argument("--transactions-topic", default="transactions", help="default transactions")
    p.add_argument("--labels-topic", default="fraud-labels", help="default fraud-labels")
    p.add_argument("--store", required=True, help="label store directory (created if missing)")
    p.add_argument(
        "--group-id", default="fraudlite-collector", help="consumer group (default fraudlite-collector)"
    )
    p.add_argument(
        "--flush-interval", type=float, default=5.0, help="seconds between store writes (default 5)"
    )
    p.add_argument("--idle-exit", type=float, help="stop after this many seconds without messages")
    p.add_argument("--max-messages", type=int, help="stop after this many messages")
    p.add_argument("--partitions", type=int, default=4, help="partitions for topics this creates (default 4)")
    p.set_defaults(func=_collect)

    p = sub.add_parser(
        "retrain", help="retrain, compress and promote a better model (once or on a cron schedule)"
    )
    p.add_argument("--registry", required=True, help="registry directory (created on the first run)")
    p.add_argument("--data", required=True, help="transactions file (.csv/.parquet) or label store directory")
    p.add_argument("--columns", help="map logical columns to the file's (as for train)")
    p.add_argument("--train-days", type=int, default=28, help="training window length in days (default 28)")
    p.add_argument(
        "--delay-days",
        type=int,
        default=7,
        help="label delay: the window ends this long before now (default 7)",
    )
    p.add_argument(
        "--valid-days",
        type=int,
        default=7,
        help="last days of the window: validation and comparison (default 7)",
    )
    p.add_argument("--now", help="the run's date, YYYY-MM-DD (default today, UTC; --once only)")
    p.add_argument("--recipe", help="compression recipe (TOML; default: the built-in one)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="max AP below the champion to still promote (default 0.005)",
    )
    p.add_argument(
        "--max-ap-drop", type=float, default=0.005, help="compression guardrail: max AP drop (default 0.005)"
    )
    p.add_argument(
        "--min-ap", type=float, default=0.0, help="guardrail: never promote below this AP (default 0)"
    )
    p.add_argument(
        "--model-type", choices=["mlp", "teacher", "logreg", "hgb"], default="mlp", help="model (default mlp)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-epochs", type=int, help="cap on MLP epochs")
    p.add_argument("--no-compress", action="store_true", help="register the trained model uncompressed")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one run; prints the decision as JSON")
    when.add_argument("--schedule", metavar="CRON", help="run on a cron schedule (UTC), forever")
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="--schedule metrics address (default 127.0.0.1)"
    )
    p.add_argument("--metrics-port", type=int, default=9109, help="--schedule metrics port (default 9109)")
    p.set_defaults(func=_retrain)


# --- compression (issue 3) ---------------------------------------------------------------------------


def _compress(args: argparse.Namespace) -> int:
    from fraudlite.compression.pipeline import compress_command

    return compress_command(
        model=args.model,
        data=args.data,
        columns=parse_columns(args.columns),
        out=args.out,
        recipe=args.recipe,
        max_ap_drop=args.max_ap_drop,
    )


def _add_compression(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a trained MLP within an AP budget (distill, prune, share weights, encode, export)",
        description="Runs the recipe's stages with an accuracy-bounded search on the model's validation "
        "window and writes a model directory with the runnable ONNX (role onnx), the entropy-coded compact "
        "artifact (role compact) and report.json / report.md / pareto.png.",
    )
    p.add_argument("--model", required=True, help="trained MLP model directory (with weights)")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="compressed model directory to write (atomically)")
    p.add_argument("--recipe", help="recipe TOML: [[stage]] tables in order, [search], [export], [data] "
                   "(default: the built-in recipe)")  # fmt: skip
    p.add_argument(
        "--max-ap-drop",
        type=float,
        default=0.005,
        help="largest validation average-precision loss allowed, absolute (default 0.005)",
    )
    p.set_defaults(func=_compress)


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


_COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_foundation,
    _add_compression,
    _add_streaming,
    _add_lifecycle,
]


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# disk full, quota exceeded, read-only file system
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


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
    except OSError as e:
        # The machine, not the user or a bug: one clear line (outputs are written atomically, so
        # nothing half-written is left behind). Other OS errors keep their traceback.
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"fraudlite {args.command}: error: {e.strerror or e}{where}; nothing was written", file=sys.stderr
        )
        return 1
