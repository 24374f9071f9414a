"""Shared by the retrain tests: the simulated drift data's calendar and the retrain settings."""

from __future__ import annotations

from fraudlite.data.transactions import parse_day
from fraudlite.pipeline.retrain import RetrainConfig

START = "2026-01-01"
DAYS = 80
DRIFT_DAY = 45  # 0-based: the new fraud scenario starts on 2026-02-15
# decision tests skip compression (speed); the end-to-end test compresses (see E2E_CONFIG)
CONFIG = RetrainConfig(train_days=28, valid_days=7, delay_days=7, max_epochs=3, compress=False)


def day(i: int) -> int:
    """Epoch day of the i-th simulated day."""
    return parse_day(START, "start") + i


# v1 sees only data before the drift (its window ends the day before it); v2 runs at the end of the data.
NOW_V1 = day(DRIFT_DAY - 1 + 7)
NOW_V2 = day(DAYS - 1 + 7)
