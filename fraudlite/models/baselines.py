"""sklearn baselines (logistic regression, HistGradientBoosting) and their ONNX converters.

The converters are written here (skl2onnx 1.20 is broken with scikit-learn 1.9 + onnx 1.23) and honour
the same serving contract as the MLP (raw ``features`` in, ``score`` probability out):

* logistic regression = the scaler's standardization + one linear unit: exactly an MLP without hidden
  layers, so it reuses :func:`fraudlite.models.onnx_export.mlp_to_onnx`.
* HistGradientBoosting = ``ai.onnx.ml.TreeEnsembleRegressor`` (BRANCH_LEQ, the ``x <= threshold -> left``
  rule of sklearn, NaN routed by ``missing_go_to_left``) summing every tree's leaf plus the baseline
  prediction, then ``Sigmoid``. sklearn compares float64 thresholds; the float32 threshold written is
  the largest float32 not above it, which gives the same decision for every float32 input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fraudlite.errors import ConfigError, DataError
from fraudlite.models.loop import default_pos_weight
from fraudlite.models.onnx_export import INPUT_NAME, mlp_to_onnx, scoring_model

__all__ = ["BASELINE_KINDS", "Baseline", "train_baseline", "baseline_to_onnx"]

BASELINE_KINDS = ("logreg", "hgb")

Baseline = Pipeline | HistGradientBoostingClassifier
"""A trained baseline: ``Pipeline(StandardScaler, LogisticRegression)`` or a HistGradientBoosting model."""


def train_baseline(
    kind: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    seed: int = 0,
    threads: int | None = 1,
) -> Baseline:
    """Fit a baseline on raw features.

    Args:
        kind: ``"logreg"`` or ``"hgb"``.
        X_train, y_train: float32 [N, F] raw features and 0/1 labels.
        X_valid, y_valid: validation data; HistGradientBoosting early-stops on it (loss), logistic
            regression ignores it.
        seed: random state.
        threads: OpenMP/BLAS threads while fitting; None = all cores. Default 1: on shared cores
            OpenMP's spinning barriers make HistGradientBoosting 10-50x slower, not faster.

    Returns:
        The fitted sklearn estimator (``predict_proba(X)[:, 1]`` is the fraud probability).

    Raises:
        ConfigError: on an unknown ``kind``.
        DataError: on mismatched shapes or single-class labels.
    """
    if kind not in BASELINE_KINDS:
        raise ConfigError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_KINDS)}")
    if X_train.ndim != 2 or len(X_train) != len(y_train):
        raise DataError(f"training features {X_train.shape} and labels ({len(y_train)}) do not match")
    default_pos_weight(y_train)  # both classes present
    y_train = np.asarray(y_train, dtype=np.int64)
    with threadpool_limits(limits=threads):
        if kind == "logreg":
            return _logreg(seed).fit(X_train, y_train)
        model = _hgb(seed, validation=X_valid is not None)
        if X_valid is None:
            return model.fit(X_train, y_train)
        return model.fit(X_train, y_train, X_val=X_valid, y_val=np.asarray(y_valid, dtype=np.int64))


def baseline_to_onnx(model: Baseline) -> onnx.ModelProto:
    """Convert a baseline from :func:`train_baseline` to the serving ONNX contract.

    Args:
        model: a fitted ``Pipeline(StandardScaler, LogisticRegression)`` or
            ``HistGradientBoostingClassifier`` (binary, numeric features).

    Returns:
        A checked ONNX model: ``features`` float32 [N, F] -> ``score`` float32 [N].

    Raises:
        ConfigError: for any other estimator, a multi-class model or categorical splits.
    """
    if isinstance(model, HistGradientBoostingClassifier):
        return _hgb_to_onnx(model)
    if isinstance(model, Pipeline):
        return _logreg_to_onnx(model)
    raise ConfigError(f"cannot convert {type(model).__name__}; expected a baseline from train_baseline")


def _logreg(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=1.0, max_iter=1000, random_state=seed)),
        ]
    )


def _hgb(seed: int, validation: bool) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        learning_rate=0.1,
        max_iter=500,
        max_leaf_nodes=31,
        min_samples_leaf=20,
        l2_regularization=1.0,
        early_stopping=True if validation else "auto",
        n_iter_no_change=20,
        random_state=seed,
    )


def _logreg_to_onnx(pipe: Pipeline) -> onnx.ModelProto:
    steps = [step for _, step in pipe.steps]
    if (
        len(steps) != 2
        or not isinstance(steps[0], StandardScaler)
        or not isinstance(steps[1], LogisticRegression)
    ):
        raise ConfigError("expected Pipeline(StandardScaler, LogisticRegression)")
    scaler, logreg = steps
    if logreg.coef_.shape[0] != 1:
        raise ConfigError("only binary logistic regression is supported")
    n = logreg.coef_.shape[1]
    mean = scaler.mean_ if scaler.with_mean else np.zeros(n)
    scale = scaler.scale_ if scaler.with_std else np.ones(n)
    layers = [(logreg.coef_.astype(np.float32), logreg.intercept_.astype(np.float32))]
    return mlp_to_onnx(layers, mean, scale, metadata={"fraudlite_model": "logreg"})


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value (so ``x32 <= t`` iff ``x32 <= t32``)."""
    t32 = values.astype(np.float32)
    above = t32.astype(np.float64) > values
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _hgb_to_onnx(model: HistGradientBoostingClassifier) -> onnx.ModelProto:
    if len(model.classes_) != 2:
        raise ConfigError("only binary HistGradientBoosting models are supported")
    if getattr(model, "_preprocessor", None) is not None or model.is_categorical_ is not None:
        raise ConfigError("HistGradientBoosting models with categorical features are not supported")
    attrs: dict[str, list] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for tree_id, (predictor,) in enumerate(model._predictors):
        _add_tree(attrs, tree_id, predictor.nodes)
    node = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        ["logits"],
        domain="ai.onnx.ml",
        name="trees",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[float(np.asarray(model._baseline_prediction).reshape(-1)[0])],
        **attrs,
    )
    return scoring_model(
        [node],
        [],
        "logits",
        model.n_features_in_,
        name="fraudlite_hgb",
        extra_opsets={"ai.onnx.ml": 3},
        metadata={"fraudlite_model": "hgb"},
    )


def _add_tree(attrs: dict[str, list], tree_id: int, nodes: np.ndarray) -> None:
    if nodes["is_categorical"].any():
        raise ConfigError("HistGradientBoosting models with categorical splits are not supported")
    n = len(nodes)
    leaf = nodes["is_leaf"].astype(bool)
    attrs["nodes_treeids"] += [tree_id] * n
    attrs["nodes_nodeids"] += list(range(n))
    attrs["nodes_featureids"] += np.where(leaf, 0, nodes["feature_idx"]).astype(int).tolist()
    attrs["nodes_values"] += (
        np.where(leaf, 0.0, _float32_at_most(nodes["num_threshold"])).astype(float).tolist()
    )
    attrs["nodes_modes"] += ["LEAF" if is_leaf else "BRANCH_LEQ" for is_leaf in leaf]
    attrs["nodes_truenodeids"] += np.where(leaf, 0, nodes["left"]).astype(int).tolist()
    attrs["nodes_falsenodeids"] += np.where(leaf, 0, nodes["right"]).astype(int).tolist()
    attrs["nodes_missing_value_tracks_true"] += (
        np.where(leaf, 0, nodes["missing_go_to_left"]).astype(int).tolist()
    )
    leaves = np.flatnonzero(leaf)
    attrs["target_treeids"] += [tree_id] * len(leaves)
    attrs["target_nodeids"] += leaves.tolist()
    attrs["target_ids"] += [0] * len(leaves)
    attrs["target_weights"] += nodes["value"][leaves].astype(float).tolist()
