"""What training stores for production monitoring: the score calibration, the drift reference and the
alert threshold of an alert budget (``manifest["monitoring"]``, read by ``compression.served``).

Platt scaling is fitted with scikit-learn (a one-feature logistic regression on the raw score's logit);
applying it is ``monitoring.calibration.Platt`` (numpy, in serving).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.monitoring.budget import budget_threshold, parse_alert_budget, per_1k
from fraudlite.monitoring.calibration import Platt, expected_calibration_error, reliability_bins
from fraudlite.monitoring.reference import Reference

__all__ = [
    "fit_platt",
    "Monitoring",
    "monitoring_for",
    "reference_rows",
    "reliability_plot",
    "REFERENCE_ROWS",
]

logger = logging.getLogger(__name__)

REFERENCE_ROWS = 200_000  # training rows the feature reference is counted on (a fixed-seed sample)


def reference_rows(mask: np.ndarray, n: int = REFERENCE_ROWS) -> np.ndarray:
    """Sorted indices of at most ``n`` rows of ``mask`` (a fixed-seed sample) to count the reference on."""
    rows = np.flatnonzero(mask)
    return np.sort(np.random.default_rng(0).permutation(rows)[:n])


def fit_platt(raw: np.ndarray, y: np.ndarray) -> Platt:
    """Platt scaling of raw scores to the labels ``y`` (maximum likelihood; no regularization to speak of).

    Raises:
        ConfigError: a single class, or a fit that would not be increasing.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise ConfigError("calibration needs both classes in the validation window")
    s = np.clip(np.asarray(raw, np.float64), 1e-7, 1 - 1e-7)
    logit = (np.log(s) - np.log1p(-s)).reshape(-1, 1)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit, y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not a > 0:
        raise ConfigError(f"calibration: the scores do not rank the labels (Platt slope {a:.3g})")
    return Platt(a, b)


@dataclass(frozen=True)
class Monitoring:
    """The ``monitoring`` record of a manifest, and what training reports about it."""

    calibration: Platt
    reference: Reference
    alert_budget_per_1k: float | None
    report: dict  # ECE before/after and the reliability bins, for metrics.json

    def record(self) -> dict:
        out = {"calibration": self.calibration.record(), "reference": self.reference.encode()}
        if self.alert_budget_per_1k is not None:
            out["alert_budget_per_1k"] = round(self.alert_budget_per_1k, 6)
        return out


def monitoring_for(
    raw_valid: np.ndarray,
    y_valid: np.ndarray,
    X_train: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    valid_days: int,
    alert_budget: str | None = None,
    reference_features: Reference | None = None,
) -> tuple[Monitoring, np.ndarray, float | None]:
    """Calibration, reference and alert budget of a model from its validation scores.

    Args:
        raw_valid, y_valid: the model's raw validation scores and labels.
        X_train: training features for the feature reference (``X[reference_rows(train)]``); ignored
            when ``reference_features`` gives it already (recompression keeps the source's).
        mean, std: the model's normalization.
        valid_days: days in the validation window (a per-day budget becomes per 1,000 transactions).
        alert_budget: ``--alert-budget`` text, or None.

    Returns:
        (monitoring, calibrated validation scores, the budget's alert threshold or None).
    """
    platt = fit_platt(raw_valid, y_valid)
    calibrated = platt(raw_valid)
    if reference_features is None:
        ref = Reference.fit(X_train, mean, std, calibrated)
    else:
        ref = reference_features.with_scores(calibrated)
    budget = alert_threshold = None
    if alert_budget is not None:
        value, unit = parse_alert_budget(alert_budget)
        budget = per_1k(value, unit, len(raw_valid) / max(valid_days, 1))
        alert_threshold = budget_threshold(calibrated, budget)
    report = {
        "ece_raw": round(expected_calibration_error(raw_valid, y_valid), 6),
        "ece_calibrated": round(expected_calibration_error(calibrated, y_valid), 6),
        "reliability_raw": reliability_bins(raw_valid, y_valid),
        "reliability_calibrated": reliability_bins(calibrated, y_valid),
        "method": "platt",
    }
    logger.info(
        "calibration: ECE on validation %.4f raw -> %.4f calibrated",
        report["ece_raw"],
        report["ece_calibrated"],
    )
    return Monitoring(platt, ref, budget, report), calibrated, alert_threshold


def reliability_plot(report: dict, path: Path, title: str = "validation window") -> None:
    """A reliability diagram (fraud rate against mean score per bin) of raw and calibrated scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    for key, color, name in (
        ("reliability_raw", "tab:red", "raw"),
        ("reliability_calibrated", "tab:blue", "calibrated"),
    ):
        bins = report[key]
        ece = report["ece_raw" if key.endswith("raw") else "ece_calibrated"]
        ax.plot([b["mean_score"] for b in bins], [b["fraud_rate"] for b in bins], "o-", color=color,
                label=f"{name} (ECE {ece:.4f})")  # fmt: skip
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("fraud rate in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({title})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
