"""TransactionDecoder: valid rows as columns, every invalid message with a reason, never an exception;
LabelDecoder: labels with the ids that join them to decisions."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudlite.features.extras import ExtraColumn, canonical_values
from fraudlite.features.offline import amount_to_cents
from fraudlite.kafkaio.wire import (
    REASONS,
    DecodedBatch,
    DecodeLimits,
    LabelDecoder,
    TransactionDecoder,
    _Transaction,
    base_reason,
    timestamp_seconds,
)

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def tx(**over) -> bytes:
    msg = {"tx_id": "t1", "timestamp": T0_MS, "customer_id": "c1", "terminal_id": "m1", "amount": 12.34}
    msg.update(over)
    msg = {k: v for k, v in msg.items() if v is not ...}
    return json.dumps(msg).encode()


def reasons(values, limits=None) -> list[str]:
    return [r for _, r in TransactionDecoder(limits).decode(values).invalid]


def test_valid_rows_become_columns():
    values = [
        tx(tx_id="a", timestamp=T0_MS + 1999, amount=1.005),
        tx(tx_id=7, customer_id=42, terminal_id=9, timestamp="2026-01-01T00:00:05Z", amount=3),
        tx(tx_id="c", timestamp="2026-01-01T01:00:00+01:00", amount=0, extra={"x": [1, 2]}),
        tx(tx_id="d", timestamp="2026-01-01 00:00:07.900", amount=99.995),
        tx(tx_id="e", timestamp=str(T0_MS + 8000)),
    ]
    out = TransactionDecoder().decode(values)
    assert out.invalid == []
    assert out.index.tolist() == [0, 1, 2, 3, 4]
    assert out.ts.dtype == np.int64 and out.amount_cents.dtype == np.int64
    t0 = T0_MS // 1000
    assert out.ts.tolist() == [t0 + 1, t0 + 5, t0, t0 + 7, t0 + 8]
    assert out.tx_id == ["a", "7", "c", "d", "e"]
    assert out.customer_id[1] == "42" and out.terminal_id[1] == "9"
    expected = amount_to_cents([1.005, 3, 0, 99.995, 12.34]).tolist()
    assert out.amount_cents.tolist() == expected


def test_each_reason():
    limits = DecodeLimits(max_message_bytes=200, max_id_chars=8, max_amount=1000.0)
    cases = {
        None: "empty",
        b"": "empty",
        tx(pad="x" * 300): "oversize",
        b'{"tx_id": "\xff\xfe"}': "not_utf8",
        b"{not json": "bad_json",
        b'{"tx_id":"a","timestamp":1,"customer_id":"c","terminal_id":"t","amount":1} trailing': "bad_json",
        b"[1, 2]": "not_object",
        b'"just a string"': "not_object",
        tx(amount=...): "missing_field",
        tx(customer_id=None): "bad_type",
        tx(amount="12.00"): "bad_type",
        tx(tx_id=1.5): "bad_type",
        tx(amount=True): "bad_type",
        tx(customer_id=""): "bad_id",
        tx(terminal_id="x" * 9): "bad_id",
        tx(tx_id=10**20): "bad_id",
        tx(amount=float("nan")): "bad_amount",
        tx(amount=float("inf")): "bad_amount",
        b'{"tx_id":"a","timestamp":1767225600000,"customer_id":"c","terminal_id":"t","amount":1e999}': "bad_amount",
        tx(amount=-0.01): "bad_amount",
        tx(amount=1000.01): "bad_amount",
        tx(amount=10**60): "bad_amount",
        tx(timestamp="yesterday"): "bad_timestamp",
        tx(timestamp=1000): "bad_timestamp",
        tx(timestamp="2150-01-01T00:00:00Z"): "bad_timestamp",
        tx(timestamp=10**30): "bad_timestamp",
        tx(timestamp=float("-inf")): "bad_timestamp",
    }
    values = [tx()] + list(cases) + [tx(tx_id="last")]
    out = TransactionDecoder(limits).decode(values)
    assert out.index.tolist() == [0, len(values) - 1]
    assert out.tx_id == ["t1", "last"]
    got = dict(out.invalid)
    assert sorted(got) == list(range(1, len(values) - 1))
    for i, (value, reason) in enumerate(cases.items(), start=1):
        assert got[i] == reason, (value, got[i], reason)
    assert set(got.values()) == set(REASONS)


def test_integers_beyond_float_and_int64_range():
    values = [tx(amount=10**400), tx(timestamp=10**400), tx(customer_id=10**400), tx()]
    assert reasons(values) == ["bad_amount", "bad_timestamp", "bad_id"]


def test_empty_batch():
    out = TransactionDecoder().decode([])
    assert len(out) == 0 and out.invalid == [] and out.ts.dtype == np.int64


def test_timestamp_seconds_floors():
    assert timestamp_seconds(-1) == -1
    assert timestamp_seconds(1999) == 1
    assert timestamp_seconds(1999.9) == 1
    assert timestamp_seconds("1970-01-01T00:00:01.999Z") == 1
    assert timestamp_seconds(True) is None
    assert timestamp_seconds("") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    st.integers(min_value=0, max_value=2 * T0_MS),
    st.floats(allow_nan=True),
    st.text(max_size=40),
)
near_valid = st.fixed_dictionaries(
    {},
    optional={k: field_values for k in ("tx_id", "timestamp", "customer_id", "terminal_id", "amount")},
).map(lambda d: json.dumps(d).encode())
garbage = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid,
    st.builds(lambda a, b: a[: len(a) // 2] + b, near_valid, st.binary(max_size=20)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage, max_size=25))
def test_garbage_never_raises_and_every_message_is_accounted_for(values):
    batch = [tx(tx_id="ok-first")] + values + [tx(tx_id="ok-last")]
    out = TransactionDecoder(DecodeLimits(max_message_bytes=256)).decode(batch)
    positions = out.index.tolist() + [i for i, _ in out.invalid]
    assert sorted(positions) == list(range(len(batch)))
    assert {r for _, r in out.invalid} <= set(REASONS)
    assert out.tx_id[0] == "ok-first" and out.tx_id[-1] == "ok-last"
    n = len(out)
    assert len(out.ts) == len(out.customer_id) == len(out.terminal_id) == len(out.amount_cents) == n
    assert (out.amount_cents >= 0).all()
    assert all(0 < len(x) <= 128 for x in out.customer_id + out.terminal_id + out.tx_id)


# -- labels ---------------------------------------------------------------------------------------------


def label(**over) -> bytes:
    msg = {"tx_id": "t1", "customer_id": "c1", "terminal_id": "m1", "timestamp": T0_MS, "label": 1}
    msg.update(over)
    return json.dumps({k: v for k, v in msg.items() if v is not ...}).encode()


def test_labels_keep_tx_and_customer_ids_for_the_join():
    values = [
        label(),
        label(tx_id=7, customer_id=42, label=0),  # integer ids, as the transaction decoder converts them
        label(tx_id=..., customer_id=...),  # no ids: still a label for the terminal table
        label(tx_id=[1], customer_id=True),  # unusable ids: the same
        label(tx_id="x" * 129),  # longer than max_id_chars
        label(label=2),  # invalid label: dropped with its ids
        b"not json",
    ]
    out = LabelDecoder().decode(values)
    assert out.n_invalid == 2 and len(out) == 5
    assert out.tx_id == ["t1", "7", "", "", ""]
    assert out.customer_id == ["c1", "42", "", "", "c1"]
    assert out.label.tolist() == [1, 0, 1, 1, 1] and out.terminal_id == ["m1"] * 5
    part = out.take(np.array([1, 4]))
    assert (part.tx_id, part.customer_id, part.label.tolist(), part.ts.tolist()) == (
        ["7", ""], ["42", "c1"], [0, 1], [T0_MS // 1000] * 2,
    )  # fmt: skip


# -- extra columns (issue 17) ---------------------------------------------------------------------------

EXTRAS = (
    ExtraColumn("channel", "categorical", vocabulary=("atm", "pos")),
    ExtraColumn("device.score", "numeric", fill=0.5),
    ExtraColumn("card_present", "bool"),
)


def xtx(**over) -> bytes:
    return tx(**{"channel": "pos", "device.score": 0.25, "card_present": True, **over})


def test_extra_fields_become_canonical_columns():
    values = [
        xtx(),
        xtx(channel=None, **{"device.score": None}, card_present="YES"),
        xtx(channel=..., **{"device.score": ...}, card_present=0),  # absent: missing (bool: 0 is given)
        xtx(channel=5, **{"device.score": 3}, card_present="no", other={"ignored": [1, 2]}),
        xtx(channel=5.0, card_present=" t "),
    ]
    out = TransactionDecoder(extras=EXTRAS).decode(values)
    assert out.invalid == [] and len(out) == 5
    assert out.extras["channel"].tolist() == ["pos", "", "", "5", "5"]
    np.testing.assert_array_equal(out.extras["device.score"], [0.25, np.nan, np.nan, 3.0, 0.25])
    assert out.extras["device.score"].dtype == np.float64
    assert out.extras["card_present"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    # the same values as the offline path makes of them
    for c in EXTRAS:
        raw = [json.loads(v).get(c.name) for v in values]
        np.testing.assert_array_equal(out.extras[c.name], canonical_values(c, raw)[0])


def test_each_bad_extra_field_is_named_in_its_reason():
    cases = {
        xtx(**{"device.score": "0.3"}): "bad_type:device.score",
        xtx(**{"device.score": True}): "bad_type:device.score",
        xtx(**{"device.score": [0.3]}): "bad_type:device.score",
        xtx(**{"device.score": {"v": 1}}): "bad_type:device.score",
        xtx(**{"device.score": 10**400}): "bad_type:device.score",  # beyond float range
        xtx(**{"device.score": 1e39}): "bad_type:device.score",  # beyond float32: no model input holds it
        xtx().replace(b"0.25", b"1e999"): "bad_type:device.score",
        xtx().replace(b"0.25", b"NaN"): "bad_type:device.score",  # not JSON (null is the missing value)
        xtx(card_present="maybe"): "bad_type:card_present",
        xtx(card_present=2): "bad_type:card_present",
        xtx(card_present=[True]): "bad_type:card_present",
        xtx(card_present=None): "missing_field:card_present",
        xtx(card_present=...): "missing_field:card_present",
        xtx(card_present=""): "missing_field:card_present",
        xtx(channel=["pos"]): "bad_type:channel",
        xtx(channel={"a": "pos"}): "bad_type:channel",
        xtx(channel=..., card_present="maybe", **{"device.score": "x"}): "bad_type:device.score",  # first
        xtx(amount="12", card_present="maybe"): "bad_type",  # a core field's reason first, unnamed
        xtx(amount=-1, card_present="maybe"): "bad_amount",
        xtx(customer_id="", channel=[1]): "bad_id",
        tx(): "missing_field:card_present",  # a message without the extra fields
    }
    values = [xtx(tx_id="first")] + list(cases) + [xtx(tx_id="last")]
    out = TransactionDecoder(extras=EXTRAS).decode(values)
    assert out.tx_id == ["first", "last"] and out.index.tolist() == [0, len(values) - 1]
    got = dict(out.invalid)
    for i, (value, reason) in enumerate(cases.items(), start=1):
        assert got[i] == reason, (value, got[i], reason)
    assert {base_reason(r) for r in got.values()} <= set(REASONS)
    assert base_reason("bad_type:device.score") == "bad_type" and base_reason("bad_id") == "bad_id"
    assert out.extras["channel"].tolist() == ["pos", "pos"]
    assert xtx(channel=10**400) not in cases  # a long integer is still a category
    assert TransactionDecoder(extras=EXTRAS).decode([xtx(channel=10**400)]).extras["channel"][0] == str(
        10**400
    )


def test_split_and_concat_keep_the_extras_aligned():
    decoder = TransactionDecoder(extras=EXTRAS)
    values = [xtx(tx_id=f"t{i}", channel=f"c{i}", **{"device.score": i / 10}) for i in range(6)]
    values[2] = xtx(card_present="maybe")  # an invalid one in the middle
    out = decoder.decode(values)
    head, tail = out.split(3)
    assert head.tx_id == ["t0", "t1"] and head.extras["channel"].tolist() == ["c0", "c1"]
    assert tail.tx_id == ["t3", "t4", "t5"] and tail.extras["device.score"].tolist() == [0.3, 0.4, 0.5]
    joined = DecodedBatch.concat(decoder.decode(values[:3]), decoder.decode(values[3:]), 3)
    assert joined.invalid == out.invalid == [(2, "bad_type:card_present")]
    for name in out.extras:
        np.testing.assert_array_equal(joined.extras[name], out.extras[name])
    empty = decoder.decode([])
    assert {k: v.tolist() for k, v in empty.extras.items()} == {c.name: [] for c in EXTRAS}
    assert DecodedBatch.concat(empty, out, 0).extras["channel"].tolist() == out.extras["channel"].tolist()


def test_without_extras_the_decoder_is_the_plain_one():
    plain = TransactionDecoder()
    assert plain.extras == () and plain._decode.__self__.type is _Transaction
    out = plain.decode([xtx(card_present="maybe", **{"device.score": "x"}), tx(channel=[1])])
    assert out.invalid == [] and out.extras == {} and len(out) == 2
    head, tail = out.split(1)
    assert head.extras == tail.extras == DecodedBatch.concat(head, tail, 1).extras == {}


def test_nesting_deeper_than_the_parser_follows_is_bad_json():
    deep = tx()[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for decoder in (TransactionDecoder(), TransactionDecoder(extras=EXTRAS)):
        assert [r for _, r in decoder.decode([deep, xtx()]).invalid] == ["bad_json"]
    assert LabelDecoder().decode([deep]).n_invalid == 1


extra_values = st.one_of(json_values, st.sampled_from(["yes", "no", "", " T ", "pos", "0042"]))
near_valid_extras = st.fixed_dictionaries({}, optional={c.name: extra_values for c in EXTRAS}).map(
    lambda d: xtx(**{**{c.name: ... for c in EXTRAS}, **d})
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(garbage, near_valid_extras), max_size=25))
def test_garbage_in_extra_fields_never_raises(values):
    batch = [xtx(tx_id="ok-first")] + values + [xtx(tx_id="ok-last")]
    out = TransactionDecoder(DecodeLimits(max_message_bytes=512), extras=EXTRAS).decode(batch)
    positions = out.index.tolist() + [i for i, _ in out.invalid]
    assert sorted(positions) == list(range(len(batch)))
    assert {base_reason(r) for _, r in out.invalid} <= set(REASONS)
    assert all(r.partition(":")[2] in ("", *(c.name for c in EXTRAS)) for _, r in out.invalid)
    assert out.tx_id[0] == "ok-first" and out.tx_id[-1] == "ok-last"
    assert all(len(v) == len(out) for v in out.extras.values())
    assert not np.isnan(out.extras["card_present"]).any()
    assert all(type(v) is str for v in out.extras["channel"])
