"""``fraudlite serve``: build a Scorer from a ServeConfig and run it until a signal.

``make_scorer(config)`` loads the model (``--model``) or the registry's champion (``--registry``, with a
``ModelReloader`` for hot reload) and the shadow model (``--shadow-model``, ``streaming.shadow``);
``run_serve(config)`` installs SIGTERM/SIGINT (graceful stop: finish
the batch, commit, leave the group) and SIGHUP (check the registry now), serves Prometheus metrics and
runs until stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from fraudlite.kafkaio.clients import KafkaIOError
from fraudlite.streaming.config import ServeConfig
from fraudlite.streaming.reload import LoadedModel, ModelReloader, load_model, resolve_champion
from fraudlite.streaming.scorer import Scorer
from fraudlite.streaming.shadow import load_shadow

__all__ = ["make_scorer", "run_serve"]

logger = logging.getLogger(__name__)


def make_scorer(config: ServeConfig, registry: CollectorRegistry | None = None) -> Scorer:
    """Load the model (``--model`` or the registry's champion, with a hot-reload watcher) and the shadow
    model (``--shadow-model``), and build a Scorer.

    Raises:
        UserError: unusable model directory or registry; a shadow model that is unusable or needs
            another feature spec (the message names ``--shadow-model``).
    """
    if config.model_dir is not None:
        model = load_model(config.model_dir, config.threshold, config.alert_threshold)
        return Scorer(config, model, registry, shadow=_shadow(config, model))
    champion, path = resolve_champion(config.registry_dir)
    model = load_model(path, config.threshold, config.alert_threshold)
    shadow = _shadow(config, model)
    scorer: Scorer | None = None

    def load(version_dir: Path) -> LoadedModel:
        return load_model(version_dir, config.threshold, config.alert_threshold, expected_spec=model.spec)

    def failed(version: str, error: Exception) -> None:
        if scorer is not None:
            scorer.metrics.model_reloads.labels("failure").inc()

    reloader = ModelReloader(config.registry_dir, champion, load, config.reload_interval_s, failed)
    scorer = Scorer(config, model, registry, reloader, shadow=shadow)
    return scorer


def _shadow(config: ServeConfig, model: LoadedModel) -> LoadedModel | None:
    if config.shadow_model_dir is None:
        return None
    return load_shadow(config.shadow_model_dir, model.spec, config.threshold, config.alert_threshold)


def run_serve(config: ServeConfig, registry: CollectorRegistry | None = None) -> int:
    """``fraudlite serve``: score until SIGTERM/SIGINT, then finish the batch, commit and leave the group.

    Returns:
        0 after a requested stop.

    Raises:
        UserError: unusable model/registry, metrics address taken, incompatible topics.
    """
    scorer = make_scorer(config, registry)
    model = scorer.model
    logger.info(
        "serving model version=%s type=%s stages=%s threshold=%.4f alert_threshold=%.4f",
        model.version, model.model_type, ",".join(model.stages) or "none", model.threshold, model.alert_threshold,
    )  # fmt: skip
    if scorer.shadow is not None:
        logger.info(
            "shadow model version=%s threshold=%.4f alert_threshold=%.4f: decisions to %s",
            scorer.shadow.version, scorer.shadow.model.threshold, scorer.shadow.model.alert_threshold,
            scorer.shadow.topic,
        )  # fmt: skip

    def on_stop(signum, frame):
        if scorer.stopping:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        logger.info("signal %s: finishing the current batch, committing, leaving the group", signum)
        scorer.stop()

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    if scorer.reloader is not None and hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda signum, frame: scorer.reloader.force_check()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        scorer.connect()
        summary = scorer.run()
        logger.info("stopped: %s", summary.line())
        return 0
    except KafkaError as e:
        if scorer.stopping:
            return 0
        raise KafkaIOError(f"kafka: {e}") from e
    finally:
        scorer.close()
        for sig, h in previous.items():
            signal.signal(sig, h)
