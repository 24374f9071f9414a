"""The simulator's extra attributes (``generate --extra-attributes``): a bank's own signals beside the core.

Seven columns, drawn after everything else from their own random stream, so that the core columns, the
label and the scenario are the same with or without them:

* ``mcc`` (categorical, 4-digit text): the merchant category code, fixed per merchant (so per terminal);
  20 codes with realistic shares (``MCCS``: 5411 grocery, 5812 restaurants, 5541 fuel, 6011 ATM cash,
  5999 miscellaneous retail, 4829 money transfer, 5732 electronics, 5967 direct marketing, 7995
  gambling, ...). Each code has its own channel mix: a fuel station is card-present only, a streaming
  service card-not-present only, a clothing shop sells online too.
* ``channel`` (categorical): ``pos``, ``ecom``, ``atm`` or ``moto`` (mail / telephone order), per
  transaction, from the merchant's channel mix; customers differ in how much they shop online.
* ``country`` (categorical, ISO-2): where the transaction is acquired. Customers have a home country
  (mostly ``DE``); card-present transactions are at home except on trips (a few per customer and year,
  days to two weeks, to a holiday destination); online ones are sometimes with a foreign merchant (IE,
  LU, US, ...).
* ``card_present`` (bool): true for ``pos`` and ``atm``, false for ``ecom`` and ``moto``.
* ``entry_mode`` (categorical): how the card was read (the ISO 8583 POS entry mode, simplified):
  ``chip``, ``contactless`` or ``magstripe`` when the card is present, ``keyed`` when it is not.
  Legitimate stripe reads are rare (~1.5%, more at the few old terminals that still fall back to it);
  a cloned card carries only the stripe, so counterfeit use shows as ``magstripe``.
* ``device_score`` (numeric 0..1, 3 decimals): the device / authentication risk score of a
  card-not-present transaction (the browser or app fingerprint for ``ecom``, the call-centre check for
  ``moto``); missing exactly when the card is present. Mostly low, but some customers often get high
  scores (new phones, VPNs), so legitimate high scores are common enough.
* ``merchant_id`` (high-cardinality categorical): the terminal's merchant, one per 3-5 terminals, so
  many hundreds of values: a model hashes it into buckets.

Traces of the fraud scenarios (``TRACES``), all of them tilts of overlapping distributions, not labels:

* ``compromised_card``: the stolen card details are used mostly online: card-not-present channels
  ~6x as likely as for the card's owner (where the merchant sells online), high device scores in about
  half of them, a foreign country in ~30%. The core columns show only the inflated amounts.
* ``card_testing``: almost always online where the merchant allows it, high device scores in ~3/4,
  often foreign; the merchants testers pick skew to direct marketing, miscellaneous retail, money
  transfer, gambling and streaming (part of the merchants they hit get such a code).
* ``account_takeover``: more online and ATM, a new device (high score) in ~70%, foreign in ~half;
  the merchants skew to money transfer, electronics and gambling.
* ``high_amount``, ``drift_night_small``: mild tilts (somewhat more online, foreign, high scores).
* ``compromised_terminal``: card-present channels only (where the merchant has them), country and
  device as the customer's own; but the cards used there are stripe clones in ~half of the
  transactions (``entry_mode`` ``magstripe``), the rest chip reads through the tampered device.
* ``compromised_card``: a stripe clone in ~30% of its card-present transactions; ``account_takeover``
  ~20%.

Pure numpy (text columns built through pyarrow when it is there: much faster than Python strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "EXTRA_COLUMNS_ARG",
    "CHANNELS",
    "CARD_PRESENT_CHANNELS",
    "ENTRY_MODES",
    "MCCS",
    "Trace",
    "TRACES",
    "draw_attributes",
]

ATTRIBUTE_COLUMNS = ("mcc", "channel", "country", "card_present", "entry_mode", "device_score", "merchant_id")
#: The ``train --extra-columns`` value that takes all six as model inputs.
EXTRA_COLUMNS_ARG = (
    "mcc:categorical,channel:categorical,country:categorical,card_present:bool,entry_mode:categorical,"
    "device_score:numeric,merchant_id:categorical"
)
CHANNELS = ("pos", "ecom", "atm", "moto")
CARD_PRESENT_CHANNELS = ("pos", "atm")
ENTRY_MODES = ("chip", "contactless", "magstripe", "keyed")
_CARD_PRESENT = np.array([c in CARD_PRESENT_CHANNELS for c in CHANNELS])

#: (code, what it is, share of merchants, channel mix over ``CHANNELS``).
MCCS: tuple[tuple[str, str, float, tuple[float, float, float, float]], ...] = (
    ("5411", "grocery stores, supermarkets", 0.18, (0.93, 0.07, 0.0, 0.0)),
    ("5812", "restaurants", 0.11, (0.92, 0.08, 0.0, 0.0)),
    ("5814", "fast food", 0.07, (0.95, 0.05, 0.0, 0.0)),
    ("5541", "fuel stations", 0.07, (1.0, 0.0, 0.0, 0.0)),
    ("6011", "cash withdrawal (ATM)", 0.06, (0.0, 0.0, 1.0, 0.0)),
    ("5912", "drug stores, pharmacies", 0.05, (0.9, 0.1, 0.0, 0.0)),
    ("5311", "department stores", 0.05, (0.75, 0.25, 0.0, 0.0)),
    ("5651", "family clothing", 0.05, (0.6, 0.4, 0.0, 0.0)),
    ("5999", "miscellaneous retail", 0.07, (0.55, 0.45, 0.0, 0.0)),
    ("5942", "book stores", 0.02, (0.5, 0.5, 0.0, 0.0)),
    ("5732", "electronics", 0.04, (0.5, 0.5, 0.0, 0.0)),
    ("4111", "local transport", 0.04, (0.8, 0.2, 0.0, 0.0)),
    ("4121", "taxis, ride hailing", 0.03, (0.4, 0.6, 0.0, 0.0)),
    ("4814", "telecom services", 0.03, (0.2, 0.7, 0.0, 0.1)),
    ("4899", "cable, streaming", 0.03, (0.0, 0.92, 0.0, 0.08)),
    ("4511", "airlines", 0.015, (0.05, 0.85, 0.0, 0.1)),
    ("7011", "hotels", 0.02, (0.5, 0.3, 0.0, 0.2)),
    ("5967", "direct marketing", 0.02, (0.0, 0.6, 0.0, 0.4)),
    ("4829", "money transfer", 0.015, (0.3, 0.7, 0.0, 0.0)),
    ("7995", "gambling", 0.015, (0.1, 0.9, 0.0, 0.0)),
)
_MCC_CODES = [m[0] for m in MCCS]
_MCC_SHARE = np.array([m[2] for m in MCCS]) / sum(m[2] for m in MCCS)
_MCC_CHANNELS = np.array([m[3] for m in MCCS])

# Countries: the customers' homes, their trips, foreign online merchants, and where fraud comes from.
_COUNTRIES = (
    *("DE", "AT", "NL", "PL", "TR", "IT", "FR", "ES", "GR", "PT", "HR", "GB", "US", "TH", "CH"),
    *("IE", "LU", "CN", "SE", "RO", "BR", "IN", "MX", "ZA", "UA", "CA"),
)
_HOME = {"DE": 0.86, "AT": 0.03, "NL": 0.02, "PL": 0.03, "TR": 0.02, "IT": 0.02, "FR": 0.02}
_TRIPS = {
    **{"ES": 0.2, "IT": 0.15, "FR": 0.12, "AT": 0.1, "NL": 0.08, "GR": 0.07, "PT": 0.05},
    **{"HR": 0.05, "TR": 0.05, "GB": 0.05, "US": 0.04, "TH": 0.02, "CH": 0.02},
}
_ONLINE_ABROAD = {"IE": 0.25, "LU": 0.2, "NL": 0.15, "GB": 0.12, "US": 0.15, "CN": 0.08, "SE": 0.05}
_FRAUD_ABROAD = dict.fromkeys(_COUNTRIES[1:], 1.0)  # anywhere but the usual home

_TRIP_RATE = 1 / 180  # trips per customer per day
_TRIP_DAYS = (2, 15)  # [low, high) days
_ONLINE_ABROAD_SHARE = 0.15
_CARD_PRESENT_ABROAD_SHARE = 0.01  # near a border, without a trip
# Online affinity levels of customers (a multiplier of the card-not-present channels), equally likely.
_ONLINE_AFFINITY = np.array([0.4, 0.7, 1.0, 1.5, 2.5])
# Device scores: a low and a high ("suspicious") Beta distribution; they overlap.
_LOW_SCORE = (1.5, 7.0)
_HIGH_SCORE = (4.0, 2.2)
_CUSTOMER_HIGH_SCORE = (0.8, 12.0)  # Beta of a customer's own share of high scores (mean ~6%)
_MERCHANT_SIZE = (3, 6)  # terminals per merchant, [low, high)
# Entry modes of a genuine card present: contactless share at a POS (none at an ATM), the stripe
# fallback share, and the few old terminals that fall back to the stripe more often.
_CONTACTLESS_POS = 0.6
_MAGSTRIPE = 0.015
_OLD_TERMINAL_SHARE, _OLD_TERMINAL_MAGSTRIPE = 0.03, 0.2


@dataclass(frozen=True)
class Trace:
    """How one scenario's transactions differ from a customer's own.

    Attributes:
        channel_tilt: multipliers of the merchant's channel mix over ``CHANNELS`` (all zero where the
            merchant has none of the tilted channels: its own mix is kept).
        own_habits: the customer's own online affinity, trips and device-score share apply (the
            customer makes the transaction).
        abroad: share of the transactions moved to a random foreign country.
        high_score: share of card-not-present transactions with a score from the high distribution
            (None: the customer's own share).
        merchant_mccs: codes that part of the merchants this scenario hits get, and that part.
        magstripe: share of card-present transactions made with a stripe clone (None: a genuine card).
    """

    channel_tilt: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    own_habits: bool = False
    abroad: float = 0.0
    high_score: float | None = None
    merchant_mccs: tuple[str, ...] = ()
    merchant_share: float = 0.0
    magstripe: float | None = None


TRACES: dict[str, Trace] = {
    "legit": Trace(own_habits=True),
    "compromised_terminal": Trace(channel_tilt=(1.0, 0.0, 1.0, 0.0), own_habits=True, magstripe=0.5),
    "compromised_card": Trace(
        channel_tilt=(1.0, 12.0, 0.3, 12.0), abroad=0.45, high_score=0.65, magstripe=0.3
    ),
    "card_testing": Trace(
        channel_tilt=(1.0, 40.0, 0.0, 10.0),
        abroad=0.4,
        high_score=0.75,
        merchant_mccs=("5967", "5999", "4829", "7995", "4899"),
        merchant_share=0.6,
    ),
    "account_takeover": Trace(
        channel_tilt=(1.0, 4.0, 1.5, 2.0),
        abroad=0.5,
        high_score=0.7,
        merchant_mccs=("4829", "5732", "7995"),
        merchant_share=0.4,
        magstripe=0.2,
    ),
    "high_amount": Trace(channel_tilt=(1.0, 2.0, 1.0, 2.0), abroad=0.15, high_score=0.3),
    "drift_night_small": Trace(channel_tilt=(1.0, 2.0, 1.0, 1.0), abroad=0.1, high_score=0.3),
}


def draw_attributes(
    rng: np.random.Generator,
    n_customers: int,
    n_terminals: int,
    n_days: int,
    customer: np.ndarray,
    terminal: np.ndarray,
    day: np.ndarray,
    scenario: np.ndarray,
    scenario_names: Sequence[str],
) -> dict[str, pd.Series | np.ndarray]:
    """The seven attribute columns (``ATTRIBUTE_COLUMNS``) of the given transactions.

    Args:
        rng: the attributes' own random stream.
        n_customers, n_terminals, n_days: the world (customer, terminal and day indices are below them).
        customer, terminal, day: per transaction, integer indices (day 0 = the first simulated day).
        scenario: per transaction, an integer code into ``scenario_names``.
        scenario_names: the scenario of each code; every one must be in ``TRACES``.

    Returns:
        name -> column: ``mcc``, ``channel``, ``country``, ``entry_mode``, ``merchant_id`` as pandas
        ``str`` Series,
        ``card_present`` bool, ``device_score`` float64 (NaN when the card is present).
    """
    unknown = sorted(set(scenario_names) - set(TRACES))
    if unknown:
        raise ValueError(f"no attribute trace for scenario(s) {unknown}")
    traces = [TRACES[name] for name in scenario_names]
    scenario = np.asarray(scenario, dtype=np.int64)
    merchant, n_merchants = _merchants(rng, n_terminals)
    merchant_mcc = _merchant_mccs(rng, n_merchants, merchant, terminal, scenario, traces)
    affinity = rng.integers(0, len(_ONLINE_AFFINITY), n_customers)
    mcc = merchant_mcc[merchant[terminal]]
    channel = _channels(rng, mcc, scenario, affinity[customer], traces)
    card_present = _CARD_PRESENT[channel]
    country = _countries(rng, n_customers, n_days, customer, day, scenario, card_present, traces)
    score = _device_scores(rng, n_customers, customer, scenario, card_present, traces)
    entry = _entry_modes(rng, n_terminals, terminal, channel, scenario, traces)  # last: the rest unchanged
    width = max(5, len(str(max(n_merchants - 1, 0))))
    return {
        "mcc": _text(_MCC_CODES, mcc),
        "channel": _text(CHANNELS, channel),
        "country": _text(_COUNTRIES, country),
        "card_present": card_present,
        "entry_mode": _text(ENTRY_MODES, entry),
        "device_score": score,
        "merchant_id": _text([f"M{i:0{width}d}" for i in range(n_merchants)], merchant[terminal]),
    }


def _merchants(rng: np.random.Generator, n_terminals: int) -> tuple[np.ndarray, int]:
    """Each terminal's merchant: terminals in random order, cut into runs of 3-5."""
    sizes = rng.integers(*_MERCHANT_SIZE, n_terminals // _MERCHANT_SIZE[0] + 1)
    ends = np.cumsum(sizes)
    run = np.searchsorted(ends, np.arange(n_terminals), side="right")
    merchant = np.empty(n_terminals, dtype=np.int64)
    merchant[rng.permutation(n_terminals)] = run
    return merchant, int(run.max(initial=-1)) + 1


def _merchant_mccs(
    rng: np.random.Generator,
    n_merchants: int,
    merchant: np.ndarray,
    terminal: np.ndarray,
    scenario: np.ndarray,
    traces: list[Trace],
) -> np.ndarray:
    """Each merchant's code: drawn by share, then part of the merchants each scenario hit get its codes."""
    mcc = rng.choice(len(MCCS), size=n_merchants, p=_MCC_SHARE)
    for code, trace in enumerate(traces):
        if not trace.merchant_mccs:
            continue
        hit = np.unique(merchant[terminal[scenario == code]])
        moved = hit[rng.random(hit.size) < trace.merchant_share]
        choices = np.array([_MCC_CODES.index(c) for c in trace.merchant_mccs])
        share = _MCC_SHARE[choices] / _MCC_SHARE[choices].sum()
        mcc[moved] = rng.choice(choices, size=moved.size, p=share)
    return mcc


def _channels(
    rng: np.random.Generator, mcc: np.ndarray, scenario: np.ndarray, affinity: np.ndarray, traces: list[Trace]
) -> np.ndarray:
    """Channel codes: one cumulative table per (mcc, scenario, affinity), one uniform draw per row."""
    n_aff = len(_ONLINE_AFFINITY)
    tilt = np.array([t.channel_tilt for t in traces])  # (scenarios, 4)
    online = np.ones((len(traces), n_aff, 4))
    own = np.array([t.own_habits for t in traces])
    online[own] = np.where(np.array([0, 1, 0, 1], dtype=bool), _ONLINE_AFFINITY[:, None], 1.0)
    p = _MCC_CHANNELS[:, None, None, :] * (tilt[:, None, :] * online)[None]  # (mcc, scen, aff, 4)
    total = p.sum(axis=3, keepdims=True)
    p = np.where(total > 0, p, _MCC_CHANNELS[:, None, None, :])
    cum = np.cumsum(p / p.sum(axis=3, keepdims=True), axis=3).reshape(-1, 4)
    key = (mcc * len(traces) + scenario) * n_aff + affinity
    u = rng.random(mcc.size)
    channel = np.zeros(mcc.size, dtype=np.int8)
    for k in range(3):  # one 1-D gather per boundary: several times faster than a (rows, 3) one
        channel += u >= cum[:, k][key]
    return channel


def _country_index(weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    codes = np.array([_COUNTRIES.index(c) for c in weights], dtype=np.int8)
    p = np.array(list(weights.values()))
    return codes, p / p.sum()


def _pick(rng: np.random.Generator, weights: dict[str, float], n: int) -> np.ndarray:
    codes, p = _country_index(weights)
    return codes[rng.choice(codes.size, size=n, p=p)]


def _countries(
    rng: np.random.Generator,
    n_customers: int,
    n_days: int,
    customer: np.ndarray,
    day: np.ndarray,
    scenario: np.ndarray,
    card_present: np.ndarray,
    traces: list[Trace],
) -> np.ndarray:
    """Country codes: home, trips (card present), foreign online merchants, then fraud abroad."""
    home = _pick(rng, _HOME, n_customers)
    trip = np.full(n_customers * n_days, -1, dtype=np.int8)
    n_trips = rng.poisson(_TRIP_RATE * n_customers * (n_days + _TRIP_DAYS[1]))
    who = rng.integers(0, n_customers, n_trips)
    start = rng.integers(-_TRIP_DAYS[1], n_days, n_trips)
    length = rng.integers(*_TRIP_DAYS, n_trips)
    where = _pick(rng, _TRIPS, n_trips)
    trip_of = np.repeat(np.arange(n_trips), length)
    trip_day = start[trip_of] + np.arange(trip_of.size) - np.repeat(np.cumsum(length) - length, length)
    inside = (trip_day >= 0) & (trip_day < n_days)
    trip[who[trip_of[inside]] * n_days + trip_day[inside]] = where[trip_of[inside]]
    n = customer.size
    country = home[customer]
    own = np.array([t.own_habits for t in traces])[scenario]
    on_trip = trip[customer * n_days + day]
    travel = own & card_present & (on_trip >= 0)
    country[travel] = on_trip[travel]
    u = rng.random(n)
    border = own & card_present & ~travel & (u < _CARD_PRESENT_ABROAD_SHARE)
    online = own & ~card_present & (u < _ONLINE_ABROAD_SHARE)
    country[border] = _pick(rng, _TRIPS, int(border.sum()))
    country[online] = _pick(rng, _ONLINE_ABROAD, int(online.sum()))
    abroad = rng.random(n) < np.array([t.abroad for t in traces])[scenario]
    moved = _pick(rng, _FRAUD_ABROAD, int(abroad.sum()))
    same = moved == home[customer[abroad]]
    moved[same] = 0  # a foreign home's card used in the bank's country
    country[abroad] = moved
    return country


def _device_scores(
    rng: np.random.Generator,
    n_customers: int,
    customer: np.ndarray,
    scenario: np.ndarray,
    card_present: np.ndarray,
    traces: list[Trace],
) -> np.ndarray:
    """Device scores of card-not-present rows (3 decimals), NaN for card-present ones."""
    own_share = rng.beta(*_CUSTOMER_HIGH_SCORE, n_customers)
    rows = np.flatnonzero(~card_present)
    fixed = np.array([-1.0 if t.high_score is None else t.high_score for t in traces])[scenario[rows]]
    share = np.where(fixed < 0, own_share[customer[rows]], fixed)
    high = rng.random(rows.size) < share
    value = np.empty(rows.size)
    value[high] = rng.beta(*_HIGH_SCORE, int(high.sum()))
    value[~high] = rng.beta(*_LOW_SCORE, int((~high).sum()))
    score = np.full(customer.size, np.nan)
    score[rows] = np.round(value, 3)
    return score


def _entry_modes(
    rng: np.random.Generator,
    n_terminals: int,
    terminal: np.ndarray,
    channel: np.ndarray,
    scenario: np.ndarray,
    traces: list[Trace],
) -> np.ndarray:
    """Codes into ``ENTRY_MODES``: keyed when the card is absent; else chip, contactless (POS only) or
    the stripe (a genuine card's fallback, more at old terminals; a clone's only choice)."""
    fallback = np.where(rng.random(n_terminals) < _OLD_TERMINAL_SHARE, _OLD_TERMINAL_MAGSTRIPE, _MAGSTRIPE)
    clone_share = np.array([-1.0 if t.magstripe is None else t.magstripe for t in traces])[scenario]
    u, v = rng.random(channel.size), rng.random(channel.size)
    clone = v < clone_share
    stripe = clone | (u < fallback[terminal])
    contactless = (channel == CHANNELS.index("pos")) & (u > 1 - _CONTACTLESS_POS) & ~stripe
    entry = np.where(stripe, 2, np.where(contactless, 1, 0)).astype(np.int8)
    entry[~_CARD_PRESENT[channel]] = ENTRY_MODES.index("keyed")
    return entry


def _text(table: Sequence[str], codes: np.ndarray) -> pd.Series:
    """Codes into a text table -> a pandas ``str`` Series (through pyarrow's take when available)."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pandas' str dtype without pyarrow
        return pd.Series(np.array(list(table), dtype=object)[codes], dtype="str")
    array = pa.array(list(table), type=pa.large_string()).take(pa.array(np.asarray(codes, dtype=np.int64)))
    return pd.Series(array, dtype="str")
