"""fraudlite.testing: helpers shared by the test suite and the benchmarks (like ``numpy.testing``).

``streaming``: a small model directory, synthetic transactions, producing them, a scorer in a thread,
reading a topic, a process's memory. ``poison``: invalid transaction messages (hypothesis strategies, a
seeded generator) and the oracle of their DLQ reasons. ``reliability``: ``fraudlite serve`` as a real subprocess (so it can be
``kill -9``-ed), group offsets, decisions read back, Prometheus scrapes.

Nothing in fraudlite imports this package; it may import any layer.
"""
