"""An uninterrupted scorer over a large backlog, on a loaded machine, computes exactly the offline
features -- the reference every crash / rebalance test compares with.

(Regression: the event-time sync stopped waiting for a partition whose next fetch took over 1 s, let
the others run more than ``delay_days`` ahead, and ~1% of a 200 000-transaction backlog got terminal
counts without that partition's days. The escape now waits 30 s.)
"""

from __future__ import annotations

import os
import uuid

import pytest

from fraudlite.streaming.config import BatchConfig, ServeConfig
from fraudlite.streaming.reload import load_model
from fraudlite.streaming.scorer import Scorer
from fraudlite.testing.reliability import (
    decision_scores,
    make_transactions,
    offline_scores,
    produce,
    read_records,
)
from fraudlite.testing.streaming import ScorerThread

pytestmark = pytest.mark.integration

N = int(os.environ.get("FRAUDLITE_BACKLOG_N", 200_000))


def test_backlog_scores_equal_offline_features(rel_broker, rel_topics, rel_model):
    t = rel_topics(partitions=4)
    data = make_transactions(N, customers=N // 20, terminals=2000, days=30, seed=5)
    produce(rel_broker.bootstrap, t.input, data.messages())
    cfg = ServeConfig(
        bootstrap_servers=rel_broker.bootstrap, model_dir=rel_model.path, topics=t,
        group_id=f"backlog-{uuid.uuid4().hex[:6]}", metrics_port=None, batch=BatchConfig(max_records=2000, max_ms=50),
    )  # fmt: skip
    run = ScorerThread(Scorer(cfg, load_model(rel_model.path))).start()
    run.wait_scored(N, timeout_s=300)
    run.stop()
    decisions = read_records(rel_broker.bootstrap, t.output, min_count=N, timeout_s=60)
    scores = decision_scores(decisions)
    assert len(scores) == N
    offline = offline_scores(data, rel_model)
    off = [k for k in scores if abs(offline[k] - scores[k]) > 1e-4]
    assert not off, f"{len(off)} of {N} scores differ from the offline features' (> 1e-4), e.g. {off[:5]}"
