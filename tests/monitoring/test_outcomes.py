"""LabelJoin: decisions joined to late labels, outcomes per model version, bounded by capacity and horizon.

Pure numpy, no broker. The bounds are checked against a plain reference model of the same rules (an
insertion-ordered dict), over random operations that wrap and grow the ring; the memory per held
decision is measured with tracemalloc.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from fraudlite.errors import ConfigError
from fraudlite.monitoring.outcomes import BYTES_PER_ENTRY, OUTCOMES, LabelJoin, outcome_index

DAY = 86_400


def ids(lo: int, hi: int) -> list[str]:
    return [f"tx{i:08d}" for i in range(lo, hi)]


def test_outcome_index_is_alerted_against_the_label():
    alerted = np.array([True, True, False, False])
    label = np.array([1, 0, 1, 0])
    assert [OUTCOMES[i] for i in outcome_index(alerted, label)] == list(OUTCOMES)


def test_each_label_finds_its_decision_once_and_counts_by_version():
    rng = np.random.default_rng(0)
    n = 1000
    tx = ids(0, n)
    alerted = rng.random(n) < 0.1
    label = (rng.random(n) < 0.05).astype(np.int8)
    join = LabelJoin(capacity=10_000, horizon_s=30 * DAY)
    join.add(tx[:600], np.full(600, 100), alerted[:600], "v1")
    join.add(tx[600:], np.full(400, 200), alerted[600:], "v2")  # hot swap: another version decides
    assert len(join) == n
    order = rng.permutation(n)
    labels_tx = [tx[i] for i in order] + ["unknown", ""]
    labels = np.concatenate([label[order], [1, 0]])
    found = join.match(labels_tx, labels)
    expected: dict[tuple[str, str], int] = {}
    for i in range(n):
        key = (
            "v1" if i < 600 else "v2",
            OUTCOMES[int(outcome_index(alerted[i : i + 1], label[i : i + 1])[0])],
        )
        expected[key] = expected.get(key, 0) + 1
    assert found.outcomes == expected
    assert found.matched == n and found.shadow_outcomes == {}
    assert found.unmatched.tolist() == [n, n + 1]
    assert len(join) == 0, "matched decisions are dropped"
    again = join.match(tx[:3], label[:3])  # a second label for the same transaction finds nothing
    assert again.matched == 0 and again.unmatched.tolist() == [0, 1, 2]


def test_shadow_outcomes_count_the_shadow_alert_under_its_version():
    join = LabelJoin(capacity=100, horizon_s=DAY)
    join.add(["a", "b", "c"], np.array([1, 2, 3]), np.array([True, False, False]), "v1",
             np.array([False, True, False]), "shadow-1")  # fmt: skip
    join.add(["d"], np.array([4]), np.array([True]), "v1")  # scored before the shadow came
    found = join.match(["a", "b", "c", "d"], np.array([1, 1, 0, 0]))
    assert found.outcomes == {
        ("v1", "true_positive"): 1, ("v1", "false_negative"): 1, ("v1", "true_negative"): 1,
        ("v1", "false_positive"): 1,
    }  # fmt: skip
    assert found.shadow_outcomes == {
        ("shadow-1", "false_negative"): 1, ("shadow-1", "true_positive"): 1, ("shadow-1", "true_negative"): 1,
    }  # fmt: skip


def test_a_decision_made_again_counts_as_its_latest():
    join = LabelJoin(capacity=100, horizon_s=DAY)
    join.add(["a"], np.array([10]), np.array([False]), "v1")
    join.add(["a"], np.array([11]), np.array([True]), "v2")  # re-scored (e.g. at-least-once replay)
    assert len(join) == 1
    assert join.match(["a"], np.array([1])).outcomes == {("v2", "true_positive"): 1}
    # twice in one batch: the last decision counts, one ring slot (capacity 2 keeps both b and c)
    small = LabelJoin(capacity=2, horizon_s=DAY)
    small.add(["b", "c", "b"], np.array([1, 2, 3]), np.array([False, False, True]), "v1")
    assert len(small) == 2 and small.evicted["capacity"] == 0
    assert small.match(["b", "c"], np.array([1, 0])).outcomes == {
        ("v1", "true_positive"): 1, ("v1", "true_negative"): 1,
    }  # fmt: skip


def test_capacity_evicts_the_oldest_first():
    join = LabelJoin(capacity=100, horizon_s=10**9)
    evicted = [join.add(ids(b, b + 70), np.arange(b, b + 70), np.zeros(70, bool), "v")["capacity"]
               for b in range(0, 210, 70)]  # fmt: skip
    assert evicted == [0, 40, 70] and join.evicted == {"capacity": 110, "horizon": 0}
    assert len(join) == 100
    found = join.match(ids(0, 210), np.zeros(210, np.int8))
    assert found.unmatched.tolist() == list(range(110)), "exactly the 110 oldest were dropped"
    # one batch larger than the whole capacity keeps only its newest decisions
    big = LabelJoin(capacity=50, horizon_s=10**9)
    big.add(ids(0, 120), np.arange(120), np.zeros(120, bool), "v")
    assert len(big) == 50 and big.evicted["capacity"] == 70
    assert big.match(ids(0, 120), np.zeros(120, np.int8)).unmatched.tolist() == list(range(70))


def test_horizon_evicts_decisions_older_than_the_newest_by_more_than_it():
    join = LabelJoin(capacity=1000, horizon_s=5 * DAY)
    join.add(ids(0, 10), np.full(10, 0), np.zeros(10, bool), "v")
    join.add(ids(10, 20), np.full(10, 3 * DAY), np.zeros(10, bool), "v")
    assert len(join) == 20
    out = join.add(ids(20, 30), np.full(10, 6 * DAY), np.zeros(10, bool), "v")
    assert out == {"capacity": 0, "horizon": 10} and len(join) == 20
    found = join.match(ids(0, 30), np.zeros(30, np.int8))
    assert found.unmatched.tolist() == list(range(10)) and found.matched == 20
    # matched decisions leave the dict at once; their ring slots go with the horizon, uncounted
    join.add(ids(30, 31), np.full(1, 20 * DAY), np.zeros(1, bool), "v")
    assert join.evicted["horizon"] == 10 and len(join) == 1


class Reference:
    """The rules of LabelJoin, written plainly: an insertion-ordered dict of (tx, ts) and a list of slots."""

    def __init__(self, capacity: int, horizon_s: int) -> None:
        self.capacity, self.horizon_s = capacity, horizon_s
        self.slots: list[tuple[str, int]] = []  # insertion order, including matched ones
        self.held: dict[str, bool] = {}
        self.newest: int | None = None

    def add(self, tx: list[str], ts: list[int], alerted: list[bool]) -> None:
        for t, s, a in zip(tx, ts, alerted, strict=True):
            if t not in self.held:
                self.slots.append((t, s))
            self.held[t] = a
        while len(self.slots) > self.capacity:
            self.held.pop(self.slots.pop(0)[0], None)
        self.newest = max(ts) if self.newest is None else max(self.newest, max(ts))
        while self.slots and self.slots[0][1] < self.newest - self.horizon_s:
            self.held.pop(self.slots.pop(0)[0], None)

    def match(self, tx: list[str]) -> list[bool | None]:
        return [self.held.pop(t, None) for t in tx]


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_agree_with_the_reference_rules(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(5, 9000))
    horizon = int(rng.integers(50, 400))
    join, ref = LabelJoin(capacity, horizon), Reference(capacity, horizon)
    clock, next_id = 0, 0
    for _ in range(120):
        if rng.random() < 0.6:
            k = int(rng.integers(1, 600))
            fresh = rng.random(k) < 0.9
            tx = []
            for f in fresh:  # mostly new ids, some repeated (a decision made again)
                if f or next_id == 0:
                    tx.append(f"t{next_id}")
                    next_id += 1
                else:
                    tx.append(f"t{int(rng.integers(0, next_id))}")
            ts = (clock + rng.integers(0, 20, k)).tolist()  # slightly out of order, like partitions
            clock += int(rng.integers(0, 30))
            alerted = (rng.random(k) < 0.3).tolist()
            join.add(tx, np.array(ts), np.array(alerted), "v")
            ref.add(tx, ts, alerted)
        else:
            tx = [f"t{int(i)}" for i in rng.integers(0, max(next_id, 1), int(rng.integers(1, 300)))]
            expected = ref.match(tx)
            found = join.match(tx, np.ones(len(tx), np.int8))
            assert found.unmatched.tolist() == [i for i, e in enumerate(expected) if e is None]
            tp = sum(1 for e in expected if e is True)
            assert found.outcomes.get(("v", "true_positive"), 0) == tp
            assert found.outcomes.get(("v", "false_negative"), 0) == sum(1 for e in expected if e is False)
        assert len(join) == len(ref.held)
    assert len(join) <= capacity


def test_bytes_per_decision_measured():
    """Held bytes per decision (10-character tx ids) while filling and at steady state (full, evicting,
    some decisions matched by labels), measured with tracemalloc; ``nbytes`` agrees within 10%. 100 000
    entries is where the dict's power-of-two table is emptiest after deletions (the worst case)."""
    n = 100_000
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        join = LabelJoin(capacity=n, horizon_s=10**9)
        for b in range(0, n, 2000):
            join.add(ids(b, b + 2000), np.arange(b, b + 2000), np.zeros(2000, bool), "v1")
        gc.collect()
        filling = (tracemalloc.get_traced_memory()[0] - base) / n
        for b in range(n, 4 * n, 2000):
            join.add(ids(b, b + 2000), np.arange(b, b + 2000), np.zeros(2000, bool), "v1")
            if b % 6000 == 0:  # some decisions get their label, most are evicted
                join.match(ids(b - n // 2, b - n // 2 + 1000), np.zeros(1000, np.int8))
        gc.collect()
        steady = (tracemalloc.get_traced_memory()[0] - base) / n
        estimate = join.nbytes / n
    finally:
        tracemalloc.stop()
    print(f"bytes per decision: filling {filling:.1f}, steady {steady:.1f}, nbytes estimate {estimate:.1f}")
    assert 60 < filling <= BYTES_PER_ENTRY and steady <= BYTES_PER_ENTRY
    assert abs(estimate - steady) <= 0.1 * steady


def test_bad_bounds_are_config_errors():
    with pytest.raises(ConfigError, match="capacity"):
        LabelJoin(capacity=0)
    with pytest.raises(ConfigError, match="horizon"):
        LabelJoin(horizon_s=0)
