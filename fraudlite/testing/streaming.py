"""Helpers for scorer tests and the benchmarks: a small model directory, synthetic transactions,
producing them, a scorer running in a thread, and a process's memory from ``/proc``.

Imported by the tests, ``fraudlite.testing.reliability`` and the benchmarks.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir, write_model_dir

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def write_model(
    out: Path,
    spec: FeatureSpec | None = None,
    seed: int = 0,
    hidden: int = 32,
    threshold: float = 0.5,
    alert_threshold: float = 0.9,
    stages: list[str] | None = None,
    version: str | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    compressed: bool = False,
) -> ModelDir:
    """A small MLP scoring model directory (random weights) honouring the serving contract.

    ``stats`` = (mean, std) of the features (``feature_stats``) makes the scores spread realistically
    (a few percent above 0.5); without it inputs are scaled by a rough constant. ``compressed`` writes
    it the way ``fraudlite compress`` ships a model: the first layer half pruned, as a compact artifact.
    """
    spec = spec or FeatureSpec()
    rng = np.random.default_rng(seed)
    f = spec.n_features
    layers = [
        (rng.normal(0, 1.0 / np.sqrt(f), (hidden, f)).astype(np.float32), np.zeros(hidden, np.float32)),
        (rng.normal(0, 1.0, (1, hidden)).astype(np.float32), np.full(1, -4.0, np.float32)),
    ]
    if stats is None:
        mean, std = np.zeros(f, np.float32), np.full(f, 50.0, np.float32)
    else:
        mean, std = (np.asarray(a, np.float32) for a in stats)
    manifest = {
        "threshold": threshold,
        "alert_threshold": alert_threshold,
        "model_type": "mlp",
        "compression": {"stages": stages or []},
    }
    if version:
        manifest["version"] = version
    if compressed:
        return _write_compressed(out, spec, layers, mean, std, manifest)
    from fraudlite.models.onnx_export import mlp_to_onnx

    onnx_bytes = mlp_to_onnx(layers, mean, std).SerializeToString()

    def write(tmp: Path) -> dict[str, str]:
        (tmp / "model.onnx").write_bytes(onnx_bytes)
        (tmp / "feature_spec.json").write_text(
            json.dumps(
                {"spec": spec.to_dict(), "normalization": {"mean": mean.tolist(), "std": std.tolist()}}
            )
        )
        return {"model.onnx": "onnx", "feature_spec.json": "spec"}

    return write_model_dir(out, write, manifest)


def _write_compressed(out, spec: FeatureSpec, layers, mean, std, manifest: dict) -> ModelDir:
    from fraudlite.compression.compact import encode_compact
    from fraudlite.compression.served import choose_runtime, manifest_runtime, write_compressed_dir
    from fraudlite.compression.state import CompressedMLP

    w0 = layers[0][0]
    mask = np.abs(w0) >= np.median(np.abs(w0))
    layers = [(np.where(mask, w0, np.float32(0)), layers[0][1]), *layers[1:]]
    state = CompressedMLP(layers, mean, std, masks=[mask, None])
    _, runtime = choose_runtime(state)
    return write_compressed_dir(
        out, encode_compact(state), spec, {**manifest, "runtime": manifest_runtime(runtime)}
    )


def feature_stats(tx: Transactions, spec: FeatureSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the offline features of ``tx`` (for ``write_model(stats=...)``)."""
    from fraudlite.features.offline import TransactionArrays, compute_features

    spec = spec or FeatureSpec()
    arrays = TransactionArrays.from_columns(
        spec, tx.ts, np.array(tx.customer_id), np.array(tx.terminal_id), tx.amount, tx.label
    )
    x = compute_features(spec, arrays).astype(np.float64)
    return x.mean(axis=0), np.maximum(x.std(axis=0), 1e-3)


@dataclass
class Transactions:
    """Synthetic transactions in time order (epoch s) with labels."""

    tx_id: list[str]
    ts: np.ndarray
    customer_id: list[str]
    terminal_id: list[str]
    amount: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def messages(self) -> list[tuple[bytes, bytes]]:
        """(key, value) JSON messages, timestamps in epoch ms."""
        out = []
        for t, ts, c, m, a in zip(
            self.tx_id,
            self.ts.tolist(),
            self.customer_id,
            self.terminal_id,
            self.amount.tolist(),
            strict=True,
        ):
            value = {"tx_id": t, "timestamp": ts * 1000, "customer_id": c, "terminal_id": m, "amount": a}
            out.append((c.encode(), json.dumps(value).encode()))
        return out

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {
                "tx_id": self.tx_id,
                "timestamp": self.ts * 1000,
                "customer_id": self.customer_id,
                "terminal_id": self.terminal_id,
                "amount": self.amount,
                "label": self.label,
            }
        )


def make_transactions(
    n: int, customers: int = 200, terminals: int = 300, days: int = 20, seed: int = 0, prefix: str = "tx"
) -> Transactions:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(T0, T0 + days * 86400, n)).astype(np.int64)
    cust = rng.integers(0, customers, n)
    term = rng.integers(0, terminals, n)
    amount = np.round(rng.gamma(2.0, 30.0, n), 2)
    label = (rng.random(n) < 0.05).astype(np.int8)
    return Transactions(
        tx_id=[f"{prefix}{i}" for i in range(n)],
        ts=ts,
        customer_id=[f"C{c}" for c in cust],
        terminal_id=[f"T{t}" for t in term],
        amount=amount,
        label=label,
    )


def produce(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], **producer_config
) -> None:
    """Produce (key, value) pairs with the default (murmur2) partitioner and wait for every ack.

    ``producer_config`` adds to / overrides the ``KafkaProducer`` settings (e.g. ``max_request_size``).
    """
    from kafka import KafkaProducer

    config = {"linger_ms": 5, "batch_size": 256 * 1024, **producer_config}
    producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def proc_status_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A memory line of ``/proc/<pid>/status`` in MB (``VmRSS``: resident now, ``VmHWM``: peak resident);
    NaN when the line is missing. Stdlib only: benchmark workers measure their own footprint with it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class ScorerThread:
    """A Scorer running ``run()`` in a background thread."""

    scorer: object
    thread: threading.Thread = field(init=False)
    error: BaseException | None = None
    summary: object = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.scorer.connect()
            self.summary = self.scorer.run()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e
        finally:
            self.scorer.close()

    def start(self) -> ScorerThread:
        self.thread.start()
        return self

    def wait_scored(self, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.scorer.summary.consumed < n:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"scorer consumed {self.scorer.summary.consumed} of {n} in {timeout_s}s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.scorer.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "scorer did not stop"
        if self.error is not None:
            raise self.error


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: str = "read_committed",
    min_count: int = 0,
    timeout_s: float = 20.0,
    client_id: str = "fraudlite-tests-reader",
) -> list:
    """All records of ``topic`` from offset 0 to its current end offsets, sorted by (partition, offset).

    Waits (polling end offsets) until at least ``min_count`` records were read or ``timeout_s`` passes;
    then returns what it has (the caller asserts on the count).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=client_id,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 << 20,  # oversized (poison) records fit
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions:  # None: unknown yet; empty: a just-created topic before its partitions show
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic!r} does not exist")
                time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        while True:
            for batch in consumer.poll(timeout_ms=100, max_records=100_000).values():
                records.extend(batch)
            if time.monotonic() > deadline:
                break
            if len(records) < min_count:
                continue
            # Under read_committed Tansu reports a bogus end offset (0) while a transaction is open, so
            # the end offsets only decide "done" once min_count is reached.
            ends = consumer.end_offsets(tps)
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()
