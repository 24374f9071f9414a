"""ONNX export built from numpy weights: contract, parity with torch, arbitrary (pruned) shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from fraudlite.errors import ConfigError
from fraudlite.models import (
    FraudMLP,
    MLPConfig,
    export_mlp,
    mlp_layers,
    mlp_to_onnx,
    predict_logits,
    train_mlp,
)
from fraudlite.runtime import OnnxScorer


def _raw_features(n: int, n_features: int = 20, seed: int = 3) -> np.ndarray:
    """Raw-scale inputs: amounts in the thousands, counts, small ratios."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(0.01, 5000, n_features)
    return (rng.normal(size=(n, n_features)) * scale + scale).astype(np.float32)


def _random_model(hidden: tuple[int, ...], n_features: int = 20, seed: int = 0) -> FraudMLP:
    torch.manual_seed(seed)
    X = _raw_features(2000, n_features, seed)
    return FraudMLP(n_features, MLPConfig(hidden=hidden), X.mean(axis=0), X.std(axis=0)).eval()


def _torch_proba(model: FraudMLP, X: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(predict_logits(model, X))).numpy()


@pytest.mark.parametrize("hidden", [(64, 32), (256, 128, 64), (7,), ()])
@pytest.mark.parametrize("batch", [1, 1000])
def test_onnx_matches_torch(hidden, batch):
    model = _random_model(hidden)
    X = _raw_features(batch, seed=11)
    scores = OnnxScorer(export_mlp(model)).score(X)
    assert scores.dtype == np.float32 and scores.shape == (batch,)
    assert np.max(np.abs(scores - _torch_proba(model, X))) < 1e-5


def test_trained_model_parity():
    rng = np.random.default_rng(0)
    X = _raw_features(3000)
    y = (X[:, 19] + rng.normal(0, 3000, 3000) > 9000).astype(np.int8)
    model, _ = train_mlp(X[:2000], y[:2000], X[2000:], y[2000:], MLPConfig(hidden=(16, 8), max_epochs=2))
    for batch in (1, 1000):
        scores = OnnxScorer(export_mlp(model)).score(X[:batch])
        assert np.max(np.abs(scores - _torch_proba(model, X[:batch]))) < 1e-5


def test_pruned_layer_shapes_from_numpy():
    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(size=(5, 20)).astype(np.float32), rng.normal(size=5).astype(np.float32)),
        (rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=2).astype(np.float32)),
        (rng.normal(size=(1, 2)).astype(np.float32), rng.normal(size=1).astype(np.float32)),
    ]
    X = _raw_features(500)
    mean, std = X.mean(axis=0), X.std(axis=0)
    scores = OnnxScorer(mlp_to_onnx(layers, mean, std).SerializeToString()).score(X)
    reference = FraudMLP.from_layers(layers, mean, std).eval()
    assert np.max(np.abs(scores - _torch_proba(reference, X))) < 1e-5


def test_graph_contract():
    model = _random_model((8, 4))
    proto = mlp_to_onnx(mlp_layers(model), *model.normalization(), metadata={"model_version": "v1"})
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "features" and out.name == "score"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value") and in_dims[1].dim_value == 20
    assert len(out.type.tensor_type.shape.dim) == 1 and out.type.tensor_type.shape.dim[0].dim_param
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    assert {p.key: p.value for p in proto.metadata_props} == {"model_version": "v1"}
    ops = [node.op_type for node in proto.graph.node]
    assert ops[:2] == ["Sub", "Div"] and ops[-2:] == ["Sigmoid", "Reshape"]


def test_zero_std_is_safe():
    layers = [(np.ones((1, 3), np.float32), np.zeros(1, np.float32))]
    proto = mlp_to_onnx(layers, mean=np.zeros(3), std=np.array([1.0, 0.0, 2.0]))
    scores = OnnxScorer(proto.SerializeToString()).score(np.ones((4, 3), np.float32))
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-2.5)), rtol=1e-6)


def test_bad_shapes_raise_config_error():
    layers = [(np.ones((1, 3), np.float32), np.zeros(1, np.float32))]
    with pytest.raises(ConfigError, match="mean"):
        mlp_to_onnx(layers, mean=np.zeros(4), std=np.ones(3))
    with pytest.raises(ConfigError):
        mlp_to_onnx([(np.ones((2, 3), np.float32), np.zeros(2, np.float32))], np.zeros(3), np.ones(3))
