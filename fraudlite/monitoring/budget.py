"""Alert budgets: an investigation team can look at so many alerts; the alert threshold follows.

``--alert-budget N`` is alerts per 1,000 transactions; ``N/day`` is alerts per day, turned into per 1,000
with the validation window's transactions per day. The threshold is the validation score above which
that share of transactions lies; serving exports the budget so the live alert rate can be watched.
"""

from __future__ import annotations

import re

import numpy as np

from fraudlite.errors import ConfigError

__all__ = ["parse_alert_budget", "per_1k", "budget_threshold"]

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(/\s*(1k|day))?\s*$")


def parse_alert_budget(text: str) -> tuple[float, str]:
    """``"2.5"`` or ``"2.5/1k"`` -> (2.5, "1k"); ``"300/day"`` -> (300.0, "day").

    Raises:
        ConfigError: names the flag and the accepted forms.
    """
    m = _BUDGET.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(
            f"--alert-budget: expected a positive number of alerts per 1,000 transactions (e.g. 2.5 or 2.5/1k) "
            f"or per day (e.g. 300/day), got {text!r}"
        )
    return float(m.group(1)), m.group(3) or "1k"


def per_1k(value: float, unit: str, transactions_per_day: float) -> float:
    """A budget in alerts per 1,000 transactions."""
    if unit == "1k":
        return value
    if transactions_per_day <= 0:
        raise ConfigError("--alert-budget per day needs a validation window with transactions")
    return 1000.0 * value / transactions_per_day


def budget_threshold(scores: np.ndarray, alerts_per_1k: float) -> float:
    """The lowest threshold at which at most ``alerts_per_1k`` of every 1,000 ``scores`` are >= it.

    Raises:
        ConfigError: a budget of 1,000 or more per 1,000 (everything alerts), or no scores.
    """
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if not len(s):
        raise ConfigError("an alert budget needs validation scores")
    if not 0 < alerts_per_1k < 1000:
        raise ConfigError(f"--alert-budget must be below 1,000 per 1,000 transactions, got {alerts_per_1k:g}")
    k = int(np.floor(len(s) * alerts_per_1k / 1000))  # alerts allowed on the validation window
    if k == 0:
        return float(np.nextafter(np.float32(s[0]), np.float32(np.inf)))  # not even the top score alerts
    # the k-th highest score, raised past ties with the (k+1)-th so no more than k alert
    kth, nxt = s[k - 1], s[k] if k < len(s) else -np.inf
    return float(kth if kth > nxt else np.nextafter(np.float32(kth), np.float32(np.inf)))
