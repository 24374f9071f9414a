"""Watching a model in production: pure numpy logic, no I/O and no Kafka.

- :mod:`~fraudlite.monitoring.reference`: the training reference a model directory stores (feature and
  score histograms at fixed bins), written at train time, read by ``serve`` for drift.
- :mod:`~fraudlite.monitoring.drift`: population stability index (PSI) and a sliding window of counts.
- :mod:`~fraudlite.monitoring.calibration`: Platt scaling applied to served scores, expected calibration
  error, reliability bins.
- :mod:`~fraudlite.monitoring.budget`: the alert threshold that meets an alert budget.
- :mod:`~fraudlite.monitoring.reasons`: reason codes, sampled Shapley values of the served score against
  the training means, and their investigator text.
"""
