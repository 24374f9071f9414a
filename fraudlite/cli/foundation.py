"""``generate``, ``train``, ``evaluate``, ``score`` and ``demo``: the offline loop on files."""

from __future__ import annotations

import argparse

from fraudlite.cli.common import add_data_args, parse_columns
from fraudlite.cli.train_streamed import add_out_of_core_args

__all__ = ["add_foundation"]


def _generate(args: argparse.Namespace) -> int:
    from fraudlite.cli.foundation_commands import generate

    return generate(
        out=args.out,
        customers=args.customers,
        terminals=args.terminals,
        days=args.days,
        start_date=args.start_date,
        seed=args.seed,
        drift_day=args.drift_day,
        extra_attributes=args.extra_attributes,
    )


def _train(args: argparse.Namespace) -> int:
    from fraudlite.cli.foundation_commands import train
    from fraudlite.cli.train_streamed import stream_config

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
        alert_budget=args.alert_budget,
        extra_columns=args.extra_columns,
        stream=stream_config(args),
    )


def _evaluate(args: argparse.Namespace) -> int:
    from fraudlite.cli.foundation_commands import evaluate

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
    from fraudlite.cli.foundation_commands import score

    return score(args.model, args.data, parse_columns(args.columns), args.out, explain=args.explain)


def _features(args: argparse.Namespace) -> int:
    from fraudlite.cli.foundation_commands import features
    from fraudlite.data.out_of_core import parse_memory

    return features(
        args.data, parse_columns(args.columns), args.out, engine=args.engine, model=args.model,
        delay_days=args.delay_days, memory_limit=parse_memory(args.memory_limit),
    )  # fmt: skip


def _demo(args: argparse.Namespace) -> int:
    from fraudlite.cli.demo import run_demo

    if args.retrain:
        from fraudlite.cli.demo_retrain import retrain_demo

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


def add_foundation(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--extra-attributes",
        action="store_true",
        help="add a bank's own signals after the core columns: mcc (merchant category code, 4-digit text), "
        "channel (pos, ecom, atm, moto), country (ISO-2), card_present (true/false), entry_mode (chip, "
        "contactless, magstripe, keyed), device_score (0..1, empty when the card is present) and "
        "merchant_id (hundreds of values). Some fraud scenarios leave a trace in them that the core "
        "columns do not show (stolen cards and card testing mostly online with high device scores, often "
        "abroad; takeovers abroad on new devices; compromised terminals and counterfeit cards read from "
        "the magnetic stripe); the core columns, label and scenario stay exactly as without the flag. "
        "Train on them with --extra-columns mcc:categorical,channel:categorical,country:categorical,"
        "card_present:bool,entry_mode:categorical,device_score:numeric,merchant_id:categorical",
    )
    p.set_defaults(func=_generate)

    p = sub.add_parser("train", help="train a fraud model and write a model directory")
    add_data_args(p)
    p.add_argument("--train-start", required=True, help="first training day, YYYY-MM-DD (inclusive)")
    p.add_argument("--train-end", required=True, help="last training day, YYYY-MM-DD (inclusive)")
    p.add_argument("--valid-start", help="first validation day (default: last --valid-days of the window)")
    p.add_argument("--valid-end", help="last validation day (default: --train-end)")
    p.add_argument(
        "--valid-days",
        type=int,
        help="validation days at the window end (default: a third of the window, at least 1, at most 7)",
    )
    p.add_argument("--delay-days", type=int, default=7, help="label delay in days (default 7)")
    p.add_argument(
        "--model-type", choices=["mlp", "teacher", "logreg", "hgb"], default="mlp", help="model (default mlp)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-epochs", type=int, help="cap on MLP epochs (default from the model config)")
    p.add_argument(
        "--alert-budget",
        help="alerts the team can investigate: per 1,000 transactions (2.5 or 2.5/1k) or per day (300/day); "
        "sets the alert threshold from the validation window (default: the 0.9-precision point)",
    )
    p.add_argument(
        "--extra-columns",
        metavar="NAME:KIND[,...]",
        help="your own columns as model inputs, KIND numeric | categorical | bool (true/false, 1/0, yes/no): "
        "numeric -> the value (missing: the training median) + a missing indicator; categorical -> one-hot "
        "over the training values (<= 32, plus one for unseen ones) or hashed into 64 buckets, or N with "
        "NAME:categorical:N; recorded in the model's feature spec, so evaluate, score, compress, retrain "
        "and serve read them by name (map file columns with --columns NAME=SRC)",
    )
    add_out_of_core_args(p)
    p.add_argument("--out", required=True, help="model directory to write (atomically)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a date window; prints one JSON object")
    p.add_argument("--model", required=True, help="model directory")
    add_data_args(p)
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

    p = sub.add_parser("score", help="score every row of a file; writes tx_id,score (+ reasons: --explain)")
    p.add_argument("--model", required=True, help="model directory")
    add_data_args(p)
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.add_argument(
        "--explain", action="store_true",
        help="add columns reason_1..reason_3: the top reasons (text) of rows scoring at or above the model's "
        "alert threshold, empty for the other rows",
    )  # fmt: skip
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "features",
        help="write the model inputs of every transaction (with tx_id) to a Parquet file",
        description="Compute the features a model reads for every row of --data and write them to --out: tx_id, "
        "one float32 column per feature (the spec's names and order) and label when the input has one, rows in "
        "input order. --engine local reads a CSV in memory and Parquet (a file or a directory of files) out of "
        "core within --memory-limit; --engine spark runs the same kernels on Apache Spark (pip install "
        "'fraudlite[spark]'; the cluster comes from the usual Spark settings: spark-defaults.conf, "
        "PYSPARK_SUBMIT_ARGS, local mode otherwise).",
    )
    add_data_args(p)
    p.add_argument(
        "--out",
        required=True,
        help="output .parquet, written atomically: a file (local), Spark's directory of parts in input order (spark)",
    )
    p.add_argument(
        "--engine", choices=["local", "spark"], default="local", help="where to compute (default local)"
    )
    p.add_argument("--model", help="model directory whose feature spec to use (its extra columns too)")
    p.add_argument(
        "--delay-days",
        type=int,
        default=7,
        help="label delay of the default spec, without --model (default 7)",
    )
    p.add_argument(
        "--memory-limit", default="2G", help="local engine, Parquet input: memory to stay under (2G)"
    )
    p.set_defaults(func=_features)

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
