"""Label store: idempotent day-partitioned Parquet, pending labels, and `collect` from a real broker."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from fraudlite.cli import main
from fraudlite.data.transactions import load_transactions, write_table
from fraudlite.errors import DataError
from fraudlite.pipeline.label_collect import CollectConfig, collect
from fraudlite.pipeline.label_store import (
    LabelStore,
    decode_labels,
    decode_transactions,
    load_store,
)
from fraudlite.pipeline.registry import RegistryBusyError

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


def tx_frame(ids, day=0, seconds=None) -> pd.DataFrame:
    ids = list(ids)
    seconds = seconds if seconds is not None else [T0 + day * 86_400 + 60 * i for i in range(len(ids))]
    return pd.DataFrame(
        {
            "tx_id": [str(i) for i in ids],
            "timestamp": pd.to_datetime(seconds, unit="s", utc=True).astype("datetime64[ms, UTC]"),
            "customer_id": [f"C{i % 3}" for i in range(len(ids))],
            "terminal_id": [f"T{i % 5}" for i in range(len(ids))],
            "amount": np.arange(len(ids), dtype=float) + 1.5,
        }
    )


def label_frame(ids, labels, day=0) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame(
        {
            "tx_id": [str(i) for i in ids],
            "timestamp": pd.to_datetime([T0 + day * 86_400] * len(ids), unit="s", utc=True).astype(
                "datetime64[ms, UTC]"
            ),
            "label": np.array(labels, dtype=np.int8),
        }
    )


def test_transactions_are_idempotent_and_day_partitioned(tmp_path):
    store = LabelStore(tmp_path / "s", create=True)
    first = store.write(pd.concat([tx_frame(range(5), day=0), tx_frame(range(5, 8), day=1)]))
    assert first.transactions_added == 8 and first.days_written == 2
    again = store.write(pd.concat([tx_frame(range(8), day=0).iloc[:5], tx_frame(range(5, 8), day=1)]))
    assert again.transactions_added == 0 and again.duplicates_ignored == 8 and again.days_written == 0
    assert [p.parent.name for p in store.days()] == ["day=2026-03-01", "day=2026-03-02"]
    df = store.read()
    assert df["tx_id"].tolist() == [str(i) for i in range(8)] and df["label"].isna().all()
    # pyarrow/pandas read the dataset directly (hive partitioning adds the day column)
    direct = pd.read_parquet(tmp_path / "s" / "transactions")
    assert len(direct) == 8 and set(direct["day"].astype(str)) == {"2026-03-01", "2026-03-02"}


def test_labels_wait_for_their_transaction(tmp_path):
    store = LabelStore(tmp_path / "s", create=True)
    store.write(tx_frame(range(4)))
    stats = store.write(labels=label_frame(["1", "99", "100"], [1, 0, 1]))
    assert stats.labels_applied == 1 and stats.labels_pending == 2
    # pending labels survive a restart (a new LabelStore on the same directory)
    reopened = LabelStore(tmp_path / "s")
    assert sorted(reopened.pending()["tx_id"]) == ["100", "99"]
    late = tx_frame(["99", "100"], seconds=[T0 + 3600, T0 + 7200])
    stats = reopened.write(late)
    assert stats.transactions_added == 2 and stats.labels_applied == 2 and stats.labels_pending == 0
    df = reopened.read().set_index("tx_id")
    assert df.loc["1", "label"] == 1 and df.loc["99", "label"] == 0 and df.loc["100", "label"] == 1
    assert pd.isna(df.loc["0", "label"])
    # replaying the same labels changes nothing; a corrected label wins
    assert reopened.write(labels=label_frame(["1", "99"], [1, 0])).days_written == 0
    assert reopened.write(labels=label_frame(["99"], [1])).labels_applied == 1
    assert reopened.read().set_index("tx_id").loc["99", "label"] == 1
    # a label and its transaction in the same write, in any day
    stats = reopened.write(tx_frame(["x"], day=5), label_frame(["x"], [1], day=5))
    assert stats.labels_applied == 1 and stats.labels_pending == 0


def test_load_store_gives_the_standard_frame(tmp_path):
    store = LabelStore(tmp_path / "s", create=True)
    with pytest.raises(DataError, match="no transactions yet"):
        load_store(store.root)
    store.write(tx_frame(range(6)))
    with pytest.raises(DataError, match="no labels yet"):
        load_store(store.root)
    store.write(labels=label_frame(["2", "3"], [1, 0]))
    df = load_store(store.root)
    assert list(df.columns) == ["tx_id", "ts", "customer_id", "terminal_id", "amount", "label"]
    assert df["ts"].dtype == np.int64 and df["label"].dtype == np.int8
    assert df["ts"].iloc[0] == T0 and df["label"].tolist() == [0, 0, 1, 0, 0, 0]
    with pytest.raises(DataError, match="not a label store"):
        load_store(tmp_path)


def test_decoding_validates_like_the_scorer():
    values = [
        json.dumps(
            {"tx_id": "a", "timestamp": T0 * 1000, "customer_id": "c", "terminal_id": "t", "amount": 12.34}
        ).encode(),
        json.dumps(
            {"tx_id": 7, "timestamp": "2026-03-01T00:00:05Z", "customer_id": 1, "terminal_id": 2, "amount": 1}
        ).encode(),
        b"not json",
        json.dumps(
            {"tx_id": "b", "timestamp": T0 * 1000, "customer_id": "c", "terminal_id": "t", "amount": -1}
        ).encode(),
        None,
    ]
    tx, bad = decode_transactions(values)
    assert bad == 3 and tx["tx_id"].tolist() == ["a", "7"]
    assert tx["amount"].tolist() == [12.34, 1.0]
    assert tx["timestamp"].iloc[1] == pd.Timestamp("2026-03-01T00:00:05Z")
    labels, bad = decode_labels(
        [
            json.dumps(
                {"tx_id": "a", "customer_id": "c", "terminal_id": "t", "timestamp": T0 * 1000, "label": 1}
            ).encode(),
            json.dumps({"tx_id": "b", "timestamp": T0 * 1000, "label": 2}).encode(),
            json.dumps({"tx_id": "c", "label": 1}).encode(),
            b"{",
        ]
    )
    assert bad == 3 and labels["tx_id"].tolist() == ["a"] and labels["label"].tolist() == [1]


def test_store_directory_errors(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    assert (
        main(
            [
                "collect",
                "--bootstrap-servers",
                "127.0.0.1:1",
                "--store",
                str(tmp_path / "busy"),
                "--idle-exit",
                "1",
            ]
        )
        == 2
    )
    assert "exists and is not a label store" in capsys.readouterr().err
    store = LabelStore(tmp_path / "s", create=True)
    with store.writer_lock():
        with pytest.raises(RegistryBusyError, match="label store is locked"):
            with store.writer_lock():
                pass


# --- against the real embedded broker -------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker():
    from fraudlite.kafkaio.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from fraudlite.data.simulator import SimulatorConfig, simulate

    path = tmp_path_factory.mktemp("store-data") / "tx.parquet"
    write_table(simulate(SimulatorConfig(n_customers=60, n_terminals=120, n_days=20, seed=3)), path)
    return path


@pytest.mark.integration
def test_collect_from_kafka_is_idempotent_and_trainable(broker, small_data, tmp_path):
    from fraudlite.streaming.replay import replay

    tx_topic, label_topic = f"tx-{uuid.uuid4().hex[:8]}", f"labels-{uuid.uuid4().hex[:8]}"
    sent = replay(
        str(small_data),
        bootstrap_servers=broker.bootstrap,
        topic=tx_topic,
        labels_topic=label_topic,
        label_delay_days=7,
    )
    assert sent.transactions == sent.labels > 1000
    store_dir = tmp_path / "store"
    config = CollectConfig(
        bootstrap_servers=broker.bootstrap,
        store=str(store_dir),
        transactions_topic=tx_topic,
        labels_topic=label_topic,
        group_id=f"collect-{uuid.uuid4().hex[:6]}",
        flush_interval_s=0.5,
        idle_exit_s=3.0,
    )
    stats = collect(config)
    assert stats.transactions == sent.transactions and stats.labels == sent.labels
    expected = load_transactions(small_data, require_label=True)
    got = load_store(store_dir)
    assert len(got) == len(expected) and not got["tx_id"].duplicated().any()
    merged = expected.merge(got, on="tx_id", suffixes=("", "_store"))
    assert len(merged) == len(expected)
    assert (merged["label"] == merged["label_store"]).all()
    assert (merged["ts"] == merged["ts_store"]).all()
    assert np.allclose(merged["amount"], merged["amount_store"])
    assert LabelStore(store_dir).summary()["pending_labels"] == 0
    # a replay of everything (duplicates on both topics) and a fresh consumer group: nothing changes
    before = {p: p.read_bytes() for p in store_dir.rglob("*.parquet") if "pending" not in p.name}
    replay(str(small_data), bootstrap_servers=broker.bootstrap, topic=tx_topic, labels_topic=label_topic)
    again = collect(CollectConfig(**{**config.__dict__, "group_id": f"collect-{uuid.uuid4().hex[:6]}"}))
    assert again.store.transactions_added == 0 and again.store.labels_applied == 0
    assert {p: p.read_bytes() for p in store_dir.rglob("*.parquet") if "pending" not in p.name} == before
    assert len(load_store(store_dir)) == len(expected)


@pytest.mark.integration
def test_collect_cli_keeps_labels_that_arrive_first(broker, tmp_path, capsys):
    from kafka import KafkaProducer

    tx_topic, label_topic = f"tx-{uuid.uuid4().hex[:8]}", f"labels-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    label = {"tx_id": "late-1", "customer_id": "c", "terminal_id": "t", "timestamp": T0 * 1000, "label": 1}
    producer.send(label_topic, json.dumps(label).encode(), key=b"c")
    producer.flush()
    argv = ["-q", "collect", "--bootstrap-servers", broker.bootstrap, "--store", str(tmp_path / "s"),
            "--transactions-topic", tx_topic, "--labels-topic", label_topic, "--idle-exit", "2",
            "--flush-interval", "0.5", "--group-id", "g1"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["pending_labels"] == 1
    tx = {
        "tx_id": "late-1",
        "timestamp": T0 * 1000 + 5,
        "customer_id": "c",
        "terminal_id": "t",
        "amount": 9.5,
    }
    producer.send(tx_topic, json.dumps(tx).encode(), key=b"c")
    producer.flush()
    producer.close()
    assert main(argv) == 0  # same group: resumes after the committed offsets
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary == {"transactions": 1, "labelled": 1, "frauds": 1, "pending_labels": 0, "days": 1}
