"""``fraudlite replay`` against the real embedded broker, plus the pure emission-order logic."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from fraudlite.cli import main
from fraudlite.errors import ConfigError, DataError, UserError
from fraudlite.streaming.replay import emission_order, label_release_ts, replay

pytestmark = pytest.mark.integration

DAY = 86_400
T0 = 20_000 * DAY  # 2024-10-04


def _day(offset: int) -> str:
    return str((pd.Timestamp(T0, unit="s") + pd.Timedelta(days=offset)).date())


@pytest.fixture
def tx_file(tmp_path):
    """300 transactions over 10 days, shuffled file order, with same-second ties."""
    rng = np.random.default_rng(0)
    n = 300
    ts = T0 + rng.integers(0, 10 * DAY, n)
    ts[10:20] = ts[9]  # ties
    frame = pd.DataFrame(
        {
            "id": [f"tx{i:04d}" for i in range(n)],
            "timestamp": pd.to_datetime(ts, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            "customer_id": [f"C{c:03d}" for c in rng.integers(0, 40, n)],
            "terminal_id": [f"T{t:03d}" for t in rng.integers(0, 20, n)],
            "amount": np.round(rng.random(n) * 200, 2),
            "label": (rng.random(n) < 0.2).astype(int),
        }
    )
    path = tmp_path / "tx.csv"
    frame.to_csv(path, index=False)
    frame["ts"] = ts
    return path, frame


def _decode(records):
    return [json.loads(r.value) for r in records]


def test_replay_sends_every_row_keyed_and_time_ordered_per_partition(broker, consume_all, tx_file):
    path, frame = tx_file
    topic = f"tx-{time.monotonic_ns()}"
    result = replay(str(path), {"tx_id": "id"}, bootstrap_servers=broker.bootstrap, topic=topic, partitions=3)
    assert (result.transactions, result.labels) == (len(frame), 0)
    records = consume_all(topic, min_count=len(frame))
    msgs = _decode(records)
    assert len(msgs) == len(frame)
    assert sorted(m["tx_id"] for m in msgs) == sorted(frame["id"])
    assert {r.partition for r in records} == {0, 1, 2}
    by_id = frame.set_index("id")
    file_pos = {tx: i for i, tx in enumerate(frame["id"])}
    for r, m in zip(records, msgs, strict=True):
        row = by_id.loc[m["tx_id"]]
        assert set(m) == {"tx_id", "timestamp", "customer_id", "terminal_id", "amount"}
        assert r.key == row["customer_id"].encode() == m["customer_id"].encode()
        assert m["timestamp"] == row["ts"] * 1000 and m["terminal_id"] == row["terminal_id"]
        assert m["amount"] == row["amount"]
    for p in {r.partition for r in records}:
        order = [
            (m["timestamp"], file_pos[m["tx_id"]])
            for r, m in zip(records, msgs, strict=True)
            if r.partition == p
        ]
        assert order == sorted(order), f"partition {p} is not in (time, file) order"
    customers_partition = {}
    for r in records:
        assert customers_partition.setdefault(r.key, r.partition) == r.partition


def test_replay_emits_labels_after_the_delay(broker, consume_all, tx_file):
    path, frame = tx_file
    topic, labels = f"tx-{time.monotonic_ns()}", f"labels-{time.monotonic_ns()}"
    result = replay(
        str(path),
        {"tx_id": "id"},
        bootstrap_servers=broker.bootstrap,
        topic=topic,
        labels_topic=labels,
        label_delay_days=2,
        partitions=2,
    )
    assert result.labels == result.transactions == len(frame)
    records = consume_all(labels, min_count=len(frame))
    msgs = _decode(records)
    assert len(msgs) == len(frame)
    by_id = frame.set_index("id")
    for r, m in zip(records, msgs, strict=True):
        row = by_id.loc[m["tx_id"]]
        assert set(m) == {"tx_id", "customer_id", "terminal_id", "timestamp", "label"}
        assert (m["label"], m["timestamp"], m["terminal_id"]) == (
            row["label"],
            row["ts"] * 1000,
            row["terminal_id"],
        )
        assert r.key == row["customer_id"].encode()


def test_emission_order_puts_each_label_just_before_the_first_later_transaction():
    ts = np.array([0, 10, DAY - 1, DAY, DAY + 5, 3 * DAY, 3 * DAY])
    release = label_release_ts(ts, 1)
    np.testing.assert_array_equal(
        release, [DAY - 1, DAY - 1, DAY - 1, 2 * DAY - 1, 2 * DAY - 1, 4 * DAY - 1, 4 * DAY - 1]
    )
    kinds, rows = emission_order(ts, release)
    events = [("tx" if k == 0 else "label", int(i)) for k, i in zip(kinds, rows, strict=True)]
    assert events == [
        ("tx", 0), ("tx", 1), ("tx", 2),  # a transaction at the release second goes first
        ("label", 0), ("label", 1), ("label", 2),
        ("tx", 3), ("tx", 4), ("label", 3), ("label", 4),
        ("tx", 5), ("tx", 6), ("label", 5), ("label", 6),  # pending labels flushed at the end
    ]  # fmt: skip
    # no delay: a label is never emitted before its own transaction
    kinds, rows = emission_order(ts, label_release_ts(ts, 0))
    seen = set()
    for k, i in zip(kinds, rows, strict=True):
        assert k == 0 or i in seen
        seen.add(i) if k == 0 else None
    kinds, rows = emission_order(ts, None)
    assert not kinds.any() and rows.tolist() == list(range(len(ts)))


def test_emission_order_matches_the_features_label_cutoff():
    """Before each transaction, exactly the labels its terminal features may use (tx day <= day - delay)
    have been emitted: none missing, none early."""
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 30 * DAY, 2000))
    delay = 3
    kinds, rows = emission_order(ts, label_release_ts(ts, delay))
    emitted = np.zeros(len(ts), dtype=bool)
    for k, i in zip(kinds, rows, strict=True):
        if k == 1:
            emitted[i] = True
        else:
            np.testing.assert_array_equal(emitted, ts // DAY <= ts[i] // DAY - delay)
    assert emitted.all()


def test_limit_and_window(broker, consume_all, tx_file):
    path, frame = tx_file
    topic = f"tx-{time.monotonic_ns()}"
    result = replay(
        str(path),
        {"tx_id": "id"},
        bootstrap_servers=broker.bootstrap,
        topic=topic,
        start=_day(2),
        end=_day(5),
        limit=25,
        partitions=1,
    )
    day = frame["ts"] // DAY - T0 // DAY
    window = frame[(day >= 2) & (day <= 5)].sort_values("ts", kind="stable")
    assert result.transactions == 25
    msgs = _decode(consume_all(topic, min_count=25))
    assert [m["tx_id"] for m in msgs] == list(window["id"][:25])


def test_rate_is_roughly_honoured(broker, tx_file):
    path, _ = tx_file
    t = time.monotonic()
    result = replay(
        str(path), {"tx_id": "id"}, bootstrap_servers=broker.bootstrap, topic=f"tx-{time.monotonic_ns()}",
        rate=400, limit=200,
    )  # fmt: skip
    elapsed = time.monotonic() - t
    assert result.transactions == 200
    assert 0.45 <= result.seconds <= 3.0 and elapsed >= 0.45
    assert result.rate <= 450


def test_existing_topic_keeps_its_partitions(broker, make_topic, kafka_admin, tx_file):
    path, _ = tx_file
    topic = make_topic(partitions=2)
    replay(str(path), {"tx_id": "id"}, bootstrap_servers=broker.bootstrap, topic=topic, partitions=6, limit=5)
    assert len(kafka_admin.describe_topics([topic])[0]["partitions"]) == 2


def test_cli_replay(broker, consume_all, tx_file, capsys):
    path, frame = tx_file
    topic = f"tx-{time.monotonic_ns()}"
    code = main(
        [
            "-q",
            "replay",
            "--data",
            str(path),
            "--columns",
            "tx_id=id",
            "--bootstrap-servers",
            broker.bootstrap,
        ]
        + ["--topic", topic, "--limit", "50", "--partitions", "2"]
    )
    assert code == 0
    assert f"replayed 50 transactions to {topic}" in capsys.readouterr().out
    assert len(consume_all(topic, min_count=50)) == 50


def test_cli_user_errors_exit_2(tx_file, tmp_path, capsys):
    path, frame = tx_file
    frame.drop(columns=["label", "ts"]).to_csv(tmp_path / "nolabel.csv", index=False)
    base = ["replay", "--columns", "tx_id=id", "--bootstrap-servers", "127.0.0.1:1"]
    assert main(base + ["--data", str(tmp_path / "nolabel.csv"), "--labels-topic", "l"]) == 2
    assert "label" in capsys.readouterr().err
    assert main(base + ["--data", str(path), "--rate", "-1"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(base + ["--data", str(path), "--start", "2024-13-01"]) == 2
    assert "--start" in capsys.readouterr().err
    assert main(base + ["--data", str(path), "--start", "2030-01-01"]) == 2
    assert "no transactions" in capsys.readouterr().err


def test_cli_replay_reads_kafka_security_settings(tx_file, tmp_path, monkeypatch, capsys):
    path, _ = tx_file
    base = ["replay", "--data", str(path), "--columns", "tx_id=id", "--bootstrap-servers", "127.0.0.1:1"]
    monkeypatch.setenv("FRAUDLITE_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    assert main(base) == 2
    assert "FRAUDLITE_KAFKA_SECURITY_PROTOCOL" in capsys.readouterr().err
    monkeypatch.delenv("FRAUDLITE_KAFKA_SECURITY_PROTOCOL")
    (tmp_path / "kafka.properties").write_text("bogus.key=1\n")
    assert main(base + ["--kafka-config", str(tmp_path / "kafka.properties")]) == 2
    assert "bogus.key" in capsys.readouterr().err


def test_unreachable_broker_is_a_user_error(tx_file):
    path, _ = tx_file
    with pytest.raises(UserError, match="127.0.0.1:1"):
        replay(
            str(path),
            {"tx_id": "id"},
            bootstrap_servers="127.0.0.1:1",
            kafka_config={"bootstrap_timeout_ms": 500},
        )


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--limit"):
        replay("x.csv", bootstrap_servers="h:1", limit=0)
    with pytest.raises(ConfigError, match="--label-delay-days"):
        replay("x.csv", bootstrap_servers="h:1", label_delay_days=-1)
    with pytest.raises(ConfigError, match="--labels-topic"):
        replay("x.csv", bootstrap_servers="h:1", labels_topic="transactions")
    with pytest.raises(DataError):
        replay("/nonexistent/x.csv", bootstrap_servers="h:1")


def test_streaming_modules_import_neither_pandas_nor_torch():
    code = (
        "import sys, fraudlite.streaming.replay, fraudlite.kafkaio.broker, fraudlite.cli; "
        "print(sorted(m for m in ('pandas', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- every other column goes out too (issue 17: a model's extra columns) --------------------------------


@pytest.fixture
def wide_frame():
    """12 transactions with the core columns, a label, a scenario and columns of every kind."""
    n = 12
    return pd.DataFrame(
        {
            "tx_id": [f"w{i:02d}" for i in range(n)],
            "timestamp": (T0 + np.arange(n) * 60) * 1000,
            "customer_id": [f"C{i % 3}" for i in range(n)],
            "terminal_id": [f"T{i % 4}" for i in range(n)],
            "amount": np.round(np.linspace(1, 100, n), 2),
            "label": [i % 5 == 0 for i in range(n)],
            "scenario": ["legit"] * n,
            "merchant": [f"{i % 4:04d}" for i in range(n)],  # leading zeros: text
            "mcc": [5411, 5812] * (n // 2),
            "device.score": [None if i % 4 == 0 else i / 16 for i in range(n)],
            "card_present": ["yes", "no"] * (n // 2),
            "flag": [True, False, True] * (n // 3),
            "note": ['a "quoted", text', "plain"] * (n // 2),
            "dev_sc": np.linspace(0, 1, n),
            "empty": [None] * n,
            "big": ["123456789012345678901234"] * n,  # beyond 64 bits: text
        }
    )


def _expected(frame: pd.DataFrame, row: int) -> dict:
    r = frame.iloc[row]
    score = r["device.score"]
    return {
        "tx_id": r["tx_id"], "timestamp": int(r["timestamp"]), "customer_id": r["customer_id"],
        "terminal_id": r["terminal_id"], "amount": float(r["amount"]), "merchant": r["merchant"],
        "mcc": int(r["mcc"]), "device.score": None if pd.isna(score) else float(score),
        "card_present": r["card_present"], "flag": bool(r["flag"]), "note": r["note"],
        "device_score": float(r["dev_sc"]), "empty": None, "big": r["big"],
    }  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_every_other_column_goes_out_under_its_name(broker, consume_all, tmp_path, wide_frame, suffix):
    path = tmp_path / f"wide{suffix}"
    if suffix == ".csv":
        wide_frame.to_csv(path, index=False)
    else:
        wide_frame.to_parquet(path, index=False)
    topic = f"tx-{time.monotonic_ns()}"
    result = replay(str(path), {"device_score": "dev_sc"}, bootstrap_servers=broker.bootstrap, topic=topic)
    assert result.transactions == len(wide_frame)
    msgs = {m["tx_id"]: m for m in _decode(consume_all(topic, min_count=len(wide_frame)))}
    assert len(msgs) == len(wide_frame)
    for i, tx_id in enumerate(wide_frame["tx_id"]):
        assert msgs[tx_id] == _expected(wide_frame, i)
        assert list(msgs[tx_id])[:5] == ["tx_id", "timestamp", "customer_id", "terminal_id", "amount"]


def test_typed_columns_of_a_parquet_file_become_json(broker, consume_all, tmp_path, wide_frame):
    frame = wide_frame[["tx_id", "timestamp", "customer_id", "terminal_id", "amount"]].copy()
    frame["when"] = pd.to_datetime(T0 + np.arange(len(frame)), unit="s", utc=True)
    frame["count"] = pd.array([None if i % 3 == 0 else i for i in range(len(frame))], dtype="Int64")
    frame["kind"] = pd.Categorical(["a", "b"] * (len(frame) // 2))
    frame["ratio"] = np.float32(0.5)
    path = tmp_path / "typed.parquet"
    frame.to_parquet(path, index=False)
    topic = f"tx-{time.monotonic_ns()}"
    replay(str(path), bootstrap_servers=broker.bootstrap, topic=topic)
    msgs = {m["tx_id"]: m for m in _decode(consume_all(topic, min_count=len(frame)))}
    for i, tx_id in enumerate(frame["tx_id"]):
        m = msgs[tx_id]
        assert pd.Timestamp(m["when"]) == frame["when"][i]
        assert m["count"] == (None if i % 3 == 0 else i) and m["kind"] == "ab"[i % 2] and m["ratio"] == 0.5


def test_other_columns_serve_decodes_them_like_the_offline_path(broker, consume_all, tmp_path, wide_frame):
    from fraudlite.data.transactions import load_transactions
    from fraudlite.features.extras import ExtraColumn
    from fraudlite.kafkaio.wire import TransactionDecoder

    path = tmp_path / "wide.csv"
    wide_frame.to_csv(path, index=False)
    extras = (
        ExtraColumn("merchant", "categorical", vocabulary=("0000", "0001")),
        ExtraColumn("mcc", "categorical", vocabulary=("5411", "5812")),
        ExtraColumn("device.score", "numeric"),
        ExtraColumn("card_present", "bool"),
        ExtraColumn("flag", "bool"),
        ExtraColumn("device_score", "numeric"),
    )
    topic = f"tx-{time.monotonic_ns()}"
    columns = {"device_score": "dev_sc"}
    replay(str(path), columns, bootstrap_servers=broker.bootstrap, topic=topic, partitions=1)
    online = TransactionDecoder(extras=extras).decode([r.value for r in consume_all(topic, min_count=12)])
    offline = load_transactions(path, columns, extras=extras)
    assert online.invalid == [] and online.tx_id == offline["tx_id"].tolist()
    for c in extras:
        np.testing.assert_array_equal(online.extras[c.name], offline[c.name].to_numpy(), err_msg=c.name)


def test_a_missing_column_mapped_by_columns_is_a_data_error(tmp_path, wide_frame):
    path = tmp_path / "wide.csv"
    wide_frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="'nowhere' not in"):
        replay(str(path), {"device_score": "nowhere"}, bootstrap_servers="127.0.0.1:1")
