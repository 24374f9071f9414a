"""ServeConfig and friends: validation, building from CLI flags (Kafka security: tests/kafkaio/test_security.py)."""

from __future__ import annotations

import pytest

from fraudlite.cli import build_parser
from fraudlite.errors import ConfigError
from fraudlite.kafkaio.wire import DecodeLimits
from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics, build_serve_config


def test_defaults(tmp_path):
    cfg = ServeConfig(bootstrap_servers="127.0.0.1:9092", model_dir=tmp_path)
    assert cfg.exactly_once and cfg.metrics_host == "127.0.0.1" and cfg.metrics_port == 9108
    assert cfg.topics.changelog == "fraudlite-scorer-customer-state-changelog"
    assert cfg.topics.input == "transactions" and cfg.topics.dlq == "transactions-dlq"
    assert cfg.resolved_transactional_id() != cfg.resolved_transactional_id()
    assert (
        ServeConfig("h:1", model_dir=tmp_path, transactional_id="pod-0").resolved_transactional_id()
        == "pod-0"
    )


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"bootstrap_servers": "nohostport"}, "--bootstrap-servers"),
        ({"model_dir": None}, "exactly one"),
        ({"delivery": "twice"}, "--delivery"),
        ({"threshold": 1.5}, "--threshold"),
        ({"metrics_port": 70000}, "--metrics-port"),
        ({"partitions": 0}, "--partitions"),
        ({"session_timeout_ms": 6000, "heartbeat_interval_ms": 6000}, "heartbeat"),
    ],
)
def test_invalid_settings_name_the_flag(tmp_path, kwargs, flag):
    base = {"bootstrap_servers": "h:1", "model_dir": tmp_path}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=flag):
        ServeConfig(**base)


def test_other_dataclasses_validate():
    with pytest.raises(ConfigError, match="distinct"):
        Topics(input="t", output="t")
    with pytest.raises(ConfigError, match="topic name"):
        Topics(output="bad topic")
    with pytest.raises(ConfigError):
        BatchConfig(max_records=0)
    with pytest.raises(ConfigError):
        DecodeLimits(max_amount=-1)


def test_build_from_cli_flags(tmp_path, monkeypatch):
    args = build_parser().parse_args(
        [
            "serve", "--registry", str(tmp_path), "--bootstrap-servers", "k1:9092,k2:9092",
            "--input-topic", "tx", "--labels-topic", "", "--delivery", "at-least-once", "--metrics-port", "-1",
            "--batch-max-records", "100", "--group-id", "g1",
        ]
    )  # fmt: skip
    cfg = build_serve_config(args, environ={"FRAUDLITE_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert cfg.registry_dir == tmp_path and cfg.model_dir is None
    assert (
        cfg.topics.input == "tx"
        and cfg.topics.labels is None
        and cfg.topics.changelog == "g1-customer-state-changelog"
    )
    assert not cfg.exactly_once and cfg.metrics_port is None and cfg.batch.max_records == 100
    assert cfg.security.security_protocol == "SSL"


def test_kafka_client_from_the_flag_else_the_environment(tmp_path, monkeypatch):
    base = ["serve", "--model", str(tmp_path), "--bootstrap-servers", "k:9092"]
    parse = build_parser().parse_args
    assert build_serve_config(parse(base), environ={}).kafka_client == "kafka-python"
    env = {"FRAUDLITE_KAFKA_CLIENT": "confluent"}
    assert build_serve_config(parse(base), environ=env).kafka_client == "confluent"
    flag = parse([*base, "--kafka-client", "kafka-python"])
    assert build_serve_config(flag, environ=env).kafka_client == "kafka-python"
    with pytest.raises(
        ConfigError, match="--kafka-client must be one of kafka-python, confluent, got 'rdkafka'"
    ):
        build_serve_config(parse(base), environ={"FRAUDLITE_KAFKA_CLIENT": "rdkafka"})
    with pytest.raises(SystemExit):  # argparse: exit 2 naming the choices
        parse([*base, "--kafka-client", "rdkafka"])


def test_confluent_client_without_its_package_is_a_user_error(monkeypatch):
    from fraudlite.errors import UserError
    from fraudlite.kafkaio.confluent import require_confluent

    monkeypatch.setitem(__import__("sys").modules, "confluent_kafka", None)
    with pytest.raises(UserError, match=r"pip install 'fraudlite\[confluent\]'"):
        require_confluent()
