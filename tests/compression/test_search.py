"""The search's label-free agreement measure (restarts pick by it)."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.search import alert_agreement
from fraudlite.errors import ConfigError


def test_alert_agreement_counts_shared_top_rows() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(10_000)
    assert alert_agreement(ref, ref) == 1.0
    assert alert_agreement(ref, 3 * ref + 1) == 1.0  # only the ranking matters
    assert alert_agreement(ref, -ref) == 0.0
    swapped = ref.copy()
    top = np.argsort(-ref)[:100]  # the top 1%
    swapped[top[:25]] = -10.0  # 25 of them drop out of the candidate's top 1%
    assert alert_agreement(ref, swapped) == pytest.approx(0.75)
    assert alert_agreement(ref, swapped, share=0.5) > 0.99


def test_alert_agreement_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        alert_agreement(np.zeros(3), np.zeros(4))
    with pytest.raises(ConfigError):
        alert_agreement(np.zeros(3), np.zeros(3), share=0.0)
