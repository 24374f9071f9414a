"""ONNX Runtime session options of the serving path."""

from __future__ import annotations

import numpy as np

from fraudlite.runtime import OnnxScorer  # noqa: E402
from fraudlite.testing.streaming import proc_status_mb, write_model  # noqa: E402


def _rss_mb() -> float:
    return proc_status_mb("VmRSS")


def test_memory_stays_flat_over_every_batch_size(tmp_path):
    """A micro-batching scorer sees every batch size; per-shape caches (ORT memory patterns) grew RSS by
    ~10 MB over 2,000 distinct sizes before they were turned off."""
    scorer = OnnxScorer(write_model(tmp_path / "m").path / "model.onnx")
    d = scorer.session.get_inputs()[0].shape[1]
    rng = np.random.default_rng(0)
    for n in range(1, 201):  # warm-up: allocator pools, first runs
        scorer.score(rng.random((n, d), dtype=np.float32))
    before = _rss_mb()
    for n in range(201, 2001):
        scorer.score(rng.random((n, d), dtype=np.float32))
    assert _rss_mb() - before < 4.0
