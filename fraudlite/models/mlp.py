"""The fraud MLP: configuration, the torch module, numpy views of its layers, safetensors persistence.

The module takes RAW features: ``mean``/``std`` buffers standardize inside ``forward``, so the same
weights export to an ONNX graph with the serving contract (raw ``features`` in, ``score`` out).
``forward`` returns logits [N]; the fraud probability is their sigmoid.

Layers as numpy follow torch's convention: a list of ``(W, b)`` with ``W`` float32 [out, in] and ``b``
float32 [out], hidden layers first and the single-unit output layer last. Compression works on this list
(pruned shapes included) and rebuilds a module with :meth:`FraudMLP.from_layers`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fraudlite.errors import ConfigError, ModelDirError

__all__ = [
    "MLPConfig",
    "TEACHER_CONFIG",
    "FraudMLP",
    "Layers",
    "mlp_layers",
    "layer_shapes",
    "save_mlp",
    "load_mlp",
]

Layers = list[tuple[np.ndarray, np.ndarray]]

_LOSSES = ("bce", "focal")
_SCHEDULES = ("cosine", "constant")
_FORMAT = "fraudlite.mlp"
_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class MLPConfig:
    """Architecture and training settings of a :class:`FraudMLP`.

    Attributes:
        hidden: hidden layer widths, input side first (may be empty: logistic regression).
        dropout: dropout probability after every hidden ReLU.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW (decoupled) weight decay.
        batch_size: training rows per step.
        max_epochs: upper bound on epochs.
        patience: epochs without a validation AP improvement before stopping.
        loss: ``"bce"`` (weighted binary cross-entropy) or ``"focal"``.
        focal_gamma: focusing exponent of the focal loss.
        pos_weight: weight of a fraud row in the loss; None = ``sqrt(n_neg / n_pos)`` from the data
            (softened balancing: full ``n_neg / n_pos`` over-predicts fraud and costs precision).
        schedule: ``"cosine"`` (decay over ``max_epochs``, after a one-epoch warm-up) or ``"constant"``.
        seed: seeds weight init, dropout and shuffling.
    """

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    max_epochs: int = 40
    patience: int = 5
    loss: str = "bce"
    focal_gamma: float = 2.0
    pos_weight: float | None = None
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            hidden = tuple(int(h) for h in self.hidden)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"hidden must be a sequence of layer widths, got {self.hidden!r}") from exc
        object.__setattr__(self, "hidden", hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"hidden layer widths must be >= 1, got {hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loss not in _LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(_LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.pos_weight is not None and not (math.isfinite(self.pos_weight) and self.pos_weight > 0):
            raise ConfigError(f"pos_weight must be > 0 or None, got {self.pos_weight}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict (``hidden`` as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: on an unknown key or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown MLP setting(s): {', '.join(unknown)}")
        return cls(**d)


TEACHER_CONFIG = MLPConfig(hidden=(256, 128, 64), dropout=0.2, weight_decay=1e-4)
"""A wider, deeper configuration: the teacher for knowledge distillation."""


class FraudMLP(nn.Module):
    """Standardize -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear(1); returns logits [N].

    Args:
        n_features: input width.
        config: architecture (``hidden``, ``dropout``) and the training settings kept with the weights.
        mean: per-feature mean for standardization (default 0).
        std: per-feature scale (default 1; zeros and non-finite values are replaced by 1).

    Raises:
        ConfigError: when ``n_features < 1`` or the stats do not have ``n_features`` entries.
    """

    def __init__(
        self,
        n_features: int,
        config: MLPConfig | None = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        config = config or MLPConfig()
        if n_features < 1:
            raise ConfigError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)
        self.config = config
        self.register_buffer("mean", torch.from_numpy(_stat(mean, n_features, 0.0, "mean")))
        self.register_buffer("std", torch.from_numpy(_safe_std(_stat(std, n_features, 1.0, "std"))))
        widths = [self.n_features, *config.hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        for layer in self.layers[:-1]:
            h = self.dropout(torch.relu(layer(h)))
        return self.layers[-1](h).squeeze(-1)

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Replace the standardization stats (std zeros -> 1)."""
        self.mean.copy_(torch.from_numpy(_stat(mean, self.n_features, 0.0, "mean")))
        self.std.copy_(torch.from_numpy(_safe_std(_stat(std, self.n_features, 1.0, "std"))))

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 numpy copies."""
        return self.mean.detach().cpu().numpy().copy(), self.std.detach().cpu().numpy().copy()

    @classmethod
    def from_layers(
        cls, layers: Layers, mean: np.ndarray, std: np.ndarray, config: MLPConfig | None = None
    ) -> FraudMLP:
        """Build a module holding exactly these weights; ``config.hidden`` is set from their shapes.

        Args:
            layers: ``[(W [out, in], b [out]), ...]``, output layer last with one unit.
            mean, std: standardization stats, one per input feature.
            config: settings to keep (dropout, training settings); default ``MLPConfig()``.

        Raises:
            ConfigError: when the shapes do not chain or the output layer is not one unit.
        """
        shapes = layer_shapes(layers)
        hidden = tuple(out for out, _ in shapes[:-1])
        model = cls(shapes[0][1], replace(config or MLPConfig(), hidden=hidden), mean, std)
        with torch.no_grad():
            for layer, (w, b) in zip(model.layers, layers, strict=True):
                layer.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
                layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1)))
        return model


def mlp_layers(model: FraudMLP) -> Layers:
    """The model's linear layers as float32 numpy copies ``[(W [out, in], b [out]), ...]``."""
    return [
        (
            layer.weight.detach().cpu().numpy().astype(np.float32, copy=True),
            layer.bias.detach().cpu().numpy().astype(np.float32, copy=True),
        )
        for layer in model.layers
    ]


def save_mlp(model: FraudMLP, path: str | os.PathLike) -> None:
    """Write the weights, stats, config and input width to one safetensors file (no pickle).

    Args:
        model: the module to save.
        path: destination file (conventionally ``*.safetensors``).
    """
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "n_features": str(model.n_features),
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_mlp(path: str | os.PathLike) -> FraudMLP:
    """Read a file written by :func:`save_mlp` (safetensors only; never unpickles).

    Args:
        path: the safetensors file.

    Returns:
        The module in eval mode.

    Raises:
        ModelDirError: when the file is missing or not a fraudlite MLP.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError as exc:
        raise ModelDirError(f"{path}: no such weights file") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelDirError(f"{path}: not a safetensors file ({exc})") from exc
    if metadata.get("format") != _FORMAT:
        raise ModelDirError(f"{path}: not a fraudlite MLP weights file")
    try:
        config = MLPConfig.from_dict(json.loads(metadata["config"]))
        n_layers = len(config.hidden) + 1
        layers = [
            (tensors[f"layers.{i}.weight"].numpy(), tensors[f"layers.{i}.bias"].numpy())
            for i in range(n_layers)
        ]
        model = FraudMLP.from_layers(layers, tensors["mean"].numpy(), tensors["std"].numpy(), config)
    except (KeyError, ValueError) as exc:
        raise ModelDirError(f"{path}: incomplete or inconsistent MLP weights file ({exc})") from exc
    if model.n_features != int(metadata.get("n_features", model.n_features)):
        raise ModelDirError(f"{path}: n_features in metadata does not match the weights")
    return model.eval()


def _stat(values: np.ndarray | None, n: int, default: float, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=np.float32)
    arr = np.array(values, dtype=np.float32).reshape(-1)
    if arr.shape != (n,):
        raise ConfigError(f"{name} must have {n} entries, got {arr.size}")
    return arr


def _safe_std(std: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(std) | (std <= 0)
    std[bad] = 1.0
    return std


def layer_shapes(layers: Layers) -> list[tuple[int, int]]:
    if not layers:
        raise ConfigError("an MLP needs at least one (output) layer")
    shapes = []
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w)
        b = np.asarray(b).reshape(-1)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ConfigError(f"layer {i}: expected W [out, in] and b [out], got {w.shape} and {b.shape}")
        if shapes and w.shape[1] != shapes[-1][0]:
            raise ConfigError(f"layer {i}: input width {w.shape[1]} != previous output width {shapes[-1][0]}")
        shapes.append((int(w.shape[0]), int(w.shape[1])))
    if shapes[-1][0] != 1:
        raise ConfigError(f"the output layer must have one unit, got {shapes[-1][0]}")
    return shapes
