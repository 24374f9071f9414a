"""Changelog of per-partition customer state: deltas, snapshots, tombstones, restore == live state."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.errors import DataError
from fraudlite.features.online import CustomerState, OnlineFeatures
from fraudlite.features.spec import FeatureSpec
from fraudlite.streaming import state_store
from fraudlite.streaming.state_store import ChangelogWriter, decode_value, restore_state

SPEC = FeatureSpec()
T0 = 1_767_225_600


def batches(n_batches: int, size: int, customers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = T0
    for _ in range(n_batches):
        ts = t + np.sort(rng.integers(0, 3 * 86400, size))
        t = int(ts[-1])
        yield (
            ts.astype(np.int64),
            [f"C{c}" for c in rng.integers(0, customers, size)],
            [f"T{m}" for m in rng.integers(0, 50, size)],
            rng.integers(100, 100_000, size).astype(np.int64),
        )


def run(writer_records, n_batches=30, size=200, customers=300, seed=0):
    """Feed batches through OnlineFeatures and a writer; returns (online, log of (key, value))."""
    online = OnlineFeatures(SPEC)
    writer = ChangelogWriter()
    log = []
    offset = 0
    for ts, cust, term, cents in batches(n_batches, size, customers, seed):
        online.compute(0, ts, cust, term, cents)
        offset += len(ts)
        log += writer_records(writer, online.state(0), cust, offset)
    return online, writer, log


def features_after(online_state, seed=99):
    """Features of one more batch (right after everything so far) from a copy of a customer state."""
    online = OnlineFeatures(SPEC)
    online.set_state(0, CustomerState.from_bytes(SPEC, online_state.to_bytes()))
    ts, cust, term, cents = next(batches(1, 300, 300, seed))
    last = int(np.max(online_state._recent)) - 1  # the state's latest timestamp
    x = online.compute(0, ts - T0 + last, cust, term, cents)
    assert (x[:, 4] > 1).any(), "the check batch must see earlier transactions in its windows"
    return x


def compact(log):
    """What log compaction keeps: the last record per key, tombstones dropped."""
    last = {}
    for key, value in log:
        last[key] = value
    return [(k, v) for k, v in last.items() if v is not None]


@pytest.mark.parametrize("min_snapshot", [10**12, 0, 50_000])
def test_restore_equals_live_state(monkeypatch, min_snapshot):
    monkeypatch.setattr(state_store, "MIN_SNAPSHOT_BYTES", min_snapshot)
    live, writer, log = run(lambda w, s, ids, off: w.records(s, ids, off))
    restored, rwriter = restore_state(SPEC, log)
    assert len(restored) == len(live.state(0))
    assert rwriter.input_offset == writer.input_offset == 30 * 200
    np.testing.assert_array_equal(features_after(restored), features_after(live.state(0)))
    # A compacted log restores to the same state.
    restored2, _ = restore_state(SPEC, compact(log))
    np.testing.assert_array_equal(features_after(restored2), features_after(live.state(0)))
    kinds = {decode_value(v)[0].kind for _, v in log if v is not None}
    if min_snapshot == 0:
        assert kinds == {state_store.SNAPSHOT}
    if min_snapshot == 10**12:
        assert kinds == {state_store.DELTA}
    if min_snapshot == 50_000:
        assert kinds == {state_store.SNAPSHOT, state_store.DELTA}
        assert any(v is None for _, v in log), "a snapshot tombstones the deltas it supersedes"
        assert len(compact(log)) < len([1 for _, v in log if v is not None])


def test_writer_continues_after_restore(monkeypatch):
    monkeypatch.setattr(state_store, "MIN_SNAPSHOT_BYTES", 50_000)
    live, _, log = run(lambda w, s, ids, off: w.records(s, ids, off), n_batches=10)
    state, writer = restore_state(SPEC, log)
    online = OnlineFeatures(SPEC)
    online.set_state(0, state)
    more = []
    offset = writer.input_offset
    for ts, cust, term, cents in batches(10, 200, 300, seed=5):
        online.compute(0, ts + 40 * 86400, cust, term, cents)
        live.compute(0, ts + 40 * 86400, cust, term, cents)
        offset += len(ts)
        more += writer.records(online.state(0), cust, offset)
    again, w2 = restore_state(SPEC, log + more)
    assert w2.input_offset == offset
    np.testing.assert_array_equal(features_after(again), features_after(live.state(0)))
    again2, _ = restore_state(SPEC, compact(log + more))
    np.testing.assert_array_equal(features_after(again2), features_after(live.state(0)))


def test_large_blobs_are_split_into_parts(monkeypatch):
    monkeypatch.setattr(state_store, "PART_BYTES", 10_000)
    live, _, log = run(lambda w, s, ids, off: w.records(s, ids, off), n_batches=3, size=500, customers=400)
    assert max(len(v) for _, v in log if v is not None) <= 10_000 + 64
    restored, _ = restore_state(SPEC, log)
    np.testing.assert_array_equal(features_after(restored), features_after(live.state(0)))


def test_empty_changelog_is_an_empty_state():
    state, writer = restore_state(SPEC, [])
    assert len(state) == 0 and writer.input_offset == -1


def test_corrupt_records_raise_data_error():
    _, _, log = run(lambda w, s, ids, off: w.records(s, ids, off), n_batches=2)
    key, value = log[0]
    with pytest.raises(DataError):
        restore_state(SPEC, [(key, b"garbage" * 10)])
    with pytest.raises(DataError):
        restore_state(SPEC, [(key, value[:40] + b"\x00" * 10)])
    with pytest.raises(DataError):
        restore_state(SPEC, [(None, value)])
    with pytest.raises(DataError):  # another spec
        restore_state(FeatureSpec(customer_windows=(1, 14)), log)
