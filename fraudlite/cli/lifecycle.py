"""``registry``, ``collect`` and ``retrain``: the model lifecycle after the first model."""

from __future__ import annotations

import argparse

from fraudlite.cli.common import parse_columns, quiet_kafka

__all__ = ["add_lifecycle"]


def _registry(args: argparse.Namespace) -> int:
    from fraudlite.cli.lifecycle_commands import registry_command

    return registry_command(
        args.root, args.registry_action, getattr(args, "version", None), as_json=getattr(args, "json", False)
    )


def _collect(args: argparse.Namespace) -> int:
    from fraudlite.cli.lifecycle_commands import collect_command

    quiet_kafka(args)
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
    from fraudlite.cli.lifecycle_commands import retrain_command

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
        alert_budget=args.alert_budget,
        extra_columns=args.extra_columns,
    )


def add_lifecycle(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--alert-budget",
        help="alerts per 1,000 transactions (2.5) or per day (300/day): each new model's alert threshold "
        "(as for train)",
    )
    p.add_argument(
        "--extra-columns",
        metavar="NAME:KIND[,...]",
        help="your own columns as model inputs (as for train) for the registry's first model; later runs "
        "keep the champion's extra columns exactly (its vocabulary and hashing), so the scorer hot-swaps",
    )
    p.add_argument("--no-compress", action="store_true", help="register the trained model uncompressed")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one run; prints the decision as JSON")
    when.add_argument("--schedule", metavar="CRON", help="run on a cron schedule (UTC), forever")
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="--schedule metrics address (default 127.0.0.1)"
    )
    p.add_argument("--metrics-port", type=int, default=9109, help="--schedule metrics port (default 9109)")
    p.set_defaults(func=_retrain)
