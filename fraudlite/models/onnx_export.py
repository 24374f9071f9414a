"""ONNX graphs built directly from numpy weights (no ``torch.onnx.export``), for any layer shapes.

Serving contract (``fraudlite.runtime.OnnxScorer``): one input ``features`` float32 [N, F] of RAW
features, one output ``score`` float32 [N] = fraud probability, dynamic batch dimension ``N``.

The MLP graph: ``Sub(mean) -> Div(std)`` (standardization kept explicit, not folded into the first
layer: identical arithmetic to the torch module, and raw-scale weights would hurt int8 quantization),
then ``MatMul -> Add -> Relu`` per hidden layer, ``MatMul -> Add`` for the output unit, ``Sigmoid`` and
``Reshape`` to [N]. :func:`scoring_model` wraps any logits-producing node list in the same contract, so
the baselines and compression share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fraudlite.errors import ConfigError
from fraudlite.models.mlp import FraudMLP, Layers, layer_shapes, mlp_layers

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OPSET",
    "IR_VERSION",
    "mlp_to_onnx",
    "export_mlp",
    "scoring_model",
]

INPUT_NAME = "features"
OUTPUT_NAME = "score"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; loadable by every onnxruntime since 1.11


def mlp_to_onnx(
    layers: Layers,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """An ONNX scoring graph for an MLP given as numpy weights.

    Args:
        layers: ``[(W [out, in], b [out]), ...]`` (torch convention), hidden layers with ReLU, the last
            layer a single output unit. Any widths (pruned shapes) are fine.
        mean, std: standardization stats [F]; std zeros are replaced by 1 like in the torch module.
        metadata: optional string key/values stored in the model's ``metadata_props``.

    Returns:
        A checked ``onnx.ModelProto`` honouring the serving contract.

    Raises:
        ConfigError: when the layer shapes do not chain or the stats have the wrong length.
    """
    shapes = layer_shapes(layers)
    n_features = shapes[0][1]
    mean32 = _vector(mean, n_features, "mean")
    std32 = _vector(std, n_features, "std")
    std32[~np.isfinite(std32) | (std32 <= 0)] = 1.0
    inits = [numpy_helper.from_array(mean32, "mean"), numpy_helper.from_array(std32, "std")]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "mean"], ["centered"], name="center"),
        helper.make_node("Div", ["centered", "std"], ["h0"], name="scale"),
    ]
    h = "h0"
    for i, (w, b) in enumerate(layers):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(w, np.float32).T), f"W{i}"))
        inits.append(numpy_helper.from_array(np.asarray(b, np.float32).reshape(-1), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"add{i}"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"], name=f"relu{i}"))
            h = f"h{i + 1}"
    return scoring_model(
        nodes, inits, f"z{len(layers) - 1}", n_features, name="fraudlite_mlp", metadata=metadata
    )


def export_mlp(model: FraudMLP, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialized ONNX bytes of a :class:`FraudMLP` (eval-mode semantics: no dropout)."""
    mean, std = model.normalization()
    return mlp_to_onnx(mlp_layers(model), mean, std, metadata=metadata).SerializeToString()


def scoring_model(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    logits: str,
    n_features: int,
    *,
    name: str = "fraudlite",
    extra_opsets: Mapping[str, int] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Complete a graph that reads ``features`` and computes ``logits`` [N, 1] into the contract.

    Appends ``Sigmoid`` and a ``Reshape`` to [N] named ``score``, declares the input/output with a
    dynamic batch dimension, sets opset 17 (+ ``extra_opsets`` such as ``{"ai.onnx.ml": 3}``) and runs
    the ONNX checker.

    Args:
        nodes: nodes consuming ``features`` and producing ``logits``.
        initializers: their constant tensors.
        logits: name of the [N, 1] (or [N]) float32 logits value.
        n_features: input width F.
        name: graph name.
        extra_opsets: additional operator-set domains and versions.
        metadata: string key/values for ``metadata_props``.

    Returns:
        The checked model.
    """
    tail = [
        helper.make_node("Sigmoid", [logits], ["probability"], name="sigmoid"),
        helper.make_node("Reshape", ["probability", "score_shape"], [OUTPUT_NAME], name="flatten"),
    ]
    shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), "score_shape")
    graph = helper.make_graph(
        [*nodes, *tail],
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", int(n_features)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[*initializers, shape],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(domain, version) for domain, version in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fraudlite", ir_version=IR_VERSION)
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=str(key), value=str(value)))
    onnx.checker.check_model(model)
    return model


def _vector(values: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float32).reshape(-1)
    if arr.shape != (n,):
        raise ConfigError(f"{name} must have {n} entries (one per input feature), got {arr.size}")
    return arr
