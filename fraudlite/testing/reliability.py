"""Helpers for the reliability tests and benchmarks: `fraudlite serve` as a real subprocess (so it can be
``kill -9``-ed), group offsets, decisions read back, and poison-message generators.

Imported by ``tests/reliability/test_*.py``, ``benchmarks/bench_reliability.py`` and
``benchmarks/bench_soak.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from fraudlite.testing.streaming import (  # noqa: E402
    Transactions,
    feature_stats,
    make_transactions,
    produce,
    read_topic,
    write_model,
)

__all__ = [
    "ROOT",
    "assigned_partitions",
    "committed_total",
    "decision_scores",
    "unique_topics",
    "reference_scores",
    "serve_args",
    "ServeProcess",
    "Transactions",
    "committed_offsets",
    "create_topics",
    "decision_counts",
    "end_offsets",
    "feature_stats",
    "fraudlite_tracebacks",
    "kill9_during_replay",
    "make_transactions",
    "metric",
    "offline_scores",
    "produce",
    "produce_big",
    "read_records",
    "scorer_rate",
    "scrape",
    "write_model",
]


def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fraudlite-rel-admin")
    try:
        for name in names:
            try:
                admin.create_topics(
                    {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """High watermarks (read_uncommitted) of every partition."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close(autocommit=False)


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Records of ``topic`` the group has committed, over all partitions (none committed counts 0)."""
    return sum(v or 0 for v in committed_offsets(bootstrap, group, topic, partitions).values())


def unique_topics(prefix: str):
    """A ``Topics`` of fresh names (``{prefix}-in-XXXXXX``, ``-dec-``, ``-al-``, ``-dlq-``, ``-lab-``); creates
    nothing (``create_topics``)."""
    import uuid

    from fraudlite.streaming.config import Topics

    u = uuid.uuid4().hex[:6]
    return Topics(input=f"{prefix}-in-{u}", output=f"{prefix}-dec-{u}", alerts=f"{prefix}-al-{u}",
                  dlq=f"{prefix}-dlq-{u}", labels=f"{prefix}-lab-{u}")  # fmt: skip


def assigned_partitions(log_text: str) -> list[int] | None:
    """The partitions a serve log last announced as assigned, or None before its first assignment."""
    found = re.findall(r"assigned partitions=\[([\d, ]*)\]", log_text)
    return None if not found else [int(x) for x in found[-1].split(",") if x.strip()]


def read_records(
    bootstrap: str,
    topic: str,
    *,
    min_count: int = 0,
    timeout_s: float = 30.0,
    isolation_level: str = "read_committed",
) -> list:
    """Every record of ``topic`` (``fraudlite.testing.streaming.read_topic``), with a longer default timeout."""
    return read_topic(
        bootstrap, topic, min_count=min_count, timeout_s=timeout_s, isolation_level=isolation_level,
        client_id="fraudlite-rel-reader",
    )  # fmt: skip


def decision_counts(records: list) -> Counter:
    """``Counter(tx_id -> number of decisions)``."""
    return Counter(json.loads(r.value)["tx_id"] for r in records)


def decision_scores(records: list) -> dict[str, float]:
    """``{tx_id: score}`` of decision records (the last one wins for a duplicated transaction)."""
    return {json.loads(r.value)["tx_id"]: json.loads(r.value)["score"] for r in records}


def scrape(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """``{sample name{labels}: value}`` of a metrics endpoint (labels sorted, Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def metric(samples: dict[str, float], name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = {f"{k}={v}" for k, v in labels.items()}
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = set(filter(None, rest.rstrip("}").split(",")))
        if want <= have:
            total += value
    return total


@dataclass
class ServeProcess:
    """``python -m fraudlite serve ...`` in a subprocess, stderr to ``log``.

    ``start()`` returns once the metrics endpoint is announced (the process has a port); use
    ``wait_metric`` to wait for progress, ``kill9()`` / ``terminate()`` to end it.
    """

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    port: int | None = None
    _offset: int = 0

    def start(self, timeout_s: float = 60.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "fraudlite", "serve", *self.args, "--metrics-port", "0"]
        env = {**os.environ, **self.env}
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=str(ROOT), start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        self.port = None
        while self.port is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not announce its metrics port:\n{self.tail()}")
            m = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", self.text())
            self.port = int(m.group(1)) if m else None
            time.sleep(0.05)
        return self

    def text(self) -> str:
        """This run's log (since ``start``)."""
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def value(self, name: str, **labels) -> float:
        try:
            return metric(self.metrics(), name, **labels)
        except OSError:
            return float("nan")

    def wait_metric(self, name: str, at_least: float, timeout_s: float = 60.0, **labels) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive:
                raise AssertionError(f"serve died (status {self.proc.returncode}):\n{self.tail()}")
            v = self.value(name, **labels)
            if v >= at_least:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}={v} < {at_least} after {timeout_s}s:\n{self.tail()}")
            time.sleep(0.1)

    def kill9(self) -> None:
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"serve did not stop within {timeout_s}s:\n{self.tail()}") from None


def serve_args(bootstrap: str, t, model_path, group: str, extra: list[str] = ()) -> list[str]:
    """``fraudlite serve`` arguments for topics ``t`` (a ``Topics``), short session timeout."""
    return [
        "--model", str(model_path), "--bootstrap-servers", bootstrap, "--input-topic", t.input,
        "--output-topic", t.output, "--alerts-topic", t.alerts, "--dlq-topic", t.dlq, "--labels-topic", t.labels,
        "--group-id", group, "--session-timeout-ms", "3000", *extra,
    ]  # fmt: skip


def reference_scores(bootstrap: str, t, model, n: int) -> dict[str, float]:
    """Scores of an uninterrupted in-process run over the input topic of ``t`` (own group and outputs)."""
    import uuid

    from fraudlite.streaming.config import BatchConfig, ServeConfig, Topics
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.scorer import Scorer
    from fraudlite.testing.streaming import ScorerThread

    u = uuid.uuid4().hex[:6]
    ref = Topics(input=t.input, output=f"{t.output}-ref{u}", alerts=f"{t.alerts}-ref{u}", dlq=f"{t.dlq}-ref{u}",
                 labels=t.labels)  # fmt: skip
    cfg = ServeConfig(
        bootstrap_servers=bootstrap, model_dir=model.path, topics=ref, group_id=f"ref-{u}", metrics_port=None,
        batch=BatchConfig(max_records=2000, max_ms=50),
    )  # fmt: skip
    run = ScorerThread(Scorer(cfg, load_model(model.path))).start()
    run.wait_scored(n, timeout_s=300)
    run.stop()
    return decision_scores(read_records(bootstrap, ref.output))


def produce_big(bootstrap: str, topic: str, messages) -> None:
    """``produce`` allowing values up to 4 MB (the poison mix has a 1.5 MB one)."""
    produce(bootstrap, topic, messages, max_request_size=4 << 20)


def scorer_rate(bootstrap: str, topics, model, messages, n: int) -> tuple[float, float]:
    """(messages/s, CPU seconds per message) of an in-process scorer over ``n`` already-produced
    messages of ``topics.input``, from its first record on (the group join is excluded)."""
    import time as _time
    import uuid

    from fraudlite.streaming.config import BatchConfig, ServeConfig
    from fraudlite.streaming.reload import load_model
    from fraudlite.streaming.scorer import Scorer

    cfg = ServeConfig(
        bootstrap_servers=bootstrap, model_dir=model.path, topics=topics, group_id=f"rate-{uuid.uuid4().hex[:8]}",
        metrics_port=None, batch=BatchConfig(max_records=2000, max_ms=50),
    )  # fmt: skip
    scorer = Scorer(cfg, load_model(model.path))
    scorer.connect()
    try:
        scorer.run(until=lambda s: s.consumed >= 1)
        first = scorer.summary.consumed
        t0, c0 = _time.perf_counter(), _time.process_time()
        scorer.run(until=lambda s: s.consumed >= n)
        seconds, cpu = _time.perf_counter() - t0, _time.process_time() - c0
    finally:
        scorer.close()
    done = scorer.summary.consumed - first
    return done / seconds, cpu / done


def fraudlite_tracebacks(log_text: str) -> list[str]:
    """Tracebacks in a serve log that went through fraudlite code (kafka-python logs its own connection
    errors with tracebacks when a broker goes away; those are not failures of the scorer)."""
    out = []
    for block in re.split(r"(?m)^(?=Traceback \(most recent call last\):)", log_text)[1:]:
        lines = block.splitlines()
        end = next(
            (i for i, line in enumerate(lines[1:], 1) if re.match(r"\d{4}-\d\d-\d\d ", line)), len(lines)
        )
        trace = "\n".join(lines[:end])
        if "/fraudlite/" in trace:
            out.append(trace[:2000])
    return out


def kill9_during_replay(
    args: list[str],
    log: Path,
    bootstrap: str,
    group: str,
    topic: str,
    partitions: int,
    total: int,
    kills: int,
    rng,
    timeout_s: float = 300.0,
) -> tuple[ServeProcess, list[dict]]:
    """Run ``fraudlite serve`` over ``total`` already-produced records and ``kill -9`` it ``kills`` times,
    restarting it each time; returns the last (live) process and what each kill hit.

    Kill points are random *progress* targets (committed records, spread over 5%..85% of ``total``, one
    kill shortly after a start instead: group join / restore), so every kill lands mid-stream however
    fast the machine is; a kill fires right when the target is passed or after a further random delay.
    Each kill records the victim's consumed count, the group's committed count right after it and (when
    measured) ``successor_progress_s``: restart to the first new commit of the next process.
    """
    targets = sorted(rng.uniform(0.05, 0.85) * total for _ in range(kills - 1))
    startup_kill = rng.randrange(1, kills) if kills > 1 else -1
    done: list[dict] = []
    t_start = time.monotonic()
    proc = ServeProcess(args, log).start()
    started = time.monotonic()

    def committed() -> int:
        return committed_total(bootstrap, group, topic, partitions)

    while len(done) < kills:
        if len(done) == startup_kill:
            time.sleep(rng.uniform(0.0, 2.0))
            what = "during start-up"
        else:
            target = targets.pop(0)
            deadline = time.monotonic() + timeout_s
            while (now := committed()) < target:
                if done and "successor_progress_s" not in done[-1] and now > done[-1]["committed"]:
                    done[-1]["successor_progress_s"] = round(time.monotonic() - started, 1)
                if not proc.alive:
                    raise AssertionError(f"serve died:\n{proc.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no progress to {target:.0f} of {total}:\n{proc.tail()}")
                time.sleep(0.05)
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.5)]))
            what = f"past {target / total:.0%}"
        consumed = proc.value("fraudlite_messages_consumed_total")
        proc.kill9()
        done.append({"at_s": round(time.monotonic() - t_start, 1), "when": what, "victim_consumed": consumed,
                     "victim_lived_s": round(time.monotonic() - started, 1), "committed": committed()})  # fmt: skip
        proc = ServeProcess(args, log).start()
        started = time.monotonic()
    return proc, done


def offline_scores(data: Transactions, model, tx_ids=None) -> dict[str, float]:
    """Scores from the *offline* feature computation over the whole stream (no labels: the stream has
    none), the independent reference for online features; ``tx_ids`` limits the result."""
    import numpy as np

    from fraudlite.compression.served import open_model
    from fraudlite.features.offline import TransactionArrays, compute_features

    spec = model.spec
    arrays = TransactionArrays.from_columns(
        spec, data.ts, np.array(data.customer_id), np.array(data.terminal_id), data.amount,
        np.zeros(len(data), dtype=np.int8),
    )  # fmt: skip
    scores = open_model(model.path).score(compute_features(spec, arrays).astype(np.float32))
    wanted = None if tx_ids is None else set(tx_ids)
    return {
        t: float(s) for t, s in zip(data.tx_id, scores.tolist(), strict=True) if wanted is None or t in wanted
    }
