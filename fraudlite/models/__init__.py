"""fraudlite.models: the training side — torch MLP, training loop, sklearn baselines, ONNX export.

Imports torch and scikit-learn; the serving path (``fraudlite.streaming``, ``fraudlite.runtime``) never
imports this package.
"""

from fraudlite.models.baselines import BASELINE_KINDS, Baseline, baseline_to_onnx, train_baseline
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
from fraudlite.models.train import (
    LossFn,
    classification_loss,
    default_pos_weight,
    predict_logits,
    predict_proba,
    run_training,
    standardization_stats,
    train_mlp,
)

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
