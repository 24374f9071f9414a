"""fraudlite.models: the training side — torch MLP, training loop, sklearn baselines, ONNX export.

Names are imported lazily (PEP 562): ``fraudlite.models.metrics`` is pure numpy and is used by
evaluation and scoring, which must not pay for (or, when serving, even load) torch and scikit-learn
just because they live in this package. ``from fraudlite.models import train_mlp`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fraudlite.models.baselines import BASELINE_KINDS, Baseline, baseline_to_onnx, train_baseline
    from fraudlite.models.loop import (
        LossFn,
        classification_loss,
        default_pos_weight,
        predict_logits,
        predict_proba,
        run_training,
        standardization_stats,
        train_mlp,
    )
    from fraudlite.models.mlp import (
        TEACHER_CONFIG,
        FraudMLP,
        Layers,
        MLPConfig,
        layer_shapes,
        load_mlp,
        mlp_layers,
        save_mlp,
    )
    from fraudlite.models.onnx_export import INPUT_NAME, OUTPUT_NAME, export_mlp, mlp_to_onnx, scoring_model

__all__ = [
    "MLPConfig",
    "TEACHER_CONFIG",
    "FraudMLP",
    "Layers",
    "layer_shapes",
    "mlp_layers",
    "save_mlp",
    "load_mlp",
    "LossFn",
    "standardization_stats",
    "default_pos_weight",
    "classification_loss",
    "predict_logits",
    "predict_proba",
    "run_training",
    "train_mlp",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "mlp_to_onnx",
    "export_mlp",
    "scoring_model",
    "BASELINE_KINDS",
    "Baseline",
    "train_baseline",
    "baseline_to_onnx",
]

_WHERE = {
    **dict.fromkeys(["MLPConfig", "TEACHER_CONFIG", "FraudMLP", "Layers", "layer_shapes"], "mlp"),
    **dict.fromkeys(["mlp_layers", "save_mlp", "load_mlp"], "mlp"),
    **dict.fromkeys(["LossFn", "standardization_stats", "default_pos_weight", "classification_loss"], "loop"),
    **dict.fromkeys(["predict_logits", "predict_proba", "run_training", "train_mlp"], "loop"),
    **dict.fromkeys(
        ["INPUT_NAME", "OUTPUT_NAME", "mlp_to_onnx", "export_mlp", "scoring_model"], "onnx_export"
    ),
    **dict.fromkeys(["BASELINE_KINDS", "Baseline", "train_baseline", "baseline_to_onnx"], "baselines"),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"fraudlite.models.{_WHERE[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'fraudlite.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
