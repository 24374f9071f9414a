"""A released batch's features, computed per input partition in one pass.

Before computing, the terminal feed is advanced to the batch's day bound (other members' partitions and
labels up to ``last day - delay_days``) and fills the gaps of partitions just taken over, even for a batch
of invalid records only. Each partition's transactions go into the terminal table as
its features are computed (day by day), unless some were counted before (a batch repeated after a
rollback: ``TerminalFeed.is_new``); the feed then learns the batch was processed.
"""

from __future__ import annotations

import numpy as np

from fraudlite.features.online import OnlineFeatures
from fraudlite.features.spec import SECONDS_PER_DAY
from fraudlite.streaming.sync import Part
from fraudlite.streaming.terminal_feed import TerminalFeed

__all__ = ["batch_features"]


def batch_features(
    parts: list[Part], online: OnlineFeatures, feed: TerminalFeed, delay_days: int
) -> np.ndarray | None:
    """The feature rows of the batch's valid transactions, in the order of ``parts``.

    Args:
        parts: the batch, ``[(tp, records, decoded)]``.
        online: the online features (customer state per partition, terminal table).
        feed: the terminal feed.
        delay_days: the spec's label delay.

    Returns:
        One row per valid transaction, or None when the batch has none.
    """
    valid = [(tp, d) for tp, _, d in parts if len(d)]
    last_day = max(int(d.ts.max()) for _, d in valid) // SECONDS_PER_DAY if valid else None
    feed.advance(None if last_day is None else last_day - delay_days)  # even without valid rows: the gaps
    features = []
    for tp, records, d in parts:
        # The batch's own transactions go into the terminal table as it is computed (day by day),
        # unless some were counted before (a batch repeated after a rollback).
        counted = feed.is_new(tp.partition, records)
        if len(d):
            x = online.compute(
                tp.partition, d.ts, d.customer_id, d.terminal_id, d.amount_cents,
                update_terminals=counted, extras=d.extras,
            )  # fmt: skip
            features.append(x)
        feed.add_batch(tp.partition, records, d, counted=counted)
    if not valid:
        return None
    return features[0] if len(features) == 1 else np.concatenate(features)
