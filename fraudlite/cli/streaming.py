"""``broker``, ``replay`` and ``serve``: the embedded broker, producing a file to Kafka, scoring a stream."""

from __future__ import annotations

import argparse

from fraudlite.cli.common import add_data_args, parse_columns, quiet_kafka

__all__ = ["add_streaming"]


def _broker(args: argparse.Namespace) -> int:
    from fraudlite.kafkaio.broker import run_broker

    quiet_kafka(args)
    return run_broker(host=args.host, port=args.port)


def _replay(args: argparse.Namespace) -> int:
    from fraudlite.kafkaio.security import kafka_security_from_env, kafka_security_from_file
    from fraudlite.streaming.replay import replay

    quiet_kafka(args)
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

    quiet_kafka(args)
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
    p.add_argument(
        "--kafka-client", choices=["kafka-python", "confluent"],
        help="library of the group consumer and the decisions' producer: kafka-python (pure Python) or "
        "confluent (librdkafka, ~2-3x the msg/s; pip install 'fraudlite[confluent]'); same delivery "
        "guarantees (default: $FRAUDLITE_KAFKA_CLIENT, else kafka-python)",
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
    p.add_argument(
        "--shadow-model",
        help="a second model directory (same feature spec) scoring the same batches; it decides nothing, "
        "its decisions go to --shadow-topic and its metrics to fraudlite_shadow_*",
    )  # fmt: skip
    p.add_argument(
        "--shadow-topic", default="decisions-shadow",
        help="the shadow model's decisions (default decisions-shadow)",
    )  # fmt: skip
    p.add_argument(
        "--label-join-capacity", type=int, default=200_000,
        help="decisions held for the late-label join (fraudlite_label_outcomes_total), oldest evicted "
        "(their labels count as unmatched); ~150 bytes each, 30 MB at the default; 0 = no join "
        "(default 200000: size it to the decisions of one label delay to see every outcome)",
    )  # fmt: skip
    p.add_argument(
        "--label-horizon-days", type=int,
        help="how long (event time) a decision waits for its label (default: the model's label delay + 1)",
    )  # fmt: skip
    p.add_argument(
        "--explain-all", action="store_true",
        help="reason codes on every decision, not only on alerts (costs 6 x (features - 1) model rows each)",
    )  # fmt: skip
    p.set_defaults(func=_serve)


def add_streaming(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="listen and advertised host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="port, 0 = any free one (default 9092)")
    p.set_defaults(func=_broker)

    p = sub.add_parser(
        "replay",
        help="produce a transactions file to Kafka in time order (and late labels)",
        description="Each transaction goes out as one JSON message keyed by customer_id: tx_id, timestamp "
        "(epoch ms), customer_id, terminal_id, amount, and every other column of the file under its own "
        "name (so a model's --extra-columns reach serve; --columns NAME=SRC sends column SRC as NAME), "
        "except label and the simulator's scenario. Values go as they are: empty -> null, numbers as "
        "numbers, True/False as true/false, text as text (a CSV column is numeric only when every value "
        'is a number without a leading zero: 0042 stays the text "0042").',
    )
    add_data_args(p)
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
