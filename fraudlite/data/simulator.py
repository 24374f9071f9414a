"""Vectorized transaction simulator: customers, terminals, daily rhythms and tagged fraud scenarios.

The world is a square of side ``area_size``. Customers live at random home locations, each with a
spending profile (mean/std amount, transactions per day) and the terminals within ``terminal_radius`` of
home (every customer gets at least its nearest terminal). Each customer has favourite terminals among
them (a skewed choice), so "a terminal new to this card" is a meaningful signal. Transactions follow a
day/night rhythm (most in the day, ``night_share`` between 00:00 and 06:00) and a weekday/weekend rhythm.

Fraud scenarios (the ``scenario`` column; ``"legit"`` for label 0):

* ``compromised_terminal``: every transaction at a terminal is fraudulent for ``compromised_terminal_days``;
  amounts are unchanged, so only the terminal's (label-delayed) fraud history reveals it.
* ``compromised_card``: over ``compromised_card_days`` a share of a card's usual transactions are fraudulent
  with inflated amounts; only the card's own amount history reveals it.
* ``card_testing``: a burst of tiny amounts seconds apart at one unfamiliar terminal, then a few large
  amounts at other unfamiliar terminals (velocity, time since previous, new terminal).
* ``account_takeover``: a card suddenly used several times in a few hours at terminals far from home that
  it never used, at amounts a few times its usual (new terminal, velocity, amount ratio).
* ``high_amount``: outlier amounts far above any legitimate spending (amount alone).
* ``drift_night_small`` (only with ``drift_day``): from that day on, short night-time sequences of
  small/moderate amounts at terminals new to the card, a pattern absent from earlier data.

Extra attributes (``extra_attributes``, ``generate --extra-attributes``; ``fraudlite.data.attributes``
describes them): ``mcc``, ``channel``, ``country``, ``card_present``, ``entry_mode``,
``device_score`` and ``merchant_id`` columns after the core ones, in which ``compromised_card``,
``card_testing`` and ``account_takeover`` leave a trace the core columns do not show (more online, high
device scores, abroad, riskier merchant codes, stripe clones), and ``compromised_terminal`` only one:
stripe clones (``entry_mode`` ``magstripe``) in about half of its transactions.

Every part draws from its own child of ``SeedSequence(seed)``, so a config always gives the same
DataFrame; setting ``drift_day`` adds the drift rows without changing any other row, and
``extra_attributes`` adds columns without changing the others. All work is
vectorized numpy; the only Python loops run per customer id string or a few rejection-sampling rounds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from fraudlite.data.attributes import ATTRIBUTE_COLUMNS, draw_attributes
from fraudlite.data.simulator_config import SimulatorConfig

__all__ = [
    "SimulatorConfig",
    "simulate",
    "LEGIT",
    "SCENARIOS",
    "DRIFT_SCENARIO",
    "COLUMNS",
    "ATTRIBUTE_COLUMNS",
]

logger = logging.getLogger(__name__)

LEGIT = "legit"
DRIFT_SCENARIO = "drift_night_small"
SCENARIOS = (
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "account_takeover",
    "high_amount",
    DRIFT_SCENARIO,
)
COLUMNS = ("tx_id", "timestamp", "customer_id", "terminal_id", "amount", "label", "scenario")

_NAMES = (LEGIT, *SCENARIOS)
_CODE = {name: np.int8(i) for i, name in enumerate(_NAMES)}
_DAY = 86_400
_HOUR = 3_600
_NIGHT_HOURS = 6
# Relative activity per hour: night hours 00-05 (scaled to ``night_share``), then 06-23.
_NIGHT_PROFILE = np.array([4.0, 3.0, 2.0, 1.0, 1.0, 2.0])
_DAY_PROFILE = np.array([2, 4, 6, 7, 8, 9, 10, 9, 8, 8, 9, 10, 10, 9, 7, 5, 3, 2], dtype=np.float64)
_STREAMS = (
    "population",
    "legit",
    "compromised_terminal",
    "compromised_card",
    "high_amount",
    "card_testing",
    "account_takeover",
    "drift",
    "attributes",  # last: spawning one more child leaves the others' seeds as they were
)


@dataclass(frozen=True)
class _Population:
    """Customers and terminals. ``nbr_ptr``/``nbr_idx``: CSR of each customer's nearby terminals."""

    cust_xy: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    term_xy: np.ndarray
    nbr_ptr: np.ndarray
    nbr_idx: np.ndarray


@dataclass
class _Tx:
    """Transactions as columns; ``t`` is seconds since ``start_date`` 00:00, ``scenario`` a code."""

    t: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    scenario: np.ndarray

    @classmethod
    def concat(cls, parts: list[_Tx]) -> _Tx:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, keep: np.ndarray) -> _Tx:
        return _Tx(*(getattr(self, f.name)[keep] for f in fields(self)))


def simulate(config: SimulatorConfig, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Simulate transactions with tagged fraud.

    Args:
        config: the simulation settings.
        progress: called with a short message at each milestone, if given.

    Returns:
        DataFrame with columns ``COLUMNS``: ``tx_id`` (int64, 0..n-1 in time order), ``timestamp``
        (datetime64[ns], naive UTC, whole seconds), ``customer_id``, ``terminal_id`` (str), ``amount``
        (float64 cents, > 0), ``label`` (int8), ``scenario`` (str), sorted by timestamp; with
        ``config.extra_attributes`` followed by ``ATTRIBUTE_COLUMNS`` (``fraudlite.data.attributes``).
    """
    say = progress or (lambda _msg: None)
    seeds = np.random.SeedSequence(config.seed).spawn(len(_STREAMS))
    rngs = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seeds, strict=True)}
    pop = _population(config, rngs["population"])
    say(f"population: {config.n_customers} customers, {config.n_terminals} terminals")
    legit = _legit(config, pop, rngs["legit"])
    say(f"legit transactions: {legit.t.size}")
    _compromise_terminals(config, rngs["compromised_terminal"], legit)
    _compromise_cards(config, rngs["compromised_card"], legit)
    _high_amounts(config, rngs["high_amount"], legit)
    parts = [
        legit,
        _card_testing(config, pop, rngs["card_testing"]),
        _account_takeover(config, pop, rngs["account_takeover"]),
    ]
    if config.drift_day is not None:
        parts.append(_drift_night_small(config, pop, rngs["drift"], config.drift_day))
    tx = _Tx.concat(parts)
    tx = tx.take(tx.t < config.n_days * _DAY)
    say(f"fraud scenarios applied: {int((tx.scenario != 0).sum())} fraudulent of {tx.t.size}")
    tx = tx.take(np.argsort(tx.t, kind="stable"))
    frame = _to_frame(config, tx)
    if config.extra_attributes:
        extra = draw_attributes(
            rngs["attributes"],
            config.n_customers,
            config.n_terminals,
            config.n_days,
            tx.customer,
            tx.terminal,
            tx.t // _DAY,
            tx.scenario,
            _NAMES,
        )
        frame = frame.assign(**{name: extra[name] for name in ATTRIBUTE_COLUMNS})
        say(f"extra attributes: {', '.join(ATTRIBUTE_COLUMNS)}")
    say(f"done: {len(frame)} transactions")
    return frame


# --- population --------------------------------------------------------------------------------------


def _population(cfg: SimulatorConfig, rng: np.random.Generator) -> _Population:
    cust_xy = rng.uniform(0, cfg.area_size, (cfg.n_customers, 2))
    term_xy = rng.uniform(0, cfg.area_size, (cfg.n_terminals, 2))
    mean_amount = rng.uniform(5, 100, cfg.n_customers)
    std_amount = mean_amount * rng.uniform(0.2, 0.6, cfg.n_customers)
    tx_per_day = cfg.mean_tx_per_day * rng.uniform(0.1, 1.9, cfg.n_customers)
    ptr, idx = _nearby_terminals(cust_xy, term_xy, cfg.terminal_radius, cfg.area_size, rng)
    return _Population(cust_xy, mean_amount, std_amount, tx_per_day, term_xy, ptr, idx)


def _nearby_terminals(
    cust_xy: np.ndarray, term_xy: np.ndarray, radius: float, area: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of terminals within ``radius`` of each customer, shuffled per customer.

    Terminals are bucketed in a grid of ``radius``-sized cells, so only the 3x3 cells around a home are
    compared. A customer with no terminal in range gets its nearest one.
    """
    n_cust = len(cust_xy)
    g = max(1, math.ceil(area / radius))
    t_cell = _cell(term_xy, radius, g)
    t_order = np.argsort(t_cell[:, 0] * g + t_cell[:, 1], kind="stable")
    flat = (t_cell[:, 0] * g + t_cell[:, 1])[t_order]
    c_cell = _cell(cust_xy, radius, g)
    offsets = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
    cand = c_cell[:, None, :] + offsets[None, :, :]  # (customers, 9, 2)
    valid = ((cand >= 0) & (cand < g)).all(axis=2)
    cand_flat = cand[..., 0] * g + cand[..., 1]
    lo = np.searchsorted(flat, cand_flat, side="left")
    hi = np.searchsorted(flat, cand_flat, side="right")
    length = np.where(valid, hi - lo, 0).ravel()
    pos = _ranges(lo.ravel(), length)
    cust = np.repeat(np.repeat(np.arange(n_cust), 9), length)
    term = t_order[pos]
    d2 = ((cust_xy[cust] - term_xy[term]) ** 2).sum(axis=1)
    keep = d2 <= radius * radius
    cust, term = cust[keep], term[keep]
    lonely = np.setdiff1d(np.arange(n_cust), cust)
    if lonely.size:
        cust = np.concatenate([cust, lonely])
        term = np.concatenate([term, _nearest(cust_xy[lonely], term_xy)])
    order = np.lexsort((rng.random(cust.size), cust))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(cust, minlength=n_cust))])
    return ptr, term[order]


def _cell(xy: np.ndarray, size: float, g: int) -> np.ndarray:
    return np.clip((xy // size).astype(np.int64), 0, g - 1)


def _ranges(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), without a Python loop."""
    total = int(length.sum())
    first = np.cumsum(length) - length
    return np.arange(total) - np.repeat(first - start, length)


def _nearest(points: np.ndarray, term_xy: np.ndarray, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Index of the nearest terminal to each point (brute force in bounded-memory chunks)."""
    step = max(1, chunk_cells // len(term_xy))
    out = [
        ((points[i : i + step, None, :] - term_xy[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        for i in range(0, len(points), step)
    ]
    return np.concatenate(out)


# --- legitimate traffic ------------------------------------------------------------------------------


def _day_factors(cfg: SimulatorConfig) -> np.ndarray:
    """Rate multiplier per day: weekends get ``weekend_factor``; the weekly mean is 1."""
    weekday = (dt.date.fromisoformat(cfg.start_date).weekday() + np.arange(cfg.n_days)) % 7
    norm = 7.0 / (5.0 + 2.0 * cfg.weekend_factor)
    return np.where(weekday >= 5, cfg.weekend_factor * norm, norm)


def _seconds_of_day(rng: np.random.Generator, n: int, night_share: float) -> np.ndarray:
    """Random seconds of the day following the day/night rhythm."""
    night = _NIGHT_PROFILE / _NIGHT_PROFILE.sum() * night_share
    day = _DAY_PROFILE / _DAY_PROFILE.sum() * (1.0 - night_share)
    hour = rng.choice(24, size=n, p=np.concatenate([night, day]))
    return hour * _HOUR + rng.integers(0, _HOUR, n)


def _legit(cfg: SimulatorConfig, pop: _Population, rng: np.random.Generator) -> _Tx:
    """Poisson transactions per customer and day, at favourite nearby terminals, profile amounts."""
    lam = pop.tx_per_day[:, None] * _day_factors(cfg)[None, :]
    counts = rng.poisson(lam).ravel()
    cust = np.repeat(np.repeat(np.arange(cfg.n_customers), cfg.n_days), counts)
    day = np.repeat(np.tile(np.arange(cfg.n_days), cfg.n_customers), counts)
    t = day * _DAY + _seconds_of_day(rng, cust.size, cfg.night_share)
    degree = np.diff(pop.nbr_ptr)[cust]
    k = np.minimum((degree * rng.random(cust.size) ** cfg.terminal_skew).astype(np.int64), degree - 1)
    terminal = pop.nbr_idx[pop.nbr_ptr[cust] + k]
    mean = pop.mean_amount[cust]
    amount = rng.normal(mean, pop.std_amount[cust])
    low = amount < 0.01  # a rare negative draw becomes a uniform one below twice the mean
    amount[low] = rng.uniform(0.01, 2 * mean[low])
    return _Tx(t, cust, terminal, amount, np.zeros(cust.size, dtype=np.int8))


# --- fraud that relabels legitimate transactions -----------------------------------------------------


def _windows(
    rng: np.random.Generator, rate: float, n_entities: int, n_days: int, duration: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random (entity, start day) compromise windows of ``duration`` days, stationary over the period.

    Windows may start before day 0 so the first days carry the same fraud load as the rest.
    """
    n = rng.poisson(rate * n_entities * (n_days + duration - 1))
    entity = rng.integers(0, n_entities, n)
    start = rng.integers(-(duration - 1), n_days, n)
    return entity, start


def _in_windows(
    entity: np.ndarray, day: np.ndarray, w_entity: np.ndarray, w_start: np.ndarray, duration: int
) -> np.ndarray:
    """Boolean mask of rows whose (entity, day) falls in any window [start, start + duration)."""
    span = int(max(day.max(initial=0), (w_start + duration).max(initial=0))) + duration + 2
    shift = duration  # keeps keys non-negative for windows starting before day 0
    key = entity.astype(np.int64) * span + day + shift
    order = np.argsort(key, kind="stable")
    skey = key[order]
    lo = np.searchsorted(skey, w_entity * span + w_start + shift, side="left")
    hi = np.searchsorted(skey, w_entity * span + w_start + duration + shift, side="left")
    diff = np.zeros(key.size + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    mask = np.empty(key.size, dtype=bool)
    mask[order] = np.cumsum(diff[:-1]) > 0
    return mask


def _compromise_terminals(cfg: SimulatorConfig, rng: np.random.Generator, tx: _Tx) -> None:
    """Every still-legit transaction at a compromised terminal during its window becomes fraud."""
    dur = cfg.compromised_terminal_days
    w_term, w_start = _windows(rng, cfg.compromised_terminal_rate, cfg.n_terminals, cfg.n_days, dur)
    hit = _in_windows(tx.terminal, tx.t // _DAY, w_term, w_start, dur) & (tx.scenario == 0)
    tx.scenario[hit] = _CODE["compromised_terminal"]


def _compromise_cards(cfg: SimulatorConfig, rng: np.random.Generator, tx: _Tx) -> None:
    """A share of a compromised card's transactions in its window become fraud with 2-5x amounts."""
    dur = cfg.compromised_card_days
    w_cust, w_start = _windows(rng, cfg.compromised_card_rate, cfg.n_customers, cfg.n_days, dur)
    in_window = _in_windows(tx.customer, tx.t // _DAY, w_cust, w_start, dur)
    hit = in_window & (rng.random(tx.t.size) < cfg.compromised_card_share) & (tx.scenario == 0)
    tx.scenario[hit] = _CODE["compromised_card"]
    tx.amount[hit] *= rng.uniform(2.0, 5.0, int(hit.sum()))


def _high_amounts(cfg: SimulatorConfig, rng: np.random.Generator, tx: _Tx) -> None:
    """A random share of still-legit transactions become outliers of 1000-3000."""
    hit = (rng.random(tx.t.size) < cfg.high_amount_share) & (tx.scenario == 0)
    tx.scenario[hit] = _CODE["high_amount"]
    tx.amount[hit] = rng.uniform(1000.0, 3000.0, int(hit.sum()))


# --- fraud that injects new transactions -------------------------------------------------------------


def _events(
    rng: np.random.Generator, rate: float, n_customers: int, first_day: int, n_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson number of (customer, day) events over days ``first_day .. n_days-1``."""
    active = n_days - first_day
    n = rng.poisson(rate * n_customers * active)
    return rng.integers(0, n_customers, n), rng.integers(first_day, n_days, n)


def _event_rows(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For events of the given sizes (>= 1): each row's event index and position within the event."""
    event = np.repeat(np.arange(sizes.size), sizes)
    first = np.cumsum(sizes) - sizes
    return event, np.arange(event.size) - first[event]


def _offsets(gaps: np.ndarray, event: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Seconds since the event's first row, from per-row gaps (the first row's gap is ignored)."""
    csum = np.cumsum(np.where(pos == 0, 0, gaps))
    return csum - csum[pos == 0][event]


def _far_terminals(
    rng: np.random.Generator, pop: _Population, customers: np.ndarray, min_distance: float, rounds: int = 32
) -> np.ndarray:
    """Random terminals at least ``min_distance`` from each customer's home (rejection sampling).

    If the world has no such terminal for a customer, the last draw is kept.
    """
    n_term = len(pop.term_xy)
    term = rng.integers(0, n_term, customers.size)
    for _ in range(rounds):
        d2 = ((pop.cust_xy[customers] - pop.term_xy[term]) ** 2).sum(axis=1)
        bad = np.flatnonzero(d2 < min_distance * min_distance)
        if bad.size == 0:
            break
        term[bad] = rng.integers(0, n_term, bad.size)
    return term


def _card_testing(cfg: SimulatorConfig, pop: _Population, rng: np.random.Generator) -> _Tx:
    """3-8 tiny amounts seconds apart at one unfamiliar terminal, then 1-3 large ones elsewhere."""
    cust, day = _events(rng, cfg.card_testing_rate, cfg.n_customers, 0, cfg.n_days)
    n_tiny = rng.integers(3, 9, cust.size)
    n_large = rng.integers(1, 4, cust.size)
    event, pos = _event_rows(n_tiny + n_large)
    tiny = pos < n_tiny[event]
    rows = event.size
    gaps = np.where(tiny, rng.integers(5, 91, rows), rng.integers(120, 1800, rows))
    gaps = np.where(pos == n_tiny[event], rng.integers(600, 3 * _HOUR, rows), gaps)
    start = day * _DAY + rng.integers(0, _DAY, cust.size)
    t = start[event] + _offsets(gaps, event, pos)
    test_terminal = _far_terminals(rng, pop, cust, 2 * cfg.terminal_radius)
    terminal = np.where(
        tiny, test_terminal[event], _far_terminals(rng, pop, cust[event], 2 * cfg.terminal_radius)
    )
    amount = np.where(tiny, rng.uniform(0.1, 2.0, rows), rng.uniform(150.0, 1000.0, rows))
    return _Tx(t, cust[event], terminal, amount, np.full(rows, _CODE["card_testing"]))


def _account_takeover(cfg: SimulatorConfig, pop: _Population, rng: np.random.Generator) -> _Tx:
    """3-8 transactions within hours at far-away terminals, at 1.5-4x the card's usual amount."""
    cust, day = _events(rng, cfg.account_takeover_rate, cfg.n_customers, 0, cfg.n_days)
    event, pos = _event_rows(rng.integers(3, 9, cust.size))
    rows = event.size
    gaps = rng.integers(5 * 60, 90 * 60, rows)
    start = day * _DAY + _seconds_of_day(rng, cust.size, cfg.night_share)
    t = start[event] + _offsets(gaps, event, pos)
    c = cust[event]
    terminal = _far_terminals(rng, pop, c, cfg.far_distance)
    amount = pop.mean_amount[c] * rng.uniform(1.5, 4.0, rows)
    return _Tx(t, c, terminal, amount, np.full(rows, _CODE["account_takeover"]))


def _drift_night_small(
    cfg: SimulatorConfig, pop: _Population, rng: np.random.Generator, first_day: int
) -> _Tx:
    """From ``first_day``: 3-6 small/moderate night transactions minutes apart at terminals new to the card."""
    cust, day = _events(rng, cfg.drift_rate, cfg.n_customers, first_day, cfg.n_days)
    event, pos = _event_rows(rng.integers(3, 7, cust.size))
    rows = event.size
    gaps = rng.integers(3 * 60, 20 * 60, rows)
    start = day * _DAY + rng.integers(0, int(3.5 * _HOUR), cust.size)
    t = start[event] + _offsets(gaps, event, pos)
    c = cust[event]
    terminal = _far_terminals(rng, pop, c, 2 * cfg.terminal_radius)
    amount = rng.uniform(5.0, 40.0, rows)
    return _Tx(t, c, terminal, amount, np.full(rows, _CODE[DRIFT_SCENARIO]))


# --- output ------------------------------------------------------------------------------------------


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _to_frame(cfg: SimulatorConfig, tx: _Tx) -> pd.DataFrame:
    """Number the rows (``tx`` is sorted by time) and build the public DataFrame."""
    seconds = cfg.start_epoch + tx.t.astype(np.int64)
    amount = np.maximum(np.round(tx.amount, 2), 0.01)
    return pd.DataFrame(
        {
            "tx_id": np.arange(tx.t.size, dtype=np.int64),
            "timestamp": (seconds * 1_000_000_000).astype("datetime64[ns]"),
            "customer_id": pd.Series(_ids("C", cfg.n_customers)[tx.customer], dtype="str"),
            "terminal_id": pd.Series(_ids("T", cfg.n_terminals)[tx.terminal], dtype="str"),
            "amount": amount.astype(np.float64),
            "label": (tx.scenario != 0).astype(np.int8),
            "scenario": pd.Series(np.array(_NAMES, dtype=object)[tx.scenario], dtype="str"),
        }
    )
