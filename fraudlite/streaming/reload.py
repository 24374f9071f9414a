"""Loading a model for serving, and hot reload from a registry.

``load_model(path)`` verifies the model directory (the manifest and the serve files, each re-hashed),
builds its runnable (``fraudlite.compression.served.open_model``: the compact artifact decoded in memory,
or the ONNX file of an uncompressed model) and scores a smoke batch, so a model that would fail at the first real batch is
refused up front. ``ModelReloader`` polls a registry's champion pointer in a background thread, loads a
newly promoted version there (never on the scoring path) and hands it over; the scorer swaps it in
between two batches, so every transaction is scored by exactly one model. A version that fails to load
or verify is refused (logged, counted) and the current model keeps serving; it is retried only when the
pointer changes again or a check is forced (SIGHUP). So is a version whose feature spec differs from the
served one, its extra columns included (names, kinds and what was fitted: a retrained vocabulary or fill
is another spec): the online state, the transaction decoder (which reads the spec's extra fields) and a
shadow model all follow the spec the scorer started with, so changing features means a restart.

Registry layout (``fraudlite.pipeline.registry``, light to import): ``DIR/champion`` holds the champion's
version name, replaced atomically on promote/rollback; the version lives in ``DIR/versions/<name>``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudlite.compression.served import ServedModel, open_model
from fraudlite.errors import FraudliteError, ModelDirError
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import MANIFEST, ModelDir
from fraudlite.pipeline.registry import CHAMPION_FILE, VERSIONS_DIR, read_champion

__all__ = ["LoadedModel", "load_model", "resolve_champion", "ModelReloader"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model ready to score.

    Attributes:
        model_dir: the loaded directory (manifest and serve files verified).
        scorer: its runnable (``fraudlite.compression.served.ServedModel``: ``score(features)``).
        spec: the feature spec it expects.
        version, model_type, stages: from the manifest (stages = compression stages applied).
        threshold, alert_threshold: decision thresholds in use (manifest, or the serve overrides).
        loaded_at: epoch seconds.
        load_seconds: how long loading, verifying, decoding and building the runnable took.
    """

    model_dir: ModelDir
    scorer: ServedModel
    spec: FeatureSpec
    version: str
    model_type: str
    stages: tuple[str, ...]
    threshold: float
    alert_threshold: float
    loaded_at: float
    load_seconds: float = 0.0

    @property
    def path(self) -> Path:
        return self.model_dir.path

    @property
    def form(self) -> str:
        """The runnable form serving it (``ort-dense``, ``numpy-dense``, ..., ``ort-onnx-file``)."""
        return str(self.scorer.runtime.get("form", "?"))

    def loaded_bytes(self) -> dict[str, int]:
        """Bytes per role of what loading read: the manifest and the serve files."""
        md = self.model_dir
        return {"manifest": (md.path / MANIFEST).stat().st_size, **md.bytes_by_role(("serve",))}


def _stages(manifest: dict) -> tuple[str, ...]:
    compression = manifest.get("compression") or {}
    stages = compression.get("stages", []) if isinstance(compression, dict) else []
    out = []
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, dict):
            stage = stage.get("name") or stage.get("stage") or stage.get("technique") or "?"
        out.append(str(stage))
    return tuple(out)


def _extras_difference(served: FeatureSpec, other: FeatureSpec) -> str:
    """`` (extra columns ...)`` when the specs differ in their extra columns, else ""."""
    if served.extra_columns == other.extra_columns:
        return ""
    declared = (
        [(c.name, c.kind) for c in served.extra_columns],
        [(c.name, c.kind) for c in other.extra_columns],
    )
    if declared[0] == declared[1]:
        return " (its extra columns were fitted on other data: fill, vocabulary or buckets)"
    shown = [", ".join(f"{n}:{k}" for n, k in d) or "none" for d in declared]
    return f" (extra columns {shown[1]}; served: {shown[0]})"


def load_model(
    path: str | Path,
    threshold: float | None = None,
    alert_threshold: float | None = None,
    expected_spec: FeatureSpec | None = None,
) -> LoadedModel:
    """Load, verify and smoke-test a model directory (``fraudlite.compression.served.open_model``).

    Args:
        path: the model directory.
        threshold, alert_threshold: overrides of the manifest's thresholds.
        expected_spec: when reloading, the spec of the online state; a model needing another spec is
            refused (its features could not be computed from the existing state).

    Raises:
        ModelDirError: not a model directory, a file fails verification (IntegrityError), the model
            does not decode or does not score a smoke batch, or the spec differs from ``expected_spec``.
    """
    t0 = time.perf_counter()
    served = open_model(path)
    md, spec = served.model_dir, served.spec
    if expected_spec is not None and spec != expected_spec:
        raise ModelDirError(
            f"{md.path}: its feature spec differs from the one being served; restart the scorer to change "
            f"features{_extras_difference(expected_spec, spec)}"
        )
    try:
        smoke = served.score(np.zeros((2, spec.n_features), dtype=np.float32))
    except FraudliteError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelDirError(f"{md.path}: the model cannot score ({e.__class__.__name__}: {e})") from None
    if smoke.shape != (2,) or not np.isfinite(smoke).all():
        raise ModelDirError(f"{md.path}: expected one finite score per row, got shape {smoke.shape}")
    manifest = md.manifest
    thr = md.threshold if threshold is None else threshold
    alert = md.alert_threshold if alert_threshold is None else alert_threshold
    logger.info(
        "model %s: serving with %s (%s)", md.version, served.runtime.get("form"), served.runtime.get("why")
    )
    return LoadedModel(
        model_dir=md,
        scorer=served,
        spec=spec,
        version=md.version,
        model_type=str(manifest.get("model_type", "unknown")),
        stages=_stages(manifest),
        threshold=float(thr),
        alert_threshold=float(max(alert, thr)),
        loaded_at=time.time(),
        load_seconds=time.perf_counter() - t0,
    )


def resolve_champion(registry: str | Path) -> tuple[str, Path]:
    """The champion's version name and directory in ``registry`` (``fraudlite.pipeline.registry`` layout).

    Raises:
        ModelDirError: no champion pointer, an unsafe name, or a missing version directory.
    """
    root = Path(registry)
    try:
        version = read_champion(root)
    except (OSError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{root / CHAMPION_FILE}: unreadable ({e})") from None
    if not version:
        raise ModelDirError(f"{root}: no champion in the registry (no {CHAMPION_FILE} file)")
    if "/" in version or "\\" in version or version in (".", ".."):
        raise ModelDirError(f"{root / CHAMPION_FILE}: not a version name: {version!r}")
    path = root / VERSIONS_DIR / version
    if not path.is_dir():
        raise ModelDirError(f"{root / CHAMPION_FILE}: names version {version!r} but {path} does not exist")
    return version, path


class ModelReloader:
    """Background watcher of a registry's champion.

    Args:
        registry: the registry directory.
        current_version: the champion name (version directory) being served.
        load: loads a version directory (``load_model`` with the serve thresholds and current spec).
        interval_s: how often to look at the champion pointer.
        on_failure: called with (version, error) after a refused version (e.g. to count it).
    """

    def __init__(
        self,
        registry: str | Path,
        current_version: str,
        load: Callable[[Path], LoadedModel],
        interval_s: float = 5.0,
        on_failure: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.registry = Path(registry)
        self.current_version = current_version
        self._load = load
        self.interval_s = interval_s
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._ready: tuple[str, LoadedModel] | None = None
        self._refused: str | None = None
        self._force = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fraudlite-model-reloader", daemon=True)

    def start(self) -> ModelReloader:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._force.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def force_check(self) -> None:
        """Check now and retry a refused version (safe to call from a signal handler)."""
        self._force.set()

    def take(self) -> LoadedModel | None:
        """The newly loaded model, once (None if there is none); the caller starts serving it."""
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return None
        self.current_version = ready[0]
        return ready[1]

    def check(self, forced: bool = False) -> LoadedModel | None:
        """One look at the champion: load it if it is new. Returns the model made ready, if any."""
        try:
            version, path = resolve_champion(self.registry)
        except ModelDirError as e:
            logger.warning("model reload: %s", e)
            return None
        with self._lock:
            pending = self._ready[0] if self._ready is not None else None
        if version in (self.current_version, pending) or (version == self._refused and not forced):
            return None
        logger.info("model reload: loading version=%s path=%s", version, path)
        try:
            model = self._load(path)
        except Exception as e:  # noqa: BLE001 - any failure refuses the model, the scorer keeps serving
            self._refused = version
            logger.error(
                "model reload: refused version=%s (%s); still serving %s", version, e, self.current_version
            )
            if self._on_failure is not None:
                self._on_failure(version, e)
            return None
        self._refused = None
        with self._lock:
            self._ready = (version, model)
        logger.info("model reload: version=%s verified and ready", version)
        return model

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._force.wait(self.interval_s)
            self._force.clear()
            if self._stop.is_set():
                return
            self.check(forced=forced)
