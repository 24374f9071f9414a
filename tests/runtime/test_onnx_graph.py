"""The hand-written ONNX MLP graph: valid for the ``onnx`` checker, same scores as numpy, fused by ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fraudlite.errors import ConfigError
from fraudlite.runtime import OnnxScorer, session_options
from fraudlite.runtime.onnx_graph import fold_standardization, mlp_graph


def _mlp(widths: list[int], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            (0.1 * rng.standard_normal(n_out)).astype(np.float32),
        )
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


def _reference(layers, mean, std, x: np.ndarray) -> np.ndarray:
    """float64 numpy: standardize, ReLU layers, sigmoid."""
    h = np.asarray(x, np.float64)
    if mean is not None:
        sd = np.array(std, np.float64)
        sd[~np.isfinite(sd) | (sd <= 0)] = 1.0
        h = (h - mean) / sd
    for i, (w, b) in enumerate(layers):
        h = h @ np.asarray(w, np.float64).T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return 1 / (1 + np.exp(-h[:, 0]))


def _stats(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return (3 * rng.standard_normal(n)).astype(np.float32), rng.uniform(0.5, 3, n).astype(np.float32)


def _features(mean, std, n: int, rng: np.random.Generator) -> np.ndarray:
    return (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)


@pytest.mark.parametrize("widths", [[20, 24, 12, 1], [20, 1], [300, 512, 256, 1]])
def test_onnx_checker_accepts_the_graph(widths):
    rng = np.random.default_rng(0)
    model = onnx.load_from_string(mlp_graph(_mlp(widths, rng), *_stats(widths[0], rng)))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.producer_name) == (8, "fraudlite")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "features" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [(d.dim_param, d.dim_value) for d in inp.type.tensor_type.shape.dim] == [("N", 0), ("", widths[0])]
    assert out.name == "score" and [d.dim_param for d in out.type.tensor_type.shape.dim] == ["N"]
    assert {n.op_type for n in model.graph.node} == {
        "Sub", "Div", "MatMul", "Add", "Relu", "Sigmoid", "Reshape"
    } - ({"Relu"} if len(widths) == 2 else set())  # fmt: skip


@pytest.mark.parametrize("widths", [[20, 24, 12, 1], [20, 1], [300, 512, 256, 1]])
@pytest.mark.parametrize("standardize", [True, False])
def test_ort_scores_match_a_float64_reference(widths, standardize):
    rng = np.random.default_rng(1)
    layers = _mlp(widths, rng)
    stats = _stats(widths[0], rng)
    mean, std = stats if standardize else (None, None)
    x = _features(*stats, 500, rng)
    scores = OnnxScorer(mlp_graph(layers, mean, std)).score(x)
    assert scores.dtype == np.float32 and scores.shape == (500,)
    np.testing.assert_allclose(scores, _reference(layers, mean, std, x), rtol=0, atol=1e-6)


def test_unusable_std_entries_count_as_one():
    rng = np.random.default_rng(2)
    layers = _mlp([6, 4, 1], rng)
    mean, std = _stats(6, rng)
    std[:4] = [0.0, -2.0, np.nan, np.inf]
    x = _features(mean, np.ones(6, np.float32), 50, rng)
    scores = OnnxScorer(mlp_graph(layers, mean, std)).score(x)
    np.testing.assert_allclose(scores, _reference(layers, mean, std, x), rtol=0, atol=1e-6)


def test_folding_is_done_in_float64_and_the_graph_standardizes_explicitly():
    rng = np.random.default_rng(3)
    layers = _mlp([5, 3, 1], rng)
    mean, std = _stats(5, rng)
    (w0, b0), *rest = fold_standardization(layers, mean, std)
    w64 = layers[0][0].astype(np.float64) / std.astype(np.float64)
    np.testing.assert_array_equal(w0, w64.astype(np.float32))
    np.testing.assert_array_equal(b0, (layers[0][1] - w64 @ mean.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(rest[0][0], layers[1][0])
    ops = [n.op_type for n in onnx.load_from_string(mlp_graph(layers, mean, std)).graph.node]
    assert ops[:2] == ["Sub", "Div"]  # not folded: see the next test
    assert "Sub" not in [n.op_type for n in onnx.load_from_string(mlp_graph(layers)).graph.node]


def test_ort_fuses_every_layer_into_fused_gemm(tmp_path):
    """The [N, 1] logits until the final Reshape let ORT fuse MatMul + Add + Relu/Sigmoid per layer."""
    opts = session_options()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    graph = mlp_graph(_mlp([20, 24, 12, 1], np.random.default_rng(4)))
    ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops == ["FusedGemm", "FusedGemm", "FusedGemm", "Reshape"]


@pytest.mark.parametrize(
    "layers",
    [
        [],
        [(np.zeros((3, 4)), np.zeros(3)), (np.zeros((1, 2)), np.zeros(1))],  # widths do not chain
        [(np.zeros((3, 4)), np.zeros(2)), (np.zeros((1, 3)), np.zeros(1))],  # bias length
        [(np.zeros((2, 4)), np.zeros(2))],  # two output units
    ],
)
def test_malformed_layers_are_config_errors(layers):
    with pytest.raises(ConfigError):
        mlp_graph(layers)


def test_stats_of_the_wrong_length_are_config_errors():
    with pytest.raises(ConfigError, match="4 entries"):
        mlp_graph([(np.zeros((1, 4)), np.zeros(1))], np.zeros(3), np.ones(3))
