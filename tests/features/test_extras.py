"""Extra columns: parsing the flag, canonical values, fitting, encoding, the spec, offline == online."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fraudlite.errors import ConfigError, DataError
from fraudlite.features.extras import (
    DEFAULT_BUCKETS,
    ONEHOT_MAX,
    ExtraColumn,
    canonical_values,
    encode_extras,
    fit_extra_columns,
    parse_extra_columns,
    value_bucket,
)
from fraudlite.features.offline import TransactionArrays, amount_to_cents, compute_features
from fraudlite.features.online import OnlineFeatures
from fraudlite.features.spec import FeatureSpec

DAY = 86_400


def test_parse_extra_columns():
    cols = parse_extra_columns(
        "mcc:categorical, device_score:numeric,card_present:bool,merchant:categorical:128"
    )
    assert [(c.name, c.kind, c.buckets) for c in cols] == [
        ("mcc", "categorical", 0),
        ("device_score", "numeric", 0),
        ("card_present", "bool", 0),
        ("merchant", "categorical", 128),
    ]
    assert parse_extra_columns(None) == parse_extra_columns("") == ()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("mcc", "expected NAME:KIND"),
        ("mcc:text", "kind must be one of"),
        ("amount:numeric", "cannot name an extra column"),
        ("a b:numeric", "cannot name an extra column"),
        ("x:numeric,x:bool", "more than once"),
        ("x:numeric:4", "only NAME:categorical:BUCKETS"),
        ("x:categorical:1", "only NAME:categorical:BUCKETS"),
    ],
)
def test_parse_extra_columns_names_the_entry_at_fault(text, needle):
    with pytest.raises(ConfigError, match="--extra-columns") as e:
        parse_extra_columns(text)
    assert needle in str(e.value)


def test_bool_values_in_any_spelling():
    col = ExtraColumn("cp", "bool")
    values, bad = canonical_values(col, [True, False, 1, 0, "Yes", "no", "TRUE", "f", " y ", "N", 1.0])
    assert values.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1] and not bad.any()
    _, bad = canonical_values(col, ["maybe", 2, None, math.nan, "", [1]])
    assert bad.all()  # a missing bool has no sensible fill: bad, like a wrong one


def test_numeric_values_missing_and_wrong_types():
    col = ExtraColumn("d", "numeric")
    values, bad = canonical_values(col, [0.5, 3, None, math.nan, np.float32(2.5), np.int64(7)])
    assert not bad.any()
    assert values[[0, 1, 4, 5]].tolist() == [0.5, 3.0, 2.5, 7.0] and np.isnan(values[[2, 3]]).all()
    _, bad = canonical_values(col, ["0.5", True, math.inf, {"a": 1}])
    assert bad.all()  # text (in a message), a bool, an infinity, an object


def test_categorical_values_one_spelling_per_value():
    col = ExtraColumn("mcc", "categorical")
    values, bad = canonical_values(col, ["5411", 5411, 5411.0, np.int64(5411), None, math.nan, True, 2.5])
    assert values.tolist() == ["5411", "5411", "5411", "5411", "", "", "true", "2.5"] and not bad.any()
    _, bad = canonical_values(col, [[1], {"a": 1}, math.inf])
    assert bad.all()


def test_fit_one_hot_hash_and_fill():
    declared = parse_extra_columns("chan:categorical,merchant:categorical,dev:numeric,cp:bool")
    many = np.array([f"m{i}" for i in range(ONEHOT_MAX + 1)], dtype=object)
    values = {
        "chan": np.array(["pos", "ecom", "pos", ""], dtype=object),
        "merchant": many,
        "dev": np.array([1.0, np.nan, 3.0, 10.0]),
        "cp": np.array([1.0, 0.0, 1.0, 1.0]),
    }
    chan, merchant, dev, cp = fit_extra_columns(declared, values)
    assert chan.encoding == "onehot" and chan.vocabulary == ("ecom", "pos")
    assert chan.input_names == ["chan=ecom", "chan=pos", "chan=<other>"]
    assert merchant.encoding == "hash" and merchant.width == DEFAULT_BUCKETS
    assert dev.fill == 3.0 and dev.input_names == ["dev", "dev_missing"]
    assert cp.input_names == ["cp"]


@pytest.mark.parametrize(
    "kind, values, needle",
    [
        ("categorical", np.array(["a", "a", ""], dtype=object), "a single value ('a')"),
        ("bool", np.array([1.0, 1.0]), "a single value"),
        ("numeric", np.array([np.nan, np.nan]), "no values in the training window"),
    ],
)
def test_fit_refuses_columns_that_cannot_inform(kind, values, needle):
    with pytest.raises(DataError, match="column 'SRC'") as e:
        fit_extra_columns([ExtraColumn("x", kind)], {"x": values}, source={"x": "SRC"})
    assert needle in str(e.value)


def test_encode_one_hot_unseen_missing_and_hash():
    chan = ExtraColumn("chan", "categorical", vocabulary=("ecom", "pos"))
    out = chan.encode(np.array(["pos", "atm", "", "ecom"], dtype=object))
    assert out.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]]
    merchant = ExtraColumn("m", "categorical", buckets=16)
    out = merchant.encode(np.array(["a", "b", "a"], dtype=object))
    assert (out.sum(axis=1) == 1).all() and (out[0] == out[2]).all()
    assert out[1].argmax() == value_bucket("b", 16) == value_bucket("b", 16)
    dev = ExtraColumn("dev", "numeric", fill=2.0)
    assert dev.encode(np.array([5.0, np.nan])).tolist() == [[5.0, 0.0], [2.0, 1.0]]
    both = encode_extras([chan, dev], {"chan": np.array(["pos"], dtype=object), "dev": np.array([1.0])}, 1)
    assert both.tolist() == [[0, 1, 0, 1.0, 0.0]]


def test_spec_with_extras_round_trips_and_names_follow_the_builtins():
    extras = (
        ExtraColumn("chan", "categorical", vocabulary=("ecom", "pos")),
        ExtraColumn("dev", "numeric", fill=0.25),
        ExtraColumn("m", "categorical", buckets=8),
    )
    spec = FeatureSpec(extra_columns=extras)
    assert spec.names[: spec.n_builtin_features] == FeatureSpec().names
    assert spec.n_features == FeatureSpec().n_features + 3 + 2 + 8
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert "extra_columns" not in FeatureSpec().to_dict()  # specs without extras are written as before
    with pytest.raises(ConfigError):
        FeatureSpec(extra_columns=(extras[0], extras[0]))


def test_offline_equals_online_with_extras():
    rng = np.random.default_rng(3)
    n = 3000
    ts = np.sort(20_000 * DAY + rng.integers(0, 40 * DAY, n))
    cust = rng.integers(0, 50, n).astype(str)
    term = rng.integers(0, 20, n).astype(str)
    amount = np.round(rng.gamma(2.0, 30.0, n), 2)
    label = (rng.random(n) < 0.05).astype(np.int8)
    raw = {
        "chan": rng.choice(["pos", "ecom", "atm", "moto", ""], n).astype(object),
        "dev": np.where(rng.random(n) < 0.3, np.nan, rng.random(n)),
        "cp": (rng.random(n) < 0.7).astype(np.float64),
        "m": rng.integers(0, 500, n).astype(str).astype(object),
    }
    declared = parse_extra_columns("chan:categorical,dev:numeric,cp:bool,m:categorical:32")
    spec = FeatureSpec(delay_days=3, extra_columns=fit_extra_columns(declared, raw))
    offline = compute_features(spec, TransactionArrays.from_columns(spec, ts, cust, term, amount, label, raw))
    online = OnlineFeatures(spec)
    rows = []
    for s in range(0, n, 257):
        e = min(s + 257, n)
        part = {k: v[s:e] for k, v in raw.items()}
        rows.append(online.compute(0, ts[s:e], list(cust[s:e]), list(term[s:e]), amount_to_cents(amount[s:e]),
                                   update_terminals=True, extras=part))  # fmt: skip
    b = spec.n_builtin_features
    online_x = np.concatenate(rows)
    assert np.abs(offline[:, b:] - online_x[:, b:]).max() == 0.0
    assert offline.shape == online_x.shape == (n, spec.n_features)
    with pytest.raises(DataError, match="extra columns"):
        online.compute(0, ts[:1], list(cust[:1]), list(term[:1]), amount_to_cents(amount[:1]))
