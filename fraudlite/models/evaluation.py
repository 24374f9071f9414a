"""Scoring a standard frame with a model directory, and fair evaluation on a date window."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from fraudlite.data.transactions import day_of, format_day, to_arrays, window_mask
from fraudlite.errors import DataError
from fraudlite.features.offline import compute_features
from fraudlite.features.spec import FeatureSpec
from fraudlite.models.metrics import fraud_metrics

__all__ = [
    "Scorable",
    "features_for",
    "score_frame",
    "known_fraud_mask",
    "evaluate_window",
    "evaluate_scores",
]


class Scorable(Protocol):
    """A model ready to score (``fraudlite.compression.served.ServedModel``): its spec, version and scores."""

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def version(self) -> str: ...

    def score(self, features: np.ndarray) -> np.ndarray: ...


def features_for(spec: FeatureSpec, df: pd.DataFrame) -> np.ndarray:
    """Features of every row, using the whole frame's history (labels only once ``delay_days`` old)."""
    return compute_features(spec, to_arrays(spec, df))


def score_frame(model: Scorable, df: pd.DataFrame, features: np.ndarray | None = None) -> np.ndarray:
    """Fraud probability of every row (file order)."""
    if features is None:
        features = features_for(model.spec, df)
    return model.score(features)


def known_fraud_mask(df: pd.DataFrame, delay_days: int, horizon_days: int = 28) -> np.ndarray:
    """Rows of cards whose fraud was already known: a fraud label on the card at least ``delay_days`` old
    and at most ``horizon_days`` older than that.

    Such cards are blocked in practice, so scoring them again flatters a model; fair evaluation drops them.
    After the horizon the card counts as reissued (else, over months, nearly every card touched by a
    compromised terminal would leave the evaluation).
    """
    if horizon_days <= 0:
        return np.zeros(len(df), dtype=bool)
    day = day_of(df["ts"].to_numpy())
    customer = pd.factorize(df["customer_id"])[0].astype(np.int64)
    fraud = df["label"].to_numpy() == 1
    span = int(day.max()) + 2
    fraud_keys = np.sort(customer[fraud] * span + day[fraud])
    known_until = day - delay_days  # frauds on or before this day are known
    pos = np.searchsorted(fraud_keys, customer * span + np.maximum(known_until, -1), side="right") - 1
    last = fraud_keys[np.maximum(pos, 0)] if len(fraud_keys) else np.zeros(len(df), dtype=np.int64)
    same_card = (pos >= 0) & (last // span == customer)
    return same_card & (known_until - last % span < horizon_days)


def evaluate_scores(df: pd.DataFrame, scores: np.ndarray, mask: np.ndarray, k: int = 100) -> dict:
    """Headline metrics over the rows in ``mask``."""
    y = df["label"].to_numpy()[mask]
    return fraud_metrics(
        day_of(df["ts"].to_numpy()[mask]), df["customer_id"].to_numpy()[mask], y, scores[mask], k=k
    )


def evaluate_window(
    model: Scorable,
    df: pd.DataFrame,
    start_day: int,
    end_day: int,
    k: int = 100,
    scores: np.ndarray | None = None,
    known_fraud_days: int = 28,
) -> dict:
    """Fair metrics of ``model`` on days [start_day, end_day] (known-compromised cards excluded, see
    :func:`known_fraud_mask`). With ``scores`` given, ``model`` needs only ``spec`` and ``version`` (a
    ``ModelDir`` will do).

    Raises:
        DataError: empty window, or a window without both classes.
    """
    window = window_mask(df, start_day, end_day, "evaluation window")
    known = known_fraud_mask(df, model.spec.delay_days, known_fraud_days)
    mask = window & ~known
    y = df["label"].to_numpy()[mask]
    if y.sum() == 0 or y.sum() == len(y):
        raise DataError(
            f"evaluation window {format_day(start_day)}..{format_day(end_day)} has a single class "
            f"({int(y.sum())} frauds in {len(y)} rows): metrics are undefined"
        )
    if scores is None:
        scores = score_frame(model, df)
    result = evaluate_scores(df, scores, mask, k)
    result.update(
        start=format_day(start_day),
        end=format_day(end_day),
        n_excluded_known_fraud_cards=int((window & known).sum()),
        model_version=model.version,
    )
    return result
