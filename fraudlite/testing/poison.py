"""Poison transaction messages: hypothesis strategies, a seeded generator (benchmarks), and an oracle.

The oracle ``expected_reasons(value, limits)`` is an independent, slow, obviously-correct reading of the
message contract (docs/ARCHITECTURE.md + ``fraudlite.kafkaio.wire``): it returns the set of DLQ reasons a message
may be rejected with (several when a message breaks several rules; the decoder reports one of them), or
an empty set for a valid message.

Message kinds (``KINDS``): random bytes, invalid UTF-8, JSON of the wrong shape, wrong field types,
missing fields, bad amounts (NaN/Infinity literals, huge, negative), huge strings, oversized messages
(incl. one above Kafka's default 1 MB request size), far-future/past and unparseable timestamps, unknown
extra fields (valid), empty/null values, and valid edge cases (integer ids, ISO and digit-string times).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from fraudlite.kafkaio.wire import DecodeLimits

__all__ = [
    "KINDS",
    "expected_reasons",
    "mix_poison",
    "poison_message",
    "poison_messages",
    "render",
]

T0_MS = 1_767_225_600_000  # 2026-01-01
REQUIRED = ("tx_id", "timestamp", "customer_id", "terminal_id", "amount")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- the oracle ---------------------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _id_reason(value, limits: DecodeLimits) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "bad_type"
    text = value if isinstance(value, str) else str(value)
    return "bad_id" if not 0 < len(text) <= limits.max_id_chars else None


def _ts_seconds(value) -> int | None:
    if isinstance(value, int):
        return value // 1000
    if isinstance(value, float):
        return math.floor(value) // 1000 if math.isfinite(value) else None
    if value.isascii() and value.isdigit():
        return int(value) // 1000
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return (dt - _EPOCH) // timedelta(seconds=1)
    except OverflowError:
        return None


def _ts_reason(value, limits: DecodeLimits) -> set[str]:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return {"bad_type"}
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return {"bad_timestamp", "bad_type"}
    if isinstance(value, str) and not 0 < len(value) <= 64:
        return {"bad_timestamp"}
    s = _ts_seconds(value)
    if s is None or not limits.min_timestamp_s <= s <= limits.max_timestamp_s:
        return {"bad_timestamp"}
    return set()


def _amount_reason(value, limits: DecodeLimits) -> set[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {"bad_type"}
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return {"bad_amount", "bad_type"}
    a = float(value) if abs(value) < 1e300 else math.inf
    if not (math.isfinite(a) and 0.0 <= a <= limits.max_amount):
        return {"bad_amount"}
    return set()


def expected_reasons(value: bytes | None, limits: DecodeLimits | None = None) -> set[str]:
    """Reasons ``value`` may be rejected with; empty when it is a valid transaction message."""
    limits = limits or DecodeLimits()
    if not value:
        return {"empty"}
    if len(value) > limits.max_message_bytes:
        return {"oversize"}
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {"not_utf8"}
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return {"bad_json"}
    except ValueError:
        try:  # NaN / Infinity literals: the decoder names the field when it can
            obj = json.loads(text)
        except (ValueError, RecursionError):
            # e.g. b"0\x00": the decoder may see the leading value and say "not an object" first
            return {"bad_json", "not_object"}
        return {"bad_json", "not_object", "bad_amount", "bad_timestamp"}
    if not isinstance(obj, dict):
        return {"not_object"}
    reasons: set[str] = set()
    for name in REQUIRED:
        if name not in obj:
            reasons.add("missing_field")
    for name in ("tx_id", "customer_id", "terminal_id"):
        if name in obj and (r := _id_reason(obj[name], limits)):
            reasons.add(r)
    if "timestamp" in obj:
        reasons |= _ts_reason(obj["timestamp"], limits)
    if "amount" in obj:
        reasons |= _amount_reason(obj["amount"], limits)
    return reasons


# -- rendering ----------------------------------------------------------------------------------------------


def render(kind: str, payload, i: int) -> bytes | None:
    """Bytes of one generated message; ``{"tx_id": ...}`` placeholders get the unique id ``poison-<i>``."""
    if kind in ("bytes", "none"):
        return payload
    if not isinstance(payload, dict):
        return json.dumps(payload, allow_nan=True).encode()
    obj = dict(payload)
    if obj.get("tx_id") == "@":
        obj["tx_id"] = f"poison-{i}"
    if kind == "not_utf8":
        raw = json.dumps(obj).encode()
        cut = raw.index(b'"customer_id": "') + len(b'"customer_id": "') if b'"customer_id": "' in raw else 1
        return raw[:cut] + b"\xff\xfe\xc3(" + raw[cut:]
    if kind == "oversize":
        obj["pad"] = "x" * payload["__pad"]
        del obj["__pad"]
    return json.dumps(obj, allow_nan=True).encode()


def _valid(i: int | str = "@", **over) -> dict:
    obj = {
        "tx_id": i,
        "timestamp": T0_MS + 3_600_000,
        "customer_id": "C7",
        "terminal_id": "T3",
        "amount": 12.5,
    }
    obj.update(over)
    return obj


# -- hypothesis strategies ----------------------------------------------------------------------------------

# Text without lone surrogates: JSON escapes of those are not Unicode and the decoder rejects them as
# bad_json (test_decoder_rejects_lone_surrogates); the oracle would have to guess.
_chars = st.characters(exclude_categories=("Cs",))
_json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(_chars, max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(_chars, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_wrong_id = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(_chars, max_size=3), st.integers(), max_size=2), st.just(""),
    st.text(_chars, min_size=129, max_size=300),
    st.integers(min_value=2**64, max_value=2**80),
)  # fmt: skip
_bad_amount = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.01, -1e9, 1e300, 10_000_000.01, 2**70]),
    st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e7 + 1, allow_nan=False),
    st.text(_chars, max_size=10), st.none(), st.booleans(), st.lists(st.floats(), max_size=2),
)  # fmt: skip
_bad_ts = st.one_of(
    st.integers(max_value=946_684_800_000 - 1),  # before 2000 (incl. negative)
    st.integers(min_value=4_102_444_801_000),  # after 2100 (incl. beyond int64)
    st.sampled_from(["1900-01-01T00:00:00", "9999-12-31T23:59:59Z", "2026-13-45", "yesterday", "", "0" * 70,
                     "2026-01-01T00:00:00+25:00", "-5", math.nan, math.inf]),  # fmt: skip
    st.floats(allow_nan=False, max_value=9e11), st.text(_chars, max_size=12),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
)  # fmt: skip
_valid_edge = st.one_of(
    st.builds(
        lambda c, t: _valid(customer_id=c, terminal_id=t), st.integers(0, 10**12), st.integers(0, 10**9)
    ),
    st.builds(
        lambda d: _valid(timestamp=(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=d)).isoformat()),
        st.integers(0, 86_400 * 60),
    ),  # fmt: skip
    st.builds(lambda d: _valid(timestamp=str(T0_MS + d)), st.integers(0, 10**9)),
    st.builds(lambda a: _valid(amount=a), st.integers(0, 10_000_000) | st.floats(0, 1e7)),
)


def _kinds() -> dict[str, st.SearchStrategy]:
    return {
        "random_bytes": st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=300)),
        "empty": st.tuples(st.just("none"), st.sampled_from([None, b""])),
        "not_utf8": st.tuples(st.just("not_utf8"), st.just(_valid())),
        "wrong_shape": st.tuples(st.just("json"), _json.filter(lambda v: not isinstance(v, dict))),
        "wrong_object": st.tuples(
            st.just("json"), st.dictionaries(st.text(_chars, max_size=10), _json, max_size=5)
        ),
        "wrong_type": st.tuples(
            st.just("json"),
            st.builds(
                lambda f, v: _valid(**{f: v}),
                st.sampled_from(["tx_id", "customer_id", "terminal_id"]),
                _wrong_id,
            ),  # fmt: skip
        ),
        "missing_field": st.tuples(
            st.just("json"),
            st.sets(st.sampled_from(REQUIRED), min_size=1).map(
                lambda gone: {k: v for k, v in _valid().items() if k not in gone}
            ),
        ),
        "bad_amount": st.tuples(st.just("json"), _bad_amount.map(lambda a: _valid(amount=a))),
        "bad_timestamp": st.tuples(st.just("json"), _bad_ts.map(lambda t: _valid(timestamp=t))),
        "huge_string": st.tuples(
            st.just("json"),
            st.builds(
                lambda f, n: _valid(**{f: "z" * n}),
                st.sampled_from(["customer_id", "terminal_id", "note"]),
                st.integers(100, 15_000),
            ),  # fmt: skip
        ),
        "oversize": st.tuples(
            st.just("oversize"), st.integers(16_400, 40_000).map(lambda n: _valid(__pad=n))
        ),
        "extra_fields": st.tuples(
            st.just("json"),
            st.dictionaries(
                st.text(_chars, min_size=1, max_size=12).filter(lambda k: k not in REQUIRED),
                _json,
                min_size=1,
                max_size=5,
            ).map(lambda extra: {**extra, **_valid()}),
        ),
        "valid_edge": st.tuples(st.just("json"), _valid_edge),
    }


KINDS: tuple[str, ...] = tuple(_kinds())


def poison_message() -> st.SearchStrategy:
    """Strategy of ``(kind, payload)``; ``render(kind, payload, i)`` gives the bytes."""
    return st.one_of(*_kinds().values())


def _without(obj: dict, name: str) -> dict:
    return {k: v for k, v in obj.items() if k != name}


# -- seeded generator (no hypothesis engine; for benchmarks) -----------------------------------------------


def poison_messages(n: int, seed: int = 0, giant_every: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    """``n`` (key, value) poison messages covering every kind, deterministic per seed.

    ``giant_every`` > 0 adds a 1.5 MB value (above Kafka's default 1 MB request size) every that many.
    """
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes | None]] = []
    makers = [
        lambda i: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))),
        lambda i: None,
        lambda i: render("not_utf8", _valid(), i),
        lambda i: json.dumps([1, "a", None, {"x": 2}][: rng.randint(0, 4)]).encode(),
        lambda i: json.dumps(_valid(i=f"poison-{i}", customer_id=rng.choice([None, 1.5, [], {}, True]))).encode(),
        lambda i: json.dumps(_without(_valid(i=f"poison-{i}"), rng.choice(REQUIRED))).encode(),
        lambda i: json.dumps(_valid(i=f"poison-{i}", amount=rng.choice([math.nan, math.inf, -5.0, 1e300, 1e8]))).encode(),
        lambda i: json.dumps(_valid(i=f"poison-{i}", timestamp=rng.choice([0, -1, 10**17, "1900-01-01", "x", 9e18]))).encode(),
        lambda i: json.dumps(_valid(i=f"poison-{i}", customer_id="z" * rng.randint(129, 5000))).encode(),
        lambda i: render("oversize", _valid(i=f"poison-{i}", __pad=rng.randint(16_400, 24_000)), i),
    ]  # fmt: skip
    for i in range(n):
        if giant_every and i % giant_every == giant_every - 1:
            value = b'{"pad":"' + b"g" * (1536 * 1024) + b'"}'
        else:
            value = makers[i % len(makers)](i)
        key = None if i % 7 == 0 and value is not None else f"C{rng.randint(0, 999)}".encode()
        out.append((key, value))
    return out


def mix_poison(clean: list, poison: list) -> list:
    """``clean`` with its tail replaced by ``poison``, spread evenly (same total count)."""
    mixed = list(clean[: len(clean) - len(poison)])
    step = len(mixed) // max(len(poison), 1)
    for j, m in enumerate(poison):
        mixed.insert(j * (step + 1), m)
    return mixed
