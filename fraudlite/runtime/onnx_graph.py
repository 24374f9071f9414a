"""An ONNX ``ModelProto`` for an MLP, written as protobuf bytes by hand: no ``onnx`` package.

Why: a serving process decodes a compressed model from its compact artifact into numpy arrays and needs
an ONNX Runtime session for it. Building that graph with the ``onnx`` package would make ``onnx`` a
serving dependency, and importing it was measured to add 19.5 MB RSS and ~1 s of start-up; the serving
install has only numpy + onnxruntime. An MLP graph needs a dozen protobuf fields, so they are written
here directly (validated against ``onnx.checker`` in tests/runtime/test_onnx_graph.py).

The graph honours the serving contract of :class:`fraudlite.runtime.OnnxScorer`: input ``features``
float32 [N, F] of RAW features (dim_param ``N``), output ``score`` float32 [N]. Standardization is
``Sub(mean) -> Div(std)`` on the input, in the same float32 operations as the weights' own inference
(``CompressedMLP.predict_proba``): folding it into the first layer (:func:`fold_standardization`) saves
one elementwise pass but costs float32 cancellation when |mean| >> std (an amount of ~100 with a std of
~60), measured 1.25e-6 off the weights' scores on the default model, over the 1e-6 that serving
promises. Then ``MatMul(h, W^T) -> Add(b) -> Relu``
per hidden layer and ``MatMul -> Add -> Sigmoid -> Reshape([-1])`` for the output unit. The logits stay
[N, 1] until the final Reshape, so that ORT fuses each MatMul + Add + activation into one FusedGemm.

The subset of onnx.proto written (message: field number = field), wire types varint (0) and
length-delimited (2) only, repeated scalars unpacked (proto2):

- ModelProto: 1 ir_version, 2 producer_name, 7 graph, 8 opset_import
- OperatorSetIdProto: 1 domain, 2 version
- GraphProto: 1 node, 2 name, 5 initializer, 11 input, 12 output
- NodeProto: 1 input, 2 output, 3 name, 4 op_type
- TensorProto: 1 dims, 2 data_type (FLOAT = 1, INT64 = 7), 8 name, 9 raw_data (little-endian)
- ValueInfoProto: 1 name, 2 type; TypeProto: 1 tensor_type; TypeProto.Tensor: 1 elem_type, 2 shape
- TensorShapeProto: 1 dim; TensorShapeProto.Dimension: 1 dim_value, 2 dim_param
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fraudlite.errors import ConfigError

__all__ = [
    "Layers",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "mlp_graph",
    "fold_standardization",
    "standardization",
    "check_layers",
]

Layers = Sequence[tuple[np.ndarray, np.ndarray]]
INPUT_NAME = "features"
OUTPUT_NAME = "score"
_FLOAT, _INT64 = 1, 7
_DTYPES = {np.dtype("<f4"): _FLOAT, np.dtype("<i8"): _INT64}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, like protobuf
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, value: int | str | bytes) -> bytes:
    """One field: an int as a varint, a str (UTF-8) or bytes (a message, raw data) length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    dims = b"".join(_field(1, int(d)) for d in array.shape)
    return dims + _field(2, _DTYPES[array.dtype]) + _field(8, name) + _field(9, array.tobytes())


def _value_info(name: str, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    tensor_type = _field(1, _FLOAT) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _node(op_type: str, inputs: Sequence[str], output: str) -> bytes:
    return b"".join(
        [*(_field(1, i) for i in inputs), _field(2, output), _field(3, output), _field(4, op_type)]
    )


def check_layers(layers: Layers) -> int:
    """The input width F; raises ConfigError unless the shapes chain and the last layer has one unit."""
    if not layers:
        raise ConfigError("an MLP needs at least one layer")
    width = np.shape(layers[0][0])[1]
    for i, (w, b) in enumerate(layers):
        if np.ndim(w) != 2 or np.shape(w)[1] != width or np.shape(b) != (np.shape(w)[0],):
            raise ConfigError(f"layer {i}: W {np.shape(w)} and b {np.shape(b)} do not chain from {width}")
        width = np.shape(w)[0]
    if width != 1:
        raise ConfigError(f"the last layer must have one output unit, got {width}")
    return int(np.shape(layers[0][0])[1])


def fold_standardization(
    layers: Layers, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """float32 layers with ``(x - mean) / std`` folded into layer 0: W0' = W0 / std, b0' = b0 - W0' @ mean.

    Computed in float64, cast once. Saves two elementwise passes over the input per call; the cost is
    float32 cancellation in ``W0' x + b0'`` when |mean| >> std. std entries that are not finite or <= 0
    count as 1 (as in the torch module).
    """
    n_features = check_layers(layers)
    out = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
    if mean is None and std is None:
        return out
    w0, b0 = np.asarray(layers[0][0], np.float64), np.asarray(layers[0][1], np.float64)
    mu = np.zeros(n_features) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    sd = np.ones(n_features) if std is None else np.array(std, np.float64).reshape(-1)
    if mu.shape != (n_features,) or sd.shape != (n_features,):
        raise ConfigError(f"mean and std need {n_features} entries, got {mu.size} and {sd.size}")
    sd[~np.isfinite(sd) | (sd <= 0)] = 1.0
    w0 = w0 / sd
    # a row sum, not ``w0 @ mu``: a BLAS call here would start OpenBLAS (its buffers: ~0.4 MB of RSS) in a
    # serving process that never needs it
    out[0] = (w0.astype(np.float32), (b0 - (w0 * mu).sum(axis=1)).astype(np.float32))
    return out


def standardization(
    n_features: int, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 (mean, std) [F] to compute ``(x - mean) / std`` with, std entries that are not finite or
    <= 0 as 1 (as in the torch module and ``CompressedMLP.safe_std``); None without stats."""
    if mean is None and std is None:
        return None
    mu = np.zeros(n_features, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)
    sd = np.ones(n_features, np.float32) if std is None else np.array(std, np.float32).reshape(-1)
    if mu.shape != (n_features,) or sd.shape != (n_features,):
        raise ConfigError(f"mean and std need {n_features} entries, got {mu.size} and {sd.size}")
    sd[~np.isfinite(sd) | (sd <= 0)] = 1.0
    return mu, sd


def mlp_graph(layers: Layers, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> bytes:
    """Serialized ONNX ModelProto (opset 17, IR 8) scoring RAW features with this MLP.

    Args:
        layers: ``[(W float32 [out, in], b float32 [out]), ...]`` in torch order; ReLU after every
            layer but the last, which has one unit and a sigmoid.
        mean, std: optional standardization stats [F] (``Sub`` and ``Div`` on the input).
    """
    n_features = check_layers(layers)
    folded = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
    nodes, inits, h = [], [], INPUT_NAME
    stats = standardization(n_features, mean, std)
    if stats is not None:
        inits += [_tensor("mean", stats[0]), _tensor("std", stats[1])]
        nodes += [_node("Sub", [h, "mean"], "centered"), _node("Div", ["centered", "std"], "standardized")]
        h = "standardized"
    for i, (w, b) in enumerate(folded):
        inits += [_tensor(f"W{i}", np.ascontiguousarray(w.T)), _tensor(f"b{i}", b)]
        nodes += [_node("MatMul", [h, f"W{i}"], f"mm{i}"), _node("Add", [f"mm{i}", f"b{i}"], f"z{i}")]
        h = f"h{i + 1}"
        nodes.append(_node("Relu" if i < len(folded) - 1 else "Sigmoid", [f"z{i}"], h))
    inits.append(_tensor("score_shape", np.array([-1], np.int64)))
    nodes.append(_node("Reshape", [h, "score_shape"], OUTPUT_NAME))
    graph = b"".join(
        [
            *(_field(1, n) for n in nodes),
            _field(2, "fraudlite_mlp"),
            *(_field(5, t) for t in inits),
            _field(11, _value_info(INPUT_NAME, ["N", int(folded[0][0].shape[1])])),
            _field(12, _value_info(OUTPUT_NAME, ["N"])),
        ]
    )
    opset = _field(1, "") + _field(2, 17)
    return _field(1, 8) + _field(2, "fraudlite") + _field(7, graph) + _field(8, opset)
