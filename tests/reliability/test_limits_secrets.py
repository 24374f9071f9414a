"""Limits and secrets (issue 7).

* message size and field bounds are configurable (flags -> ServeConfig -> decoder) and enforced;
* Kafka credentials come only from the environment or a properties file and never reach a log line,
  an exception message or a repr -- checked with every logger (kafka-python's too) at DEBUG, in
  process and in a ``fraudlite -v serve`` subprocess;
* the metrics endpoint binds 127.0.0.1 by default (config, CLI, the socket actually bound).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from fraudlite.cli import build_parser, main
from fraudlite.errors import ConfigError
from fraudlite.kafkaio.security import kafka_security
from fraudlite.kafkaio.wire import DecodeLimits, TransactionDecoder
from fraudlite.streaming.config import ServeConfig, build_serve_config
from fraudlite.streaming.reload import load_model
from fraudlite.streaming.scorer import Scorer

SECRET = "s3cr3t-Pa55w0rd-never-logged"
SSL_SECRET = "ssl-key-pa55-never-logged"


def _msg(**over) -> bytes:
    import json

    obj = {
        "tx_id": "t1",
        "timestamp": 1_767_225_600_000,
        "customer_id": "C1",
        "terminal_id": "T1",
        "amount": 5.0,
    }
    obj.update(over)
    return json.dumps(obj).encode()


def test_bounds_from_flags_reach_the_decoder(tmp_path, rel_model):
    args = build_parser().parse_args(
        ["serve", "--model", str(rel_model.path), "--bootstrap-servers", "h:1", "--max-message-bytes", "200",
         "--max-amount", "100", "--max-id-chars", "4", "--event-time-range", "2026-01-01..2026-01-31",
         "--dlq-max-value-bytes", "4096"]
    )  # fmt: skip
    cfg = build_serve_config(args, environ={})
    limits = cfg.limits
    assert (limits.max_message_bytes, limits.max_amount, limits.max_id_chars) == (200, 100, 4)
    assert cfg.dlq_max_value_bytes == 4096
    d = TransactionDecoder(limits).decode(
        [
            _msg(),
            _msg(amount=100.01),
            _msg(customer_id="C12345"),
            _msg(timestamp="2026-02-01T00:00:00Z"),
            _msg(timestamp="2025-12-31T23:59:59Z"),
            _msg(timestamp="2026-01-31T23:59:59Z"),
            _msg(pad="x" * 200),
        ]
    )
    assert d.tx_id == ["t1", "t1"]
    assert [r for _, r in d.invalid] == ["bad_amount", "bad_id", "bad_timestamp", "bad_timestamp", "oversize"]


@pytest.mark.parametrize(
    "flag,value",
    [("--max-message-bytes", "10"), ("--max-id-chars", "0"), ("--max-amount", "-1"),
     ("--event-time-range", "2026-02-01"), ("--event-time-range", "2026-02-01..2026-01-01"),
     ("--dlq-max-value-bytes", "10")],
)  # fmt: skip
def test_bad_bounds_are_user_errors(rel_model, capsys, flag, value):
    argv = ["serve", "--model", str(rel_model.path), "--bootstrap-servers", "127.0.0.1:1", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_limits_are_validated():
    with pytest.raises(ConfigError):
        DecodeLimits(max_message_bytes=1 << 30)
    with pytest.raises(ConfigError):
        DecodeLimits(min_timestamp_s=10, max_timestamp_s=5)


# -- secrets ------------------------------------------------------------------------------------------------


def test_credentials_only_from_env_or_file(tmp_path):
    props = tmp_path / "kafka.properties"
    props.write_text(
        f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=svc\nsasl.password={SECRET}\n"
    )
    sec = kafka_security(props, environ={})
    assert sec.sasl_password == SECRET and sec.client_kwargs()["sasl_plain_password"] == SECRET
    env = {"FRAUDLITE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FRAUDLITE_KAFKA_SASL_MECHANISM": "PLAIN",
           "FRAUDLITE_KAFKA_SASL_USERNAME": "svc", "FRAUDLITE_KAFKA_SASL_PASSWORD": SECRET}  # fmt: skip
    sec = kafka_security(None, environ=env)
    assert sec.sasl_password == SECRET
    for text in (repr(sec), sec.describe(), repr(ServeConfig("h:1", model_dir=tmp_path, security=sec))):
        assert SECRET not in text
    assert "***" in sec.describe()
    # No flag takes a secret: the password cannot end up in `ps` output or shell history.
    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "serve")[
        1
    ]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    assert not {f for f in flags if "password" in f or "secret" in f or "sasl" in f}
    # A bad properties file is named, its values are not echoed.
    bad = tmp_path / "bad.properties"
    bad.write_text(f"sasl.pasword={SECRET}\n")
    with pytest.raises(ConfigError) as err:
        kafka_security(bad, environ={})
    assert SECRET not in str(err.value) and "sasl.pasword" in str(err.value)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # includes exc_info tracebacks


@pytest.mark.integration
def test_secrets_never_logged_in_process(rel_broker, rel_model, tmp_path):
    """Every logger at DEBUG while a scorer with SASL credentials tries to connect (the embedded broker
    speaks no SASL, so it fails and retries: the error paths log the most)."""
    env = {"FRAUDLITE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FRAUDLITE_KAFKA_SASL_MECHANISM": "PLAIN",
           "FRAUDLITE_KAFKA_SASL_USERNAME": "svc", "FRAUDLITE_KAFKA_SASL_PASSWORD": SECRET}  # fmt: skip
    cfg = ServeConfig(
        bootstrap_servers=rel_broker.bootstrap, model_dir=rel_model.path, security=kafka_security(None, env),
        group_id=f"sec-{uuid.uuid4().hex[:6]}", metrics_port=0,
    )  # fmt: skip
    handler = _Capture()
    root, kafka_logger = logging.getLogger(), logging.getLogger("kafka")
    old_level, old_kafka = root.level, kafka_logger.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    kafka_logger.setLevel(logging.NOTSET)  # the CLI quiets it: here everything is logged
    error = None
    try:
        scorer = Scorer(cfg, load_model(rel_model.path))
        try:
            scorer.connect(retry=False)
        except Exception as e:  # noqa: BLE001 - expected: no SASL on the embedded broker
            error = e
        finally:
            scorer.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        kafka_logger.setLevel(old_kafka)
    text = "\n".join(handler.lines)
    assert "sasl_plain_password': '***'" in text, "kafka-python dumped its configuration, redacted"
    assert SECRET not in text
    assert error is None or SECRET not in repr(error) + str(error)


@pytest.mark.integration
def test_secrets_never_logged_by_the_cli(rel_broker, rel_model, tmp_path):
    """``fraudlite -v serve`` (DEBUG) with a password in the environment and in a properties file."""
    props = tmp_path / "kafka.properties"
    props.write_text(
        f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=svc\nsasl.password={SECRET}x\n"
    )
    env = {**os.environ, "FRAUDLITE_KAFKA_SASL_PASSWORD": SECRET, "FRAUDLITE_KAFKA_SSL_PASSWORD": SSL_SECRET}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "fraudlite", "-v", "serve", "--model", str(rel_model.path), "--bootstrap-servers",
           rel_broker.bootstrap, "--kafka-config", str(props), "--metrics-port", "0",
           "--group-id", f"sec-{uuid.uuid4().hex[:6]}"]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env)
    try:  # wait for kafka-python's configuration dump (DEBUG), then a little more of whatever follows
        deadline = time.monotonic() + 40
        while "KafkaAdminClient with configuration" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        proc.kill()
        proc.wait(10)
    text = log.read_text(errors="replace")
    assert "connecting bootstrap=" in text and "sasl_password=***" in text
    assert "'sasl_plain_password': '***'" in text, "kafka-python's configuration dump is redacted"
    assert SECRET not in text and SSL_SECRET not in text


# -- metrics bind address -----------------------------------------------------------------------------------


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_metrics_bind_loopback_by_default(rel_model, tmp_path):
    assert ServeConfig("h:1", model_dir=tmp_path).metrics_host == "127.0.0.1"
    parser = build_parser()
    args = parser.parse_args(["serve", "--model", str(tmp_path), "--bootstrap-servers", "h:1"])
    assert args.metrics_host == "127.0.0.1"
    hosts = {
        name: action.default
        for name, sub in parser._subparsers._group_actions[0].choices.items()
        for action in sub._actions
        if action.dest == "metrics_host"
    }
    assert "serve" in hosts and set(hosts.values()) == {"127.0.0.1"}, hosts

    cfg = ServeConfig("127.0.0.1:1", model_dir=rel_model.path, metrics_port=0)
    scorer = Scorer(cfg, load_model(rel_model.path))
    from fraudlite.streaming.metrics import serve_metrics

    server, _ = serve_metrics(scorer.metrics.registry, cfg.metrics_host, 0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        other = _non_loopback_ip()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        server.shutdown()
        server.server_close()
