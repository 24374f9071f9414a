"""The hand-over between compression stages: :class:`CompressedMLP`, plain numpy, no torch at import.

Every technique reads and returns one; the compact encoder, the ONNX export and the report consume it.

Conventions (checked by :meth:`CompressedMLP.validate`):

- ``layers``: ``[(W float32 [out, in], b float32 [out]), ...]`` in torch order, hidden layers first,
  the single-unit output layer last. Structured pruning shows up as smaller shapes.
- ``masks[i]``: bool array shaped like ``W_i`` (True = weight kept) or None (layer dense). Pruned
  entries of ``W_i`` are exactly ``0.0``; a kept entry may also happen to be 0.
- ``codebooks[i]``: ``(centroids float32 [k], indices uint8 shaped like W_i)`` or None. Kept entries
  satisfy ``W_i == centroids[indices]`` bit-exactly; indices at pruned entries are 0 (canonical, so
  an encoder may skip them). ``k <= 256``.
- ``quant[i]`` (after QAT; see :mod:`fraudlite.compression.qat`): JSON-ready dict with
  ``weight_scale`` (list[float], one per output unit), ``weight_zero_point`` (list[int], zeros:
  symmetric), ``weight_qmin``/``weight_qmax`` (the integer grid), ``input_scale`` (float),
  ``input_zero_point`` (int, uint8 asymmetric), ``input_min``/``input_max`` (calibrated range of the
  layer input), ``per_channel`` (bool) and ``bits`` (2..8; 1 for binary weights, which are weight-only:
  no ``input_*``, see :mod:`fraudlite.compression.lowbit`). ``quant`` is None when no quantization
  stage ran.
- ``stages``: one JSON-ready dict per stage that produced this state, in order
  (``{"name": ..., "params": {...}, ...}``).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudlite.errors import ConfigError, ModelDirError

if TYPE_CHECKING:  # torch stays out of this module's import
    from fraudlite.models.mlp import FraudMLP, MLPConfig

__all__ = ["CompressedMLP", "Codebook", "StageData", "stage_record"]

Codebook = tuple[np.ndarray, np.ndarray]
"""``(centroids float32 [k], indices uint8 shaped like W)``."""

_FORMAT = "fraudlite.compressed_mlp"
_FORMAT_VERSION = "1"


@dataclass
class CompressedMLP:
    """An MLP's weights plus the compression structure (masks, codebooks, quantization) that made them.

    Attributes:
        layers: ``[(W [out, in], b [out]), ...]`` float32, output layer (one unit) last.
        mean, std: float32 [n_features] standardization applied to raw features before layer 0.
        masks: per layer, bool keep-mask shaped like W, or None.
        codebooks: per layer, ``(centroids, indices)`` or None.
        quant: per layer int8 parameters (see module docs), or None.
        stages: history of the stages applied, JSON-ready dicts.
    """

    layers: list[tuple[np.ndarray, np.ndarray]]
    mean: np.ndarray
    std: np.ndarray
    masks: list[np.ndarray | None] = field(default_factory=list)
    codebooks: list[Codebook | None] = field(default_factory=list)
    quant: list[dict] | None = None
    stages: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = [
            (np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32).reshape(-1))
            for w, b in self.layers
        ]
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32).reshape(-1)
        self.std = np.ascontiguousarray(self.std, dtype=np.float32).reshape(-1)
        n = len(self.layers)
        if not self.masks:
            self.masks = [None] * n
        if not self.codebooks:
            self.codebooks = [None] * n
        self.masks = [None if m is None else np.asarray(m, dtype=bool) for m in self.masks]
        self.codebooks = [
            None
            if cb is None
            else (np.asarray(cb[0], dtype=np.float32).reshape(-1), np.asarray(cb[1], dtype=np.uint8))
            for cb in self.codebooks
        ]
        if len(self.masks) != n or len(self.codebooks) != n:
            raise ConfigError(
                f"masks ({len(self.masks)}) and codebooks ({len(self.codebooks)}) need one entry per layer ({n})"
            )
        if self.quant is not None and len(self.quant) != n:
            raise ConfigError(f"quant needs one entry per layer ({n}), got {len(self.quant)}")

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_model(
        cls,
        model: FraudMLP,
        masks: list[np.ndarray | None] | None = None,
        codebooks: list[Codebook | None] | None = None,
        quant: list[dict] | None = None,
        stages: list[dict] | None = None,
    ) -> CompressedMLP:
        """Snapshot a :class:`FraudMLP` (weights copied; pruned entries forced to exactly 0).

        Args:
            model: the torch module.
            masks: per-layer keep masks (numpy bool or torch bool tensors) or None.
            codebooks: per-layer ``(centroids, indices)`` or None.
            quant: per-layer quantization parameters or None.
            stages: stage history to carry over.

        Raises:
            ConfigError: when the structure does not match the weights (see :meth:`validate`).
        """
        from fraudlite.models.mlp import mlp_layers

        mean, std = model.normalization()
        masks_np = (
            None if masks is None else [None if m is None else _to_numpy(m).astype(bool) for m in masks]
        )
        layers = mlp_layers(model)
        if masks_np is not None:
            layers = [
                (np.where(m, w, np.float32(0)) if m is not None else w, b)
                for (w, b), m in zip(layers, masks_np, strict=True)
            ]
        state = cls(
            layers,
            mean,
            std,
            masks=masks_np or [],
            codebooks=list(codebooks) if codebooks is not None else [],
            quant=copy.deepcopy(quant),
            stages=copy.deepcopy(stages) if stages else [],
        )
        state.validate()
        return state

    @classmethod
    def of(cls, model: CompressedMLP | FraudMLP) -> CompressedMLP:
        """``model`` itself when it already is a state, else its snapshot (:meth:`from_model`)."""
        return model if isinstance(model, cls) else cls.from_model(model)

    def to_model(self, config: MLPConfig | None = None) -> FraudMLP:
        """A :class:`FraudMLP` holding exactly these weights (eval mode); ``hidden`` follows the shapes.

        Args:
            config: training settings to keep (dropout, lr, ...); default ``MLPConfig()``.
        """
        from fraudlite.models.mlp import FraudMLP

        return FraudMLP.from_layers(self.layers, self.mean, self.std, config).eval()

    # ------------------------------------------------------------------ properties

    @property
    def n_features(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(int(w.shape[0]) for w, _ in self.layers[:-1])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(w.shape[0]), int(w.shape[1])) for w, _ in self.layers]

    def n_weights(self) -> int:
        """Weight entries of the (possibly structurally pruned) dense matrices."""
        return int(sum(w.size for w, _ in self.layers))

    def n_params(self) -> int:
        """Weights + biases of the dense matrices."""
        return int(sum(w.size + b.size for w, b in self.layers))

    def n_kept_weights(self) -> int:
        """Weights not pruned (mask True, or every entry of a mask-less layer)."""
        return int(
            sum(
                w.size if m is None else int(m.sum())
                for (w, _), m in zip(self.layers, self.masks, strict=True)
            )
        )

    def sparsity(self) -> float:
        """Fraction of weight entries pruned by masks (0 when no masks)."""
        total = self.n_weights()
        return 1.0 - self.n_kept_weights() / total if total else 0.0

    def fp32_bytes(self) -> int:
        """Bytes of the dense float32 weights, biases and stats (the fp32 baseline, no container overhead)."""
        return 4 * (self.n_params() + self.mean.size + self.std.size)

    def cluster_bits(self) -> list[int | None]:
        """Index bits per layer (``ceil(log2 k)``), None for unclustered layers."""
        return [
            None if cb is None else max(1, int(np.ceil(np.log2(max(len(cb[0]), 2))))) for cb in self.codebooks
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: shapes, parameters, kept weights, sparsity, k per layer, stages."""
        return {
            "shapes": [list(s) for s in self.shapes],
            "hidden": list(self.hidden),
            "n_params": self.n_params(),
            "n_kept_weights": self.n_kept_weights(),
            "sparsity": round(self.sparsity(), 6),
            "k": [None if cb is None else len(cb[0]) for cb in self.codebooks],
            "quantized": self.quant is not None,
            "fp32_bytes": self.fp32_bytes(),
            "stages": [s.get("name") for s in self.stages],
        }

    def storage_bits(self) -> int:
        """A rough size estimate in bits (for tests and search ordering; the compact encoder is exact).

        Per layer: kept weights x bits per weight (index bits when clustered, ``bits`` when quantized, else 32),
        plus ``log2(1 / density)`` bits per kept weight for the positions of a masked layer, plus the
        codebook (32 bits per centroid) and 32-bit biases; 64 bits per input feature for the stats.
        """
        bits = 64 * self.n_features
        quant = self.quant or [None] * len(self.layers)
        for (w, b), mask, cb, q, kb in zip(
            self.layers, self.masks, self.codebooks, quant, self.cluster_bits(), strict=True
        ):
            kept = w.size if mask is None else int(mask.sum())
            per_weight = kb if kb is not None else (int(q.get("bits", 8)) if q is not None else 32)
            if mask is not None and kept:
                per_weight += max(1.0, float(np.log2(w.size / kept)))
            bits += int(np.ceil(kept * per_weight)) + 32 * b.size + (32 * len(cb[0]) if cb is not None else 0)
        return int(bits)

    # ------------------------------------------------------------------ inference (numpy, float32)

    def logits(self, X: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
        """Float32 logits [N] of raw features ``X`` [N, F], numpy only (no activation quantization)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"expected features [N, {self.n_features}], got shape {X.shape}")
        std = self.safe_std()
        out = np.empty(len(X), dtype=np.float32)
        for start in range(0, len(X), batch_size):
            h = (X[start : start + batch_size] - self.mean) / std
            for i, (w, b) in enumerate(self.layers):
                h = h @ w.T + b
                if i < len(self.layers) - 1:
                    np.maximum(h, 0, out=h)
            out[start : start + len(h)] = h.reshape(-1)
        return out

    def safe_std(self) -> np.ndarray:
        """``std`` float32 with non-finite or non-positive entries replaced by 1 (what inference divides by)."""
        return np.where(np.isfinite(self.std) & (self.std > 0), self.std, np.float32(1)).astype(np.float32)

    def standardize(self, X: np.ndarray) -> np.ndarray:
        """Float32 ``(X - mean) / std`` of raw features (the input of layer 0)."""
        return (np.asarray(X, dtype=np.float32) - self.mean) / self.safe_std()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities float32 [N] (sigmoid of :meth:`logits`)."""
        z = self.logits(X).astype(np.float64)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    # ------------------------------------------------------------------ structure

    def copy(self) -> CompressedMLP:
        """A deep copy."""
        return copy.deepcopy(self)

    def with_stage(self, stage: dict) -> CompressedMLP:
        """Append a stage record in place and return self (chainable)."""
        self.stages.append(copy.deepcopy(stage))
        return self

    def decoded_weight(self, i: int) -> np.ndarray:
        """Layer ``i``'s W rebuilt from its codebook and mask (or W itself when not clustered)."""
        w = self.layers[i][0]
        cb, mask = self.codebooks[i], self.masks[i]
        if cb is None:
            return w.copy()
        centroids, indices = cb
        out = centroids[indices.astype(np.intp)]
        if mask is not None:
            out = np.where(mask, out, np.float32(0))
        return out.astype(np.float32, copy=False)

    def validate(self) -> None:
        """Check the conventions in the module docstring.

        Raises:
            ConfigError: naming the layer and the broken rule.
        """
        self._validate_shapes()
        for i, ((w, _b), mask, cb) in enumerate(zip(self.layers, self.masks, self.codebooks, strict=True)):
            if not np.isfinite(w).all() or not np.isfinite(self.layers[i][1]).all():
                raise ConfigError(f"layer {i}: non-finite weights")
            if mask is not None:
                if mask.shape != w.shape:
                    raise ConfigError(f"layer {i}: mask shape {mask.shape} != weight shape {w.shape}")
                if np.any(w[~mask] != 0):
                    raise ConfigError(f"layer {i}: pruned weights are not exactly 0")
            if cb is not None:
                centroids, indices = cb
                if not 1 <= len(centroids) <= 256:
                    raise ConfigError(f"layer {i}: codebook size {len(centroids)} not in 1..256")
                if indices.shape != w.shape:
                    raise ConfigError(
                        f"layer {i}: codebook indices shape {indices.shape} != weight shape {w.shape}"
                    )
                if indices.size and int(indices.max()) >= len(centroids):
                    raise ConfigError(f"layer {i}: codebook index out of range")
                if mask is not None and np.any(indices[~mask] != 0):
                    raise ConfigError(f"layer {i}: codebook indices at pruned positions must be 0")
                if not np.array_equal(self.decoded_weight(i), w):
                    raise ConfigError(f"layer {i}: weights differ from centroids[indices]")

    def _validate_shapes(self) -> None:
        if not self.layers:
            raise ConfigError("a compressed MLP needs at least one (output) layer")
        prev = None
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ConfigError(f"layer {i}: expected W [out, in] and b [out], got {w.shape} and {b.shape}")
            if prev is not None and w.shape[1] != prev:
                raise ConfigError(f"layer {i}: input width {w.shape[1]} != previous output width {prev}")
            prev = w.shape[0]
        if prev != 1:
            raise ConfigError(f"the output layer must have one unit, got {prev}")
        if self.mean.shape != (self.n_features,) or self.std.shape != (self.n_features,):
            raise ConfigError(f"mean/std must have {self.n_features} entries")

    def equals(self, other: CompressedMLP) -> bool:
        """Bit-exact equality of weights, stats, masks, codebooks, quant and stages."""

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

        if len(self.layers) != len(other.layers):
            return False
        for i in range(len(self.layers)):
            if not (
                same(self.layers[i][0], other.layers[i][0]) and same(self.layers[i][1], other.layers[i][1])
            ):
                return False
            if not same(self.masks[i], other.masks[i]):
                return False
            ca, cb = self.codebooks[i], other.codebooks[i]
            if (ca is None) != (cb is None) or (
                ca is not None and not (same(ca[0], cb[0]) and same(ca[1], cb[1]))
            ):
                return False
        return (
            same(self.mean, other.mean)
            and same(self.std, other.std)
            and json.dumps(self.quant, sort_keys=True) == json.dumps(other.quant, sort_keys=True)
            and json.dumps(self.stages, sort_keys=True) == json.dumps(other.stages, sort_keys=True)
        )

    # ------------------------------------------------------------------ persistence (uncompressed, lossless)

    def save(self, path: str | os.PathLike) -> None:
        """Write every array to one safetensors file (no pickle), structure as JSON metadata.

        This is the lossless working format between stages, not the shipped compact artifact.
        """
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {"mean": self.mean, "std": self.std}
        for i, ((w, b), mask, cb) in enumerate(zip(self.layers, self.masks, self.codebooks, strict=True)):
            tensors[f"W{i}"] = w
            tensors[f"b{i}"] = b
            if mask is not None:
                tensors[f"mask{i}"] = mask.astype(np.uint8)
            if cb is not None:
                tensors[f"centroids{i}"] = cb[0]
                tensors[f"indices{i}"] = cb[1]
        metadata = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "n_layers": str(len(self.layers)),
            "quant": json.dumps(self.quant),
            "stages": json.dumps(self.stages),
        }
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(path), metadata=metadata
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> CompressedMLP:
        """Read a file written by :meth:`save`.

        Raises:
            ModelDirError: when the file is missing, corrupt or not a compressed MLP.
        """
        from safetensors import safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except FileNotFoundError as exc:
            raise ModelDirError(f"{path}: no such file") from exc
        except Exception as exc:
            raise ModelDirError(f"{path}: not a safetensors file ({exc})") from exc
        if metadata.get("format") != _FORMAT:
            raise ModelDirError(f"{path}: not a fraudlite compressed MLP file")
        try:
            n = int(metadata["n_layers"])
            layers = [(tensors[f"W{i}"], tensors[f"b{i}"]) for i in range(n)]
            masks = [tensors[f"mask{i}"].astype(bool) if f"mask{i}" in tensors else None for i in range(n)]
            codebooks = [
                (tensors[f"centroids{i}"], tensors[f"indices{i}"]) if f"centroids{i}" in tensors else None
                for i in range(n)
            ]
            state = cls(
                layers,
                tensors["mean"],
                tensors["std"],
                masks=masks,
                codebooks=codebooks,
                quant=json.loads(metadata["quant"]),
                stages=json.loads(metadata["stages"]),
            )
            state._validate_shapes()
        except (KeyError, ValueError) as exc:
            raise ModelDirError(f"{path}: incomplete or inconsistent compressed MLP file ({exc})") from exc
        return state


@dataclass(frozen=True)
class StageData:
    """Training and validation data handed to every technique's stage function (raw float32 features).

    Raises:
        ConfigError: on mismatched shapes (a DataError from the training loop covers the rest).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    teacher: CompressedMLP | None = field(default=None, repr=False)
    #: extra column name -> its model inputs' indices (from the feature spec; input-group pruning)
    groups: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("X_train", "X_valid"):
            x = getattr(self, name)
            if np.asarray(x).ndim != 2:
                raise ConfigError(f"{name} must be a [rows, features] matrix, got shape {np.shape(x)}")
        if len(self.X_train) != len(self.y_train) or len(self.X_valid) != len(self.y_valid):
            raise ConfigError("features and labels must have the same number of rows")
        if self.X_train.shape[1] != self.X_valid.shape[1]:
            raise ConfigError("training and validation features differ in width")


def stage_record(name: str, config: Any, before: CompressedMLP, after: CompressedMLP, **extra: Any) -> dict:
    """The JSON-ready record a stage appends to ``stages``: name, settings, size before/after, extras."""
    from dataclasses import asdict, is_dataclass

    params = asdict(config) if is_dataclass(config) else dict(config or {})
    return {
        "name": name,
        "params": json.loads(json.dumps(params, default=_jsonable)),
        "before": {k: before.summary()[k] for k in ("hidden", "n_params", "n_kept_weights", "sparsity")},
        "after": {k: after.summary()[k] for k in ("hidden", "n_params", "n_kept_weights", "sparsity", "k")},
        **json.loads(json.dumps(extra, default=_jsonable)),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple | set):
        return list(x)
    return str(x)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
