"""Opening a model directory to score: the one way ``serve``, ``score``, ``evaluate``, ``retrain`` and the
registry turn a model directory into scores.

A compressed model ships as its compact artifact (role ``compact``); :func:`open_model` decodes it in
memory (bit-exact: the weights compression measured) and builds the runnable form the manifest's
``runtime`` names, the one :func:`choose_runtime` chose by measurement at compression time. When the
recorded machine differs from this one (or the form is not available here) the forms are timed again at
load (which loads onnxruntime, ~0.1 s) and the chosen one serves; ``ServedModel.runtime`` says which and
why. A trained (fp32) model, and a
compressed directory of format 1 (which still ships ``model.onnx``), run their ONNX file in ONNX Runtime.

Low-bit weights (QAT at 2..4 bits, ternary codebooks, binary +-scale rows) ship in their bit width and
serve their decoded float32 weights through the same forms: ONNX Runtime's only sub-8-bit weight kernel
on CPU, ``com.microsoft.MatMulNBits``, measured slower than the float32 MatMul on these MLP widths
(32-64-32-1, ORT 1.32, one thread: 4-bit 0.85-0.9x, 2-bit 0.4-0.7x the rows/s at batch 1 and 256), and
ternary or binary matmuls have no kernel at all; at these sizes the weights are cache-resident anyway.

numpy only at import (plus onnxruntime when an ONNX form is built): no torch, no pandas, no onnx.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fraudlite.compression.compact import decode_compact
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import FraudliteError, ModelDirError
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import SPEC_FILE, ModelDir, write_model_dir
from fraudlite.monitoring.calibration import Platt
from fraudlite.monitoring.reference import Reference
from fraudlite.runtime.choice import choose_form, machine_fingerprint, measure_forms
from fraudlite.runtime.forms import FORMS, Form, build_forms, make_form

__all__ = [
    "ServedModel",
    "open_model",
    "choose_runtime",
    "manifest_runtime",
    "write_compressed_dir",
    "rss_after_open",
    "COMPACT_FILE",
    "ONNX_FILE_FORM",
]

logger = logging.getLogger(__name__)

COMPACT_FILE = "model.flc"
ONNX_FILE_FORM = "ort-onnx-file"
"""The form of a model directory that ships an ONNX file (trained models, format-1 compressed ones)."""
_PROBE_ROWS = 1024


@dataclass(frozen=True)
class ServedModel:
    """A verified model directory and the runnable form that scores it.

    Attributes:
        model_dir: the directory (manifest and serve files verified).
        spec: its feature spec.
        form: the runnable (``score(features) -> probabilities``).
        runtime: ``{"form", "why", ...}``: the form and how it was chosen (recorded, or measured at load).
        state: the decoded compressed weights (None for an ONNX-file model).
        calibration: the manifest's score calibration (``monitoring.calibration``), applied by ``score``.

    The manifest's ``monitoring`` record (written at training, carried by compression) holds the score
    calibration, the training reference for drift and the alert budget.
    """

    model_dir: ModelDir
    spec: FeatureSpec
    form: Form
    runtime: dict = field(default_factory=dict)
    state: CompressedMLP | None = field(default=None, repr=False)
    calibration: Platt | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.calibration is None and self.monitoring.get("calibration") is not None:
            try:
                object.__setattr__(self, "calibration", Platt.from_record(self.monitoring["calibration"]))
            except FraudliteError as e:
                raise ModelDirError(f"{self.path}: manifest monitoring.calibration: {e}") from None

    @property
    def version(self) -> str:
        return self.model_dir.version

    @property
    def path(self) -> Path:
        return self.model_dir.path

    @property
    def manifest(self) -> dict:
        return self.model_dir.manifest

    @property
    def monitoring(self) -> dict:
        record = self.manifest.get("monitoring")
        return record if isinstance(record, dict) else {}

    def score(self, features: np.ndarray) -> np.ndarray:
        """Fraud probabilities float32 [N] of raw features float32 [N, F] (calibrated when the model is)."""
        raw = self.form.score(features)  # every form makes its input contiguous float32
        return raw if self.calibration is None else self.calibration(raw)

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """Calibrated log-odds of fraud, float64 [N] (the served score is their sigmoid): what reason codes
        attribute. From the network's logit where the form gives it (the numpy forms): a probability is
        1.0 in float32 once the logit passes ~17, and rows there would all look alike; else from the
        probability, clipped to (1e-7, 1 - 1e-7)."""
        logit = getattr(self.form, "logit", None)
        if logit is not None:
            z = np.asarray(logit(features), np.float64)
        else:
            p = np.clip(np.asarray(self.form.score(features), np.float64), 1e-7, 1 - 1e-7)
            z = np.log(p) - np.log1p(-p)
        return z if self.calibration is None else self.calibration.a * z + self.calibration.b

    def score_raw(self, features: np.ndarray) -> np.ndarray:
        """The network's own output, before calibration (what the weights compute)."""
        return self.form.score(features)

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float32 [F] of the training features: the model's standardization, the reference
        point of reason codes and the units drift is binned in."""
        if self.state is not None:
            return self.state.mean, self.state.safe_std()
        stats = json.loads(self.model_dir.file("spec").read_text()).get("normalization") or {}
        try:
            mean = np.asarray(stats["mean"], np.float32)
            std = np.asarray(stats["std"], np.float32)
        except (KeyError, TypeError, ValueError):
            raise ModelDirError(f"{self.path}: the feature spec has no normalization (mean, std)") from None
        if mean.shape != (self.spec.n_features,) or std.shape != mean.shape:
            raise ModelDirError(
                f"{self.path}: normalization has {mean.shape} values for {self.spec.n_features} features"
            )
        return mean, np.where(np.isfinite(std) & (std > 0), std, np.float32(1)).astype(np.float32)

    def reference(self) -> Reference | None:
        """The training reference for drift, or None for a model trained before it was stored.

        Raises:
            ModelDirError: a reference that does not decode or does not match the features.
        """
        text = self.monitoring.get("reference")
        if text is None:
            return None
        try:
            ref = Reference.decode(text)
        except FraudliteError as e:
            raise ModelDirError(f"{self.path}: manifest monitoring.reference: {e}") from None
        if ref.n_features != self.spec.n_features:
            raise ModelDirError(
                f"{self.path}: reference of {ref.n_features} features, spec has {self.spec.n_features}"
            )
        return ref

    @property
    def alert_budget_per_1k(self) -> float | None:
        value = self.monitoring.get("alert_budget_per_1k")
        return None if value is None else float(value)


def _probe_rows(state: CompressedMLP, rows: int = _PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Synthetic rows for timing: the model's own feature means and spreads (timing needs no real data)."""
    rng = np.random.default_rng(seed)
    return (state.mean + state.safe_std() * rng.standard_normal((rows, state.n_features))).astype(np.float32)


def choose_runtime(
    state: CompressedMLP, X: np.ndarray | None = None, forms: dict[str, Form] | None = None
) -> tuple[str, dict]:
    """Time every runnable form of ``state`` side by side and pick one
    (:func:`fraudlite.runtime.choice.choose_form`: the fastest, or a numpy form that serving cannot tell
    apart from it in time and that spares the process onnxruntime). ``forms``: already built ones (else
    built here); ``X``: rows to time on (else synthetic ones from the model's stats).

    Returns:
        ``(form name, record)``; the record (JSON-ready, for the manifest) holds ``form``, ``why``,
        ``machine`` and ``rows_per_s: {form: {batch: rows/s}}``.
    """
    forms = forms or build_forms(state.layers, state.mean, state.std, state.masks)
    rows = _probe_rows(state) if X is None else np.ascontiguousarray(X, dtype=np.float32)
    speed = measure_forms(forms, rows)
    name, why = choose_form(speed, {n: f.needs_onnxruntime for n, f in forms.items()})
    record = {
        "form": name,
        "why": why,
        "machine": machine_fingerprint(),
        "rows_per_s": {f: {str(b): round(v) for b, v in by_batch.items()} for f, by_batch in speed.items()},
    }
    return name, record


def manifest_runtime(record: dict) -> dict:
    """What the manifest keeps of a :func:`choose_runtime` record: the form, the machine it was measured
    on and every form's rows/s as ``[batch 1, batch 256]`` (the report keeps the reasoning)."""
    return {
        "form": record["form"],
        "machine": record["machine"],
        "rows_per_s": {f: [int(r) for _, r in sorted(rates.items(), key=lambda kv: int(kv[0]))]
                       for f, rates in record.get("rows_per_s", {}).items()},
    }  # fmt: skip


def write_compressed_dir(
    out: str | os.PathLike,
    compact: bytes,
    spec: FeatureSpec,
    manifest: dict,
    extra_files: Callable[[Path], dict[str, str]] | None = None,
) -> ModelDir:
    """Write a compressed model directory atomically: the serve files (the compact artifact, the spec's
    parameters as compact JSON) plus whatever ``extra_files(tmp) -> {name: role}`` writes (reports, training files).

    ``manifest`` must hold ``runtime`` (:func:`choose_runtime`'s record) and the thresholds.
    """
    if not isinstance(manifest.get("runtime"), dict) or "form" not in manifest["runtime"]:
        raise ModelDirError("a compressed model's manifest needs its runtime choice (choose_runtime)")
    # parameters only: the names derive from them (the trained model's spec keeps them as a check), and
    # they were 470 of a small compressed model's 3,700 serve bytes
    spec_json = json.dumps({"spec": spec.to_dict(names=False)}, separators=(",", ":")) + "\n"

    def write(tmp: Path) -> dict[str, str]:
        (tmp / COMPACT_FILE).write_bytes(compact)
        (tmp / SPEC_FILE).write_text(spec_json)
        return {COMPACT_FILE: "compact", SPEC_FILE: "spec", **(extra_files(tmp) if extra_files else {})}

    return write_model_dir(out, write, manifest)


def open_model(model: ModelDir | str | os.PathLike, *, verify: bool = True) -> ServedModel:
    """Load, verify and build the runnable of a model directory (see the module docstring).

    Raises:
        ModelDirError: not a model directory, a serve file fails verification (IntegrityError), the
            compact artifact does not decode, the spec is unreadable, or ONNX Runtime cannot run the file.
    """
    md = model if isinstance(model, ModelDir) else ModelDir.load(model, verify=verify)
    try:
        spec = md.spec
    except (OSError, ValueError, KeyError, FraudliteError) as e:
        raise ModelDirError(f"{md.path}: unreadable feature spec ({e})") from None
    recorded = md.manifest.get("runtime")
    serve_roles = md.bytes_by_role(("serve",))  # the manifest only: serving never reads contents.json
    if "onnx" in serve_roles or "compact" not in serve_roles or not isinstance(recorded, dict):
        return ServedModel(md, spec, _onnx_file_form(md), {"form": ONNX_FILE_FORM, "why": "ships model.onnx"})
    compact = md.file("compact")
    try:
        state = decode_compact(compact.read_bytes())
    except ModelDirError as e:
        raise ModelDirError(f"{compact}: {e}") from None
    if state.n_features != spec.n_features:
        raise ModelDirError(f"{compact}: {state.n_features} inputs, its feature spec has {spec.n_features}")
    name = str(recorded.get("form"))
    if recorded.get("machine") == machine_fingerprint() and name in FORMS:  # build only the one that serves
        form = make_form(name, state.layers, state.mean, state.std, state.masks)
        why = (
            f"recorded at compression on this machine (rows/s at batch 1, 256: {recorded.get('rows_per_s')})"
        )
        return ServedModel(md, spec, form, {"form": name, "why": why}, state)
    t0 = time.perf_counter()
    name, rerun = choose_runtime(state)
    logger.info(
        "model %s: another machine than at compression: runnable forms re-measured in %.2fs: %s (recorded %s)",
        md.version, time.perf_counter() - t0, name, recorded.get("form"),
    )  # fmt: skip
    form = make_form(name, state.layers, state.mean, state.std, state.masks)
    return ServedModel(
        md, spec, form, {**rerun, "rechecked": True, "recorded_form": recorded.get("form")}, state
    )


def _onnx_file_form(md: ModelDir) -> Form:
    from fraudlite.runtime.session import OnnxScorer

    path = md.onnx_path
    try:
        scorer = OnnxScorer(path)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelDirError(f"{path}: ONNX Runtime cannot run it ({e.__class__.__name__}: {e})") from None
    scorer.name = ONNX_FILE_FORM
    return scorer


_RSS_CODE = """
import sys
import numpy as np
import psutil
from fraudlite.compression.served import open_model
before = psutil.Process().memory_info().rss
model = open_model(sys.argv[1])
model.score(np.zeros((int(sys.argv[2]), model.spec.n_features), dtype=np.float32))
print(psutil.Process().memory_info().rss - before)
"""


def rss_after_open(path: str | os.PathLike, repeats: int = 3, batch: int = 256) -> int:
    """Resident bytes that :func:`open_model` plus one scored batch add to a fresh Python process that
    has imported this module (median of ``repeats`` child processes); what serving a directory costs."""
    values = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CODE, os.fspath(path), str(batch)],
            check=True,
            capture_output=True,
            text=True,
        )
        values.append(int(out.stdout.strip().splitlines()[-1]))
    return int(np.median(values))
