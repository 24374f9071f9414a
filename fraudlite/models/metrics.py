"""Fraud-detection metrics: pure numpy, no torch/sklearn (usable anywhere).

Definitions follow the Fraud Detection Handbook (Le Borgne et al.): ROC AUC and average precision over
transactions; Card Precision@k per day over cards ranked by their highest score, with cards already
detected on earlier days removed, averaged over days.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "roc_auc",
    "average_precision",
    "card_precision_at_k",
    "recall_at_budget",
    "fraud_metrics",
    "choose_thresholds",
]


def _distinct_threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct score, scores descending (ties grouped)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_group]
    fp = (last_of_group + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def _check(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    return y, s


def roc_auc(y, s) -> float:
    """Area under the ROC curve (ties count half); NaN if only one class is present."""
    y, s = _check(y, s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tp, fp = _distinct_threshold_counts(y, s)
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    return float(np.trapezoid(tpr, fpr))


def average_precision(y, s) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision; NaN without positives."""
    y, s = _check(y, s)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tp, fp = _distinct_threshold_counts(y, s)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0.0, tp / n_pos])
    return float(np.sum(recall_step * precision))


def card_precision_at_k(day, card, y, s, k: int = 100) -> float:
    """Mean over days of the share of true compromised cards among the day's top-k cards.

    Args:
        day: integer day of each transaction.
        card: card (customer) code of each transaction.
        y, s: labels and scores per transaction.
        k: daily alert budget in cards.

    Returns:
        The mean daily precision (a day with fewer than k cards still divides by k, as investigators
        have k slots); NaN for no days.
    """
    day = np.asarray(day)
    card = np.asarray(card)
    y, s = _check(y, s)
    detected: set = set()
    precisions = []
    for d in np.unique(day):
        m = day == d
        cards, inv = np.unique(card[m], return_inverse=True)
        card_score = np.full(len(cards), -np.inf)
        np.maximum.at(card_score, inv, s[m])
        card_fraud = np.zeros(len(cards), dtype=bool)
        np.logical_or.at(card_fraud, inv, y[m] == 1)
        keep = (
            np.array([c not in detected for c in cards], dtype=bool)
            if detected
            else np.ones(len(cards), bool)
        )
        cards, card_score, card_fraud = cards[keep], card_score[keep], card_fraud[keep]
        top = np.argsort(-card_score, kind="mergesort")[:k]
        precisions.append(card_fraud[top].sum() / k)
        detected.update(cards[top][card_fraud[top]].tolist())
    return float(np.mean(precisions)) if precisions else float("nan")


def recall_at_budget(y, s, budget: float = 0.01) -> float:
    """Share of frauds among the top ``budget`` fraction of transactions by score."""
    y, s = _check(y, s)
    n_pos = int(y.sum())
    if n_pos == 0 or len(y) == 0:
        return float("nan")
    n_alerts = max(1, int(round(budget * len(y))))
    top = np.argsort(-s, kind="mergesort")[:n_alerts]
    return float(y[top].sum() / n_pos)


def fraud_metrics(day, card, y, s, k: int = 100, budget: float = 0.01) -> dict:
    """All headline metrics in one dict (keys are part of the CLI contract)."""
    y_arr = np.asarray(y)
    return {
        "roc_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        f"card_precision_at_{k}": card_precision_at_k(day, card, y, s, k),
        f"recall_at_{budget:g}_budget": recall_at_budget(y, s, budget),
        "n": int(len(y_arr)),
        "n_fraud": int(np.sum(y_arr)),
    }


def choose_thresholds(y, s, alert_precision: float = 0.9) -> tuple[float, float]:
    """Decision threshold maximizing F1, and a stricter alert threshold reaching ``alert_precision``.

    Returns:
        (threshold, alert_threshold); the alert threshold is never below the decision threshold and falls
        back to it when no threshold reaches the precision.
    """
    y, s = _check(y, s)
    if y.sum() == 0:
        return 0.5, 0.5
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp, fp = _distinct_threshold_counts(y, s)
    thresholds = np.unique(s_sorted)[::-1]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0
    )
    threshold = float(thresholds[int(np.argmax(f1))])
    ok = np.flatnonzero((precision >= alert_precision) & (thresholds >= threshold))
    alert = float(thresholds[ok[-1]]) if len(ok) else threshold
    return threshold, max(alert, threshold)
