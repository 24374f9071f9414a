"""Reason codes: why the served model scored a transaction high, in words an investigator reads.

Attributions are Shapley values of the served score function itself, in the scorer its log-odds
(``ServedModel.log_odds``: calibrated, from the network's logit; the same order as the probability the
decision compares, but a float32 probability of 1.0 would make every change on a saturated alert
zero), estimated by permutation sampling against one reference point, the average
transaction (the model's training feature means, ``ServedModel.normalization()[0]``):

* a permutation of the F features walks from the reference to the row, switching one feature at a time
  to the row's value; each switch's change of the score is that feature's marginal contribution. Per
  permutation the contributions add up exactly to ``score(row) - score(reference)`` (efficiency), so
  their average over permutations does too;
* permutations come in antithetic pairs (a permutation and its reverse: a feature early in one is late
  in the other, which cancels most of the position bias), drawn from a fixed seed: the same permutations
  for every row, so a row's reasons do not depend on the batch it came in;
* every perturbed row of a call (``1 + N + N * P * (F - 1)`` rows for N rows, P permutations) is scored
  in one call of the score function: for N = 20 alerts, P = 6, F = 20, 2,301 rows, one batched call.

``top_reasons`` keeps the 1-3 largest positive contributions (at least one: the largest, should none be
positive) and writes each as ``Reason(feature, value, contribution, text)``; ``reason_text`` turns a
feature name, its value and the reference value into text from the names of ``FeatureSpec.names`` (the
name says the unit: ``customer_amount_ratio_30d`` -> "amount 5.2x this card's 30-day mean"). An unknown
name gets ``"<name> <value> (typical <reference>)"``.

Pure numpy; the score function is passed in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fraudlite.errors import ConfigError

__all__ = [
    "Reason",
    "MAX_REASONS",
    "DEFAULT_PERMUTATIONS",
    "sample_permutations",
    "shapley_values",
    "top_reasons",
    "reason_text",
    "explain_rows",
]

MAX_REASONS = 3
#: Three antithetic pairs: enough for the top reason (fidelity) on a 20-feature MLP, see bench_explain.
DEFAULT_PERMUTATIONS = 6

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason of a score: the feature (as named in the feature spec), its value in the row, its
    Shapley contribution to the score (in the score function's units: log-odds in serving) and the
    investigator's text."""

    feature: str
    value: float
    contribution: float
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def sample_permutations(n_features: int, permutations: int, seed: int = 0) -> np.ndarray:
    """``permutations`` orders of ``n_features`` features (int64 [P, F]): P/2 random ones from ``seed``,
    each followed by its reverse (antithetic pairs).

    Raises:
        ConfigError: P not a positive even number, or no features.
    """
    if n_features < 1:
        raise ConfigError("reason codes need at least one feature")
    if permutations < 2 or permutations % 2:
        raise ConfigError(f"reason codes: permutations must be a positive even number, got {permutations}")
    rng = np.random.default_rng(seed)
    half = [rng.permutation(n_features) for _ in range(permutations // 2)]
    return np.stack([p for perm in half for p in (perm, perm[::-1])]).astype(np.int64)


def shapley_values(
    score: ScoreFn,
    X: np.ndarray,
    reference: np.ndarray,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> np.ndarray:
    """Sampled Shapley values float64 [N, F] of ``score`` at the rows X [N, F] against ``reference`` [F].

    Row n's values add up to ``score(X[n]) - score(reference)`` (to float32 rounding of the scores).
    One call of ``score`` for everything (see the module docstring).
    """
    X = np.asarray(X, np.float32)
    ref = np.asarray(reference, np.float32)
    if X.ndim != 2 or ref.shape != (X.shape[1],):
        raise ConfigError(f"reason codes: rows {X.shape} and reference {ref.shape} do not match")
    n, f = X.shape
    if n == 0:
        return np.zeros((0, f))
    perms = sample_permutations(f, permutations, seed)
    p = len(perms)
    # switched[p, k, j]: feature j already holds the row's value at step k (1..F-1) of permutation p
    rank = np.empty_like(perms)
    rank[np.arange(p)[:, None], perms] = np.arange(f)[None, :]
    steps = np.arange(1, f)
    switched = rank[:, None, :] < steps[None, :, None]  # [P, F-1, F]
    interior = np.where(switched[None], X[:, None, None, :], ref)  # [N, P, F-1, F]
    rows = np.concatenate([ref[None], X, interior.reshape(-1, f)])
    s = np.asarray(score(rows), np.float64)
    if s.shape != (len(rows),):
        raise ConfigError(f"reason codes: the score function returned {s.shape} for {len(rows)} rows")
    path = np.empty((n, p, f + 1))
    path[:, :, 0] = s[0]
    path[:, :, f] = s[1 : n + 1, None]
    path[:, :, 1:f] = s[n + 1 :].reshape(n, p, f - 1)
    marginal = np.diff(path, axis=2)  # [N, P, F]: step k switched feature perms[p, k]
    phi = np.zeros((n, f))
    for i in range(p):
        phi[:, perms[i]] += marginal[:, i, :]
    return phi / p


def top_reasons(
    contributions: np.ndarray,
    X: np.ndarray,
    names: Sequence[str],
    reference: np.ndarray,
    k: int = MAX_REASONS,
) -> list[list[Reason]]:
    """Per row, the (up to) ``k`` features of largest positive contribution, largest first; a row with
    none positive gets its single largest one."""
    phi = np.asarray(contributions, np.float64)
    X = np.asarray(X, np.float64)
    ref = np.asarray(reference, np.float64)
    if phi.shape != X.shape or phi.shape[1:] != (len(names),) or ref.shape != (len(names),):
        raise ConfigError(
            f"reason codes: contributions {phi.shape}, rows {X.shape}, {len(names)} names do not match"
        )
    order = np.argsort(-phi, axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in enumerate(order.tolist()):
        keep = [j for j in idx if phi[row, j] > 0] or idx[:1]
        out.append(
            [
                Reason(
                    names[j],
                    round(float(X[row, j]), 6),
                    round(float(phi[row, j]), 6),
                    reason_text(names[j], float(X[row, j]), float(ref[j])),
                )
                for j in keep
            ]
        )
    return out


def explain_rows(
    score: ScoreFn,
    X: np.ndarray,
    reference: np.ndarray,
    names: Sequence[str],
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    k: int = MAX_REASONS,
) -> list[list[Reason]]:
    """``top_reasons`` of ``shapley_values``: the reasons of every row of X (one score call)."""
    phi = shapley_values(score, X, reference, permutations, seed)
    return top_reasons(phi, X, names, reference, k)


# -- text -------------------------------------------------------------------------------------------------

_WINDOW = re.compile(r"^(customer|terminal)_(nb_tx|avg_amount|risk|amount_ratio)_(\d+)([dhms])$")
_UNITS = {"d": ("day", 86_400), "h": ("hour", 3_600), "m": ("minute", 60), "s": ("second", 1)}


def _money(x: float) -> str:
    return f"{x:.2f}"


def _num(x: float) -> str:
    """A count or a plain number: no decimals when whole."""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.3g}"


def _pct(x: float) -> str:
    pct = 100 * x
    return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"


def _span(n: int, unit: str) -> str:
    """``7, "d"`` -> "7 days"; ``1, "h"`` -> "the last hour" style pieces."""
    word = _UNITS[unit][0]
    return f"{n} {word}{'s' if n != 1 else ''}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def reason_text(name: str, value: float, reference: float) -> str:
    """Investigator text for feature ``name`` at ``value`` (``reference``: the average transaction's)."""
    if name == "amount":
        return f"amount {_money(value)} (typical {_money(reference)})"
    if name == "log_amount":  # log1p(amount)
        return f"amount {_money(math.expm1(value))} (typical {_money(math.expm1(reference))})"
    if name == "is_night":
        return "night-time transaction" if value >= 0.5 else "daytime transaction"
    if name == "is_weekend":
        return "weekend transaction" if value >= 0.5 else "weekday transaction"
    if name == "customer_new_terminal":
        return "first use of this terminal" if value >= 0.5 else "terminal used before by this card"
    if name == "customer_log_seconds_since_prev":  # log1p(seconds); a first transaction: the largest window
        seconds, typical = math.expm1(max(value, 0.0)), _duration(math.expm1(max(reference, 0.0)))
        days = round(seconds / 86_400)
        if days >= 1 and abs(seconds - days * 86_400) < 5:  # whole days: the value of a first transaction
            return f"no earlier transaction of this card in {days} days (typical gap {typical})"
        return f"{_duration(seconds)} since this card's previous transaction (typical {typical})"
    m = _WINDOW.match(name)
    if m:
        entity, what, n, unit = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        span = _span(n, unit)
        if entity == "customer" and what == "nb_tx" and unit != "d":  # velocity: this one included
            last = f"the last {_UNITS[unit][0]}" if n == 1 else f"the last {span}"
            return f"{_num(value)} transactions of this card in {last} (typical {_num(reference)})"
        if entity == "customer" and what == "nb_tx":
            return f"{_num(value)} transactions of this card over {span} (typical {_num(reference)})"
        if entity == "customer" and what == "avg_amount":
            return f"this card's {n}-day mean amount {_money(value)} (typical {_money(reference)})"
        if entity == "customer" and what == "amount_ratio":
            return f"amount {value:.1f}x this card's {n}-day mean (typical {reference:.1f}x)"
        if entity == "terminal" and what == "risk":
            return f"terminal fraud rate over {span} {_pct(value)} (typical {_pct(reference)})"
        if entity == "terminal" and what == "nb_tx":
            return f"{_num(value)} transactions at this terminal over {span} (typical {_num(reference)})"
    return _extra_text(name, value, reference) or f"{name} {_num(value)} (typical {_num(reference)})"


def _extra_text(name: str, value: float, reference: float) -> str | None:
    """An extra column's input (``features.extras``): ``NAME=VALUE`` (one-hot), ``NAME#i`` (hashed),
    ``NAME_missing``; numeric and bool ones read as the generic ``NAME value (typical ...)``."""
    on = value >= 0.5
    column, sep, what = name.partition("=")
    if sep:
        share = f"(typical: {_pct(reference)} of transactions)"
        if what == "<other>":
            return f"{column} is a value not seen in training {share}" if on else f"{column} is a known value"
        return f"{column} is {what} {share}" if on else f"{column} is not {what} {share}"
    column, sep, bucket = name.rpartition("#")
    if sep and bucket.isdigit():
        where = f"{column} in hash bucket {bucket}"
        return (
            f"{where} (typical: {_pct(reference)} of transactions)"
            if on
            else f"{column} not in hash bucket {bucket}"
        )
    if name.endswith("_missing"):
        return f"{name[: -len('_missing')]} missing" if on else f"{name[: -len('_missing')]} present"
    return None
