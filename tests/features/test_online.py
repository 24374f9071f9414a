"""Online features: parity with the offline reference, batch-split invariance, snapshots, memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudlite.errors import DataError
from fraudlite.features.offline import TransactionArrays, amount_to_cents, compute_features
from fraudlite.features.online import CustomerState, OnlineFeatures, TerminalTable, customer_keys
from fraudlite.features.spec import FeatureSpec

DAY = 86_400
T0 = 20_000 * DAY
TOL = 1e-5


def make_stream(rng: np.random.Generator, n: int, customers: int = 40, terminals: int = 15, days: int = 80):
    """Time-sorted transactions mixing every edge case the windows have."""
    k = n // 8
    parts = [T0 + rng.integers(0, days * DAY, n - 3 * k)]
    # same-second ties and bursts inside an hour
    base = T0 + rng.integers(0, days * DAY, k)
    burst = np.where(
        rng.random(k) < 0.5, rng.integers(0, 3600, k), rng.choice([0, 1, 599, 600, 601, 3599, 3600, 3601], k)
    )
    parts += [base, base + burst]
    # just before / at / after midnight
    midnights = T0 + rng.integers(1, days + 1, k) * DAY
    parts.append(midnights + rng.choice([-1, 0, 1, 86_399], k))
    ts = np.sort(np.concatenate(parts))
    cust = rng.integers(0, customers, len(ts))
    # one customer with a > 30-day gap in the middle
    cust[(ts > T0 + 20 * DAY) & (ts < T0 + 55 * DAY) & (cust == 0)] = 1
    term = rng.integers(0, terminals, len(ts))
    amount = np.round(
        rng.choice([0.0, 0.01, 0.005, 1.0, 19.99, 250.5, 10_000.0], len(ts)) * rng.random(len(ts)), 3
    )
    amount[rng.random(len(ts)) < 0.2] = 0.0
    label = (rng.random(len(ts)) < 0.15).astype(np.int8)
    return {
        "ts": ts.astype(np.int64),
        "cust": np.array([f"cust-{c}" for c in cust]),
        "term": np.array([f"T{t:03d}" for t in term]),
        "amount": amount,
        "label": label,
    }


def offline(spec: FeatureSpec, s: dict) -> np.ndarray:
    tx = TransactionArrays.from_columns(spec, s["ts"], s["cust"], s["term"], s["amount"], s["label"])
    return compute_features(spec, tx)


def online(
    spec: FeatureSpec, s: dict, batches: list[int], partitions: int = 1, feed_labels: bool = True
) -> np.ndarray:
    """Replay ``s`` through OnlineFeatures in batches of the given sizes (cycled), labels fed as replay does.

    With several partitions, customers are split by key and each batch holds one partition's rows, as a
    scorer consuming a partitioned topic would see them; the terminal table is shared.
    """
    n = len(s["ts"])
    features = OnlineFeatures(spec)
    cents = amount_to_cents(s["amount"])
    part = (customer_keys(list(s["cust"])) % np.uint64(partitions)).astype(np.int64)
    release = (s["ts"] // DAY + spec.delay_days) * DAY - 1
    label_order = np.argsort(release, kind="stable")
    fed = 0
    out = np.full((n, spec.n_features), np.nan, dtype=np.float32)
    pos = 0
    k = 0
    while pos < n:
        size = batches[k % len(batches)]
        k += 1
        rows = np.arange(pos, min(n, pos + size))
        pos = rows[-1] + 1
        if feed_labels:
            # Labels released up to this batch's last transaction (earlier is harmless: features only
            # read days <= day - delay).
            stop = np.searchsorted(release[label_order], s["ts"][rows[-1]], side="right")
            j = label_order[fed:stop]
            features.terminals.add_labels(s["ts"][j], list(s["term"][j]), s["label"][j])
            fed = stop
        for p in range(partitions):
            r = rows[part[rows] == p]
            if len(r) == 0:
                continue
            out[r] = features.compute(
                p, s["ts"][r], list(s["cust"][r]), list(s["term"][r]), cents[r], update_terminals=True
            )
    return out


def assert_parity(spec: FeatureSpec, got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = diff.max(axis=0)
    bad = {name: float(w) for name, w in zip(spec.names, worst, strict=True) if w > TOL}
    assert not bad, f"online != offline: {bad}"


@pytest.mark.parametrize("batches", [[1], [7], [500], [100_000], [3, 250, 1, 64]])
def test_parity_with_offline_for_any_batch_split(batches):
    spec = FeatureSpec()
    s = make_stream(np.random.default_rng(1), 3000)
    assert_parity(spec, online(spec, s, batches), offline(spec, s))


def test_parity_across_partitions_with_a_shared_terminal_table():
    spec = FeatureSpec()
    s = make_stream(np.random.default_rng(2), 3000, customers=200)
    assert_parity(spec, online(spec, s, [128], partitions=4), offline(spec, s))


def test_parity_other_spec_parameters():
    spec = FeatureSpec(
        customer_windows=(2, 5),
        terminal_windows=(3, 10),
        delay_days=2,
        velocity_seconds=600,
        velocity_cap=3,
        bloom_bits=4,
        night_end_hour=7,
    )
    s = make_stream(np.random.default_rng(3), 2000, customers=10, terminals=40)
    assert_parity(spec, online(spec, s, [50]), offline(spec, s))


def test_parity_without_labels_terminal_risk_is_zero():
    spec = FeatureSpec()
    s = make_stream(np.random.default_rng(4), 500)
    got = online(spec, s, [100], feed_labels=False)
    s_unlabelled = dict(s, label=None)
    assert_parity(spec, got, offline(spec, s_unlabelled))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    customers=st.integers(1, 12),
    terminals=st.integers(1, 8),
    days=st.integers(1, 60),
    batch=st.lists(st.integers(1, 64), min_size=1, max_size=4),
    windows=st.sampled_from([(1, 7, 30), (1,), (3, 2), (14, 1)]),
    delay=st.integers(1, 9),
    cap=st.integers(1, 9),
    bits=st.sampled_from([1, 3, 64]),
)
def test_parity_property(seed, n, customers, terminals, days, batch, windows, delay, cap, bits):
    spec = FeatureSpec(
        customer_windows=windows,
        terminal_windows=windows,
        delay_days=delay,
        velocity_cap=cap,
        bloom_bits=bits,
    )
    s = make_stream(np.random.default_rng(seed), n, customers, terminals, days)
    assert_parity(spec, online(spec, s, batch), offline(spec, s))


def test_labels_may_lag_by_up_to_the_delay_without_changing_features():
    """Feeding each label only just before it is needed (not early) gives the same features."""
    spec = FeatureSpec(delay_days=3)
    s = make_stream(np.random.default_rng(5), 1500, days=30)
    want = offline(spec, s)
    features = OnlineFeatures(spec)
    cents = amount_to_cents(s["amount"])
    day = s["ts"] // DAY
    out = np.empty_like(want)
    fed_through = day.min() - 10**6
    for d in np.unique(day):
        # labels of transactions on days <= d - delay, fed lazily at the first transaction of day d
        need = (day <= d - spec.delay_days) & (day > fed_through)
        features.terminals.add_labels(s["ts"][need], list(s["term"][need]), s["label"][need])
        fed_through = d - spec.delay_days
        r = np.flatnonzero(day == d)
        out[r] = features.compute(0, s["ts"][r], list(s["cust"][r]), list(s["term"][r]), cents[r], True)
    assert_parity(spec, out, want)


def test_hand_computed_customer_features():
    spec = FeatureSpec(customer_windows=(1, 7), terminal_windows=(1,), delay_days=1, velocity_cap=3)
    f = OnlineFeatures(spec)
    ts = np.array([T0 + 10, T0 + 20, T0 + DAY + 5, T0 + 8 * DAY])
    x = f.compute(0, ts, ["a"] * 4, ["t"] * 4, np.array([1000, 2000, 3000, 4000]))
    col = {name: x[:, i] for i, name in enumerate(spec.names)}
    np.testing.assert_allclose(col["customer_nb_tx_1d"], [1, 2, 1, 1])
    np.testing.assert_allclose(col["customer_avg_amount_7d"], [10, 15, 20, 40])
    np.testing.assert_allclose(col["customer_nb_tx_1h"], [1, 2, 1, 1])
    np.testing.assert_allclose(col["customer_new_terminal"], [1, 0, 0, 0])
    np.testing.assert_allclose(
        col["customer_log_seconds_since_prev"], np.log1p([7 * DAY, 10, DAY - 15, 7 * DAY - 5]), rtol=1e-6
    )


def test_velocity_window_excludes_exactly_velocity_seconds_ago():
    spec = FeatureSpec(velocity_seconds=3600)
    f = OnlineFeatures(spec)
    x = f.compute(
        0, np.array([T0, T0 + 1, T0 + 3600, T0 + 3601]), ["a"] * 4, ["t"] * 4, np.ones(4, dtype=np.int64)
    )
    np.testing.assert_allclose(x[:, spec.names.index("customer_nb_tx_1h")], [1, 2, 2, 2])


def test_late_event_counts_at_the_customers_last_timestamp():
    spec = FeatureSpec()
    f = OnlineFeatures(spec)
    f.compute(0, np.array([T0 + 5 * DAY]), ["a"], ["t"], np.array([100]))
    x = f.compute(0, np.array([T0 + DAY]), ["a"], ["t"], np.array([300]))  # 4 days late
    col = {name: x[0, i] for i, name in enumerate(spec.names)}
    assert col["customer_nb_tx_1d"] == 2  # same day as the last one
    assert col["customer_log_seconds_since_prev"] == 0.0
    assert col["is_weekend"] == ((T0 // DAY + 1 + 3) % 7 >= 5)  # calendar features use its own time


def test_customers_are_isolated_per_partition():
    spec = FeatureSpec()
    f = OnlineFeatures(spec)
    f.compute(0, np.array([T0]), ["a"], ["t"], np.array([100]))
    x = f.compute(1, np.array([T0 + 1]), ["a"], ["t"], np.array([100]))
    assert x[0, spec.names.index("customer_nb_tx_1d")] == 1
    assert len(f.state(0)) == len(f.state(1)) == 1
    assert f.drop_partition(0) is not None and 0 not in f.states


def test_bad_inputs():
    f = OnlineFeatures(FeatureSpec())
    with pytest.raises(DataError, match="same length"):
        f.compute(0, np.array([T0, T0]), ["a"], ["t"], np.array([1]))
    with pytest.raises(DataError, match="timestamps"):
        f.compute(0, np.array([-5]), ["a"], ["t"], np.array([1]))
    with pytest.raises(DataError, match="labels"):
        f.terminals.add_labels(np.array([T0]), ["t"], np.array([2]))
    assert f.compute(0, np.zeros(0, dtype=np.int64), [], [], np.zeros(0)).shape == (
        0,
        FeatureSpec().n_features,
    )


# -- id index ------------------------------------------------------------------------------------------


def test_customer_keys_are_stable_and_distinct():
    ids = [f"C{i:07d}" for i in range(50_000)] + ["é", "日本", "a" * 300, ""]
    keys = customer_keys(ids)
    assert len(np.unique(keys)) == len(ids)
    # independent of the batch it is computed in (padding) and of the process
    np.testing.assert_array_equal(customer_keys(ids[-4:]), keys[-4:])
    np.testing.assert_array_equal(customer_keys(ids[-2:-1]), keys[-2:-1])
    np.testing.assert_array_equal(customer_keys(ids[:3]), keys[:3])
    code = "from fraudlite.features.online import customer_keys; print(int(customer_keys(['C0000042'])[0]))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == int(keys[42])


def test_index_grows_and_keeps_rows():
    state = CustomerState(FeatureSpec(), capacity=16)
    keys = customer_keys([f"c{i}" for i in range(50_000)])
    first = np.concatenate([state.rows(keys[i : i + 999]) for i in range(0, len(keys), 999)])
    np.testing.assert_array_equal(first, np.arange(len(keys)))
    assert len(state) == len(keys) and state.capacity >= len(keys)
    np.testing.assert_array_equal(state.rows(keys[::-1], insert=False), first[::-1])
    unknown = customer_keys(["nope", "c1"])
    np.testing.assert_array_equal(state.rows(unknown, insert=False), [-1, 1])
    # duplicates of a new key inside one call get one row
    np.testing.assert_array_equal(state.rows(customer_keys(["x", "y", "x"])), [50_000, 50_001, 50_000])


def test_state_bytes_per_customer_stay_under_256():
    spec = FeatureSpec()
    state = CustomerState(spec)
    n = 1 << 17  # a power of two is the worst case: capacity exactly full, index at half load
    keys = customer_keys([f"C{i:08d}" for i in range(n)])
    for i in range(0, n, 8192):
        state.rows(keys[i : i + 8192])
    assert len(state) == n
    assert state.nbytes / n <= 256, state.nbytes / n


# -- snapshots ------------------------------------------------------------------------------------------


def _split_run(spec, s, cut, restore):
    """Run the stream, snapshot at ``cut`` with ``restore`` (a function state -> new state), continue."""
    f = OnlineFeatures(spec)
    cents = amount_to_cents(s["amount"])
    a = slice(0, cut)
    b = slice(cut, None)
    first = f.compute(0, s["ts"][a], list(s["cust"][a]), list(s["term"][a]), cents[a], True)
    f2 = OnlineFeatures(spec, TerminalTable.from_bytes(spec, f.terminals.to_bytes()))
    f2.set_state(0, restore(f.state(0)))
    second = f2.compute(0, s["ts"][b], list(s["cust"][b]), list(s["term"][b]), cents[b], True)
    return np.concatenate([first, second])


def test_snapshot_round_trip_continues_exactly():
    spec = FeatureSpec()
    s = make_stream(np.random.default_rng(6), 2000)
    want = online(spec, s, [2000], feed_labels=False)
    got = _split_run(spec, s, 1234, lambda st: CustomerState.from_bytes(spec, st.to_bytes()))
    np.testing.assert_array_equal(got, want)


def test_export_import_rows_as_a_changelog():
    spec = FeatureSpec()
    s = make_stream(np.random.default_rng(7), 2000)
    want = online(spec, s, [2000], feed_labels=False)

    def via_changelog(state):
        restored = CustomerState(spec)
        ids = sorted(set(s["cust"][:1000]))
        # one record per customer, as a compacted changelog keyed by customer would hold
        for c in ids:
            assert restored.import_rows(state.export_rows([c])) == 1
        assert len(restored) == len(ids)
        return restored

    np.testing.assert_array_equal(_split_run(spec, s, 1000, via_changelog), want)


def test_export_skips_unknown_and_import_overwrites():
    spec = FeatureSpec()
    f = OnlineFeatures(spec)
    f.compute(0, np.array([T0, T0 + 1]), ["a", "b"], ["t", "t"], np.array([100, 200]))
    data = f.state(0).export_rows(["a", "zzz"])
    other = OnlineFeatures(spec)
    other.compute(0, np.array([T0]), ["a"], ["t"], np.array([999_999]))
    assert other.state(0).import_rows(data) == 1
    x = other.compute(0, np.array([T0 + 2]), ["a"], ["t"], np.array([100]))
    assert x[0, spec.names.index("customer_avg_amount_1d")] == pytest.approx(1.0)


def test_snapshot_rejects_garbage_and_other_specs():
    spec = FeatureSpec()
    state = CustomerState(spec)
    state.rows(customer_keys(["a"]))
    data = state.to_bytes()
    with pytest.raises(DataError, match="another feature spec"):
        CustomerState.from_bytes(FeatureSpec(customer_windows=(1, 7)), data)
    with pytest.raises(DataError):
        CustomerState.from_bytes(spec, b"not msgpack at all \xff")
    with pytest.raises(DataError):
        CustomerState.from_bytes(spec, data[:-9])
    with pytest.raises(DataError, match="not a fraudlite customer state"):
        CustomerState.from_bytes(spec, TerminalTable(spec).to_bytes())


# -- terminal table ----------------------------------------------------------------------------------------


def test_terminal_table_events_ahead_never_overwrite_needed_days():
    spec = FeatureSpec(terminal_windows=(7,), delay_days=2)
    table = TerminalTable(spec, slack_days=1)
    table.add_transactions(np.array([T0]), ["t"])
    table.add_labels(np.array([T0]), ["t"], np.array([1]))
    # a feeder far ahead of the scorer: 40 days of events beyond T0
    table.add_transactions(T0 + np.arange(1, 41) * DAY, ["t"] * 40)
    rows = table.rows(["t"])
    f = table.features(T0 // DAY + 2, rows)
    np.testing.assert_allclose(f[0], [1, 1.0])
    # scoring moves on: days before the horizon are recycled (no growth), events for them dropped
    d0 = T0 // DAY
    table.advance(d0 + 40)  # horizon = d0 + 40 - 2 - 7 + 1 - 1 = d0 + 31
    width = table._tx.shape[1]
    table.add_transactions(np.array([T0 - 5 * DAY]), ["t"])
    assert d0 - 5 not in table.days
    table.add_transactions(T0 + np.arange(41, 60) * DAY, ["t"] * 19)
    assert table._tx.shape[1] == width
    assert d0 not in table.days  # the oldest buckets were reused first
    assert set(range(d0 + 31, d0 + 60)) <= set(table.days)
    np.testing.assert_allclose(table.features(d0 + 40, rows)[0], [7, 0.0])


def test_terminal_table_round_trip_and_unknown_terminals():
    spec = FeatureSpec()
    table = TerminalTable(spec)
    table.add_transactions(T0 + np.arange(10) * DAY, [f"t{i % 3}" for i in range(10)])
    table.add_labels(np.array([T0, T0 + DAY]), ["t0", "t1"], np.array([1, 0]))
    copy = TerminalTable.from_bytes(spec, table.to_bytes())
    day = T0 // DAY + 20
    ids = ["t0", "t1", "t2", "unknown"]
    np.testing.assert_array_equal(copy.features(day, copy.rows(ids)), table.features(day, table.rows(ids)))
    assert (table.features(day, table.rows(["unknown"])) == 0).all()
    assert len(copy) == 3


def test_online_module_imports_neither_torch_nor_pandas():
    code = (
        "import sys, fraudlite.features.online as m; m.OnlineFeatures(m.FeatureSpec()); "
        "print(sorted(x for x in ('torch', 'pandas') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
