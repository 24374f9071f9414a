"""Poison inputs (issue 7): hypothesis-generated garbage mixed into valid traffic.

* property: the decoder never raises, classifies every message like the oracle (``fraudlite.testing.poison``) and
  rejects it with one of the oracle's reasons;
* integration (real broker, real scorer): every invalid message lands in the DLQ with a reason and its
  source coordinates, every valid one is scored exactly once, the scorer never stops -- including a
  1.5 MB message, larger than the producer's default request size, which used to fail the batch forever;
* throughput with 10% poison vs clean traffic (same run, same broker): a tolerant bound here, the
  measured ratio in ``benchmarks/bench_reliability.py``.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fraudlite.kafkaio.wire import REASONS, DecodeLimits, TransactionDecoder
from fraudlite.streaming.config import BatchConfig, ServeConfig
from fraudlite.streaming.reload import load_model
from fraudlite.streaming.scorer import Scorer
from fraudlite.testing.poison import expected_reasons, mix_poison, poison_message, poison_messages, render
from fraudlite.testing.reliability import make_transactions, produce_big, read_records, scorer_rate
from fraudlite.testing.streaming import ScorerThread

LIMITS = DecodeLimits()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(poison_message(), min_size=1, max_size=20))
def test_decoder_agrees_with_oracle(messages):
    values = [render(kind, payload, i) for i, (kind, payload) in enumerate(messages)]
    d = TransactionDecoder(LIMITS).decode(values)
    assert len(d) + len(d.invalid) == len(values)
    rejected = dict(d.invalid)
    for i, value in enumerate(values):
        want = expected_reasons(value, LIMITS)
        if want:
            assert i in rejected, f"accepted an invalid message ({sorted(want)}): {value[:200]!r}"
            assert rejected[i] in want, f"reason {rejected[i]} not in {sorted(want)}: {value[:200]!r}"
            assert rejected[i] in REASONS
        else:
            assert i not in rejected, f"rejected a valid message as {rejected[i]}: {value[:200]!r}"
    assert np.all(d.amount_cents >= 0) and np.all(np.diff(d.index) > 0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(64, 1000), st.integers(1, 50))
def test_decoder_never_raises_on_any_bytes_and_limits(value, max_bytes, max_id):
    limits = DecodeLimits(max_message_bytes=max_bytes, max_id_chars=max_id)
    d = TransactionDecoder(limits).decode([value, None, b"", value[::-1]])
    assert len(d) + len(d.invalid) == 4


def test_decoder_rejects_lone_surrogates():
    d = TransactionDecoder().decode(
        [b'{"tx_id":"a\\ud800","timestamp":1767225600000,"customer_id":"C","terminal_id":"T","amount":1}']
    )
    assert len(d) == 0 and d.invalid[0][1] == "bad_json"


def _config(broker, topics, model, **kw) -> ServeConfig:
    kw.setdefault("batch", BatchConfig(max_records=1000, max_ms=20))
    return ServeConfig(
        bootstrap_servers=broker.bootstrap, model_dir=model.path, topics=topics,
        group_id=f"poison-{uuid.uuid4().hex[:8]}", metrics_port=None, **kw,
    )  # fmt: skip


@pytest.mark.integration
@seed(20260701)
@settings(max_examples=1, deadline=None, phases=[Phase.generate], database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(poison=st.lists(poison_message(), min_size=300, max_size=300))
def test_poison_mixed_into_traffic(rel_broker, rel_topics, rel_model, rel_data, kafka_client, poison):
    """~3000 valid + 300 hypothesis poison + a 1.5 MB message, interleaved, through a real scorer."""
    t = rel_topics(partitions=2)
    valid = rel_data.messages()[:3000]
    rng = np.random.default_rng(0)
    bad = [render(k, p, i) for i, (k, p) in enumerate(poison)]
    bad = [(None if i % 5 == 0 and v is not None else b"C%d" % i, v) for i, v in enumerate(bad)]
    bad.append((b"C1", b'{"pad":"' + b"g" * (1536 * 1024) + b'"}'))
    messages = valid + bad
    order = rng.permutation(len(messages))
    messages = [messages[i] for i in order]
    produce_big(rel_broker.bootstrap, t.input, messages)

    scorer = Scorer(_config(rel_broker, t, rel_model, kafka_client=kafka_client), load_model(rel_model.path))
    run = ScorerThread(scorer).start()
    run.wait_scored(len(messages), timeout_s=120)
    run.stop()
    assert scorer.summary.failures == 0, "no batch failed (an oversize DLQ record used to fail forever)"

    oracle = {i: expected_reasons(v, LIMITS) for i, (_, v) in enumerate(messages)}
    valid_ids = [json.loads(v)["tx_id"] for i, (_, v) in enumerate(messages) if not oracle[i]]
    n_invalid = sum(1 for r in oracle.values() if r)
    assert n_invalid >= 250, "the mix is mostly poison"

    decisions = read_records(rel_broker.bootstrap, t.output, min_count=len(valid_ids))
    decided = [json.loads(r.value)["tx_id"] for r in decisions]
    assert len(decided) == len(set(decided)), "one decision per valid transaction"
    assert sorted(map(str, decided)) == sorted(map(str, valid_ids))

    source = {(r.partition, r.offset): r.value for r in read_records(rel_broker.bootstrap, t.input)}
    by_value = {}
    for i, (_, v) in enumerate(messages):
        by_value.setdefault(v, oracle[i])
    dlq = read_records(rel_broker.bootstrap, t.dlq, min_count=n_invalid)
    assert len(dlq) == n_invalid, "every invalid message in the DLQ, once"
    seen = set()
    for r in dlq:
        h = {k: v.decode() for k, v in r.headers}
        key = (int(h["fraudlite.source.partition"]), int(h["fraudlite.source.offset"]))
        assert h["fraudlite.source.topic"] == t.input and key not in seen
        seen.add(key)
        original = source[key]
        assert h["fraudlite.dlq.reason"] in by_value[original], (h, original[:100])
        if len(original or b"") > 512 * 1024:
            assert h["fraudlite.dlq.truncated"] == "value" and int(h["fraudlite.dlq.original_bytes"]) == len(
                original
            )
            assert r.value == original[: 512 * 1024]
        else:
            assert r.value == (original or b"")


@pytest.mark.integration
def test_throughput_with_ten_percent_poison(rel_broker, rel_topics, rel_model):
    """Clean vs 10% poison (every kind, 1% of all traffic oversized), alternating, same broker.

    A smoke bound: a pathological poison path (an exception per message, a failing batch, a rollback)
    would show up as a fraction of clean throughput. The measured ratio (more rounds, more messages)
    is in benchmarks/RESULTS.md (bench_reliability); these shared 2-core machines are too noisy for a
    0.8 bound on a few seconds of traffic.
    """
    n = 15_000
    data = make_transactions(n, customers=2000, terminals=1000, days=30, seed=21)
    clean = data.messages()
    mixed = mix_poison(clean, poison_messages(n // 10, seed=3))
    rates: dict[str, list[tuple[float, float]]] = {"clean": [], "poison": []}
    for name, messages in (("clean", clean), ("poison", mixed)) * 3:
        t = rel_topics(partitions=4)
        produce_big(rel_broker.bootstrap, t.input, messages)
        rates[name].append(scorer_rate(rel_broker.bootstrap, t, rel_model, messages, len(messages)))
    wall = max(r for r, _ in rates["poison"]) / max(r for r, _ in rates["clean"])
    cpu = min(c for _, c in rates["clean"]) / min(c for _, c in rates["poison"])
    print(f"10% poison vs clean: throughput x{wall:.2f}, CPU per message x{cpu:.2f} ({rates})")
    # Best of 3 each; a bound that only a pathological path breaks: one CI run measured 0.45x by CPU
    # (waiting on the broker's 1 MB records counts as CPU while the client polls) where the bench's
    # longer runs give 0.87x.
    assert cpu >= 0.3, rates
    assert wall >= 0.3, rates
