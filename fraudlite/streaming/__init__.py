"""fraudlite.streaming: Kafka in, decisions out (the scoring consumer, ``fraudlite replay``).

``fraudlite serve`` = ``serve.run_serve(ServeConfig)``; ``fraudlite replay`` = ``replay.replay``. Names are
imported lazily so that ``import fraudlite.streaming`` costs nothing and never pulls in a heavy dependency
(replay loads pandas only when it runs). The Kafka base it stands on (clients, security, the wire format,
the embedded broker) is ``fraudlite.kafkaio``.

Modules, one concept each: ``config`` (settings), ``sync`` (event-time lockstep of partitions),
``terminal_feed`` (global terminal table), ``state_store`` (changelog of customer state), ``outputs``
(decision/DLQ encoding), ``metrics`` (Prometheus), ``reload`` (model loading and hot reload),
``idempotence`` (outputs a crashed predecessor already wrote), ``health`` (broker connection watch),
``scorer`` (the consumer-group member: lifecycle and run loop) with its parts ``settings`` (the frozen
settings of each part), ``clients`` (the Kafka clients in one object), ``checkpoint`` (one batch's
transaction: outputs, changelog, offsets, commit or abort), ``connection`` (topics, client construction,
transactional id), ``assignment`` (rebalances, state restore), ``batch_features``,
``batch_output`` (decisions/alerts/DLQ/changelog records), ``flow`` (batch size, pausing),
``partition_state`` and ``reporting`` (summary, per-batch metrics), ``serve`` (the command) and ``replay``.
"""

from __future__ import annotations

import importlib

__all__ = ["ServeConfig", "Scorer", "make_scorer", "run_serve", "replay"]

_LAZY = {
    "ServeConfig": "fraudlite.streaming.config",
    "Scorer": "fraudlite.streaming.scorer",
    "make_scorer": "fraudlite.streaming.serve",
    "run_serve": "fraudlite.streaming.serve",
    "replay": "fraudlite.streaming.replay",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fraudlite.streaming' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
