"""ONNX files of a :class:`CompressedMLP`: small on disk, fp32-fast at run time, no torch needed.

What a compressed model ships is its compact artifact, not these graphs (the serving form is built in
memory from it, :mod:`fraudlite.compression.served`); these are for whoever wants an ONNX file of a
stage (the report's per-stage sizes and speeds, the benchmarks, other tools).

What we measured on the 2-core target (single thread, see ``benchmarks/RESULTS.md``): for MLPs this
small, int8 matmuls (ORT dynamic, static QDQ or QOperator) are *slower* than fp32 at batch 1 and usually
at batch 256 too; the quantize/dequantize work costs more than the tiny matmuls save. What makes the
runnable model fast is fewer, smaller nodes: the structured-pruned / distilled shapes, the
standardization folded into the first layer, and a graph ORT turns into one ``FusedGemm`` per layer
(``MatMul+Add+Relu``, the output unit's ``MatMul+Add+Sigmoid``) and a free ``Reshape``. (A 1-D
``MatMul`` for the output unit looks leaner but misses the fusion and was 3x slower at batch 256.)

What makes it small on disk is the *storage* of the weights, not their run-time precision: every float
array (stats, biases, codebooks, unclustered weights) is pooled into one blob, fp16 where that is exact
(a second fp32 blob holds the rest); the clustered layers are indices into one shared codebook whose
entry 0 is the 0.0 of pruned positions, stored as bytes or packed to ``ceil(log2 K)`` bits, whichever
file is smaller (unpacking costs ~10 nodes, worth it from ~1,000 weights). Small constant subgraphs
(Cast -> Split; unpack -> ``Gather`` -> Split -> Reshape; ``Div`` by std for the folding) rebuild the
fp32 weights; ONNX Runtime's constant folding runs them once when the session is created, so the graph
that runs is the plain fp32 one (checked in the tests) and the scores equal the ``CompressedMLP``'s
weights (up to the fp32 rounding of the folded standardization).

Serving contract: input ``features`` float32 [N, F] (raw), output ``score`` float32 [N].
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RUNNABLE_OPSET",
    "compressed_to_onnx",
    "fp32_runnable",
    "reference_scores",
    "max_score_diff",
]

INPUT_NAME = "features"
OUTPUT_NAME = "score"
RUNNABLE_OPSET = 17
_IR_VERSION = 8
_STORAGES = ("compact", "fp32")


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def init(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, array: np.ndarray) -> str:
        """A shared small constant (deduplicated by value)."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(array, "k")
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name("t")
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def multi(self, op_type: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        outs = [self.name("t") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs


def _fp16_exact(a: np.ndarray) -> bool:
    return a.astype(np.float16).astype(np.float32).tobytes() == a.tobytes()


def _pooled_floats(g: _Graph, pieces: dict[str, np.ndarray]) -> dict[str, str]:
    """All float pieces in (at most) two blobs, fp16 where exact: one initializer, Cast and Split each."""
    out: dict[str, str] = {}
    groups = {True: {}, False: {}}
    for key, a in pieces.items():
        groups[_fp16_exact(a)][key] = a
    for half, group in groups.items():
        if not group:
            continue
        blob = np.concatenate([a.reshape(-1) for a in group.values()]).astype(
            np.float16 if half else np.float32
        )
        x = g.init(blob, "f")
        if half:
            x = g.op("Cast", [x], to=TensorProto.FLOAT)
        names = (
            [x]
            if len(group) == 1
            else g.multi(
                "Split",
                [x, g.const(np.array([a.size for a in group.values()], np.int64))],
                len(group),
                axis=0,
            )
        )
        out.update(zip(group, names, strict=True))
    return out


def _unpacked_indices(g: _Graph, idx: np.ndarray, pack: bool) -> str:
    """int32 [n] indices: ``bits``-bit packed (MSB first) and decoded by a constant subgraph, or plain
    uint8/uint16 + Cast (fewer nodes: smaller for small models)."""
    top = int(idx.max()) if idx.size else 0
    if not pack:
        dtype = np.uint8 if top < 256 else np.uint16
        return g.op("Cast", [g.init(idx.astype(dtype), "p")], to=TensorProto.INT32)
    bits = max(1, top.bit_length())
    n = idx.size
    bit_matrix = (
        (idx.reshape(-1, 1).astype(np.uint32) >> np.arange(bits - 1, -1, -1, dtype=np.uint32)) & 1
    ).astype(np.uint8)
    packed = np.packbits(bit_matrix.reshape(-1))
    x = g.op("Cast", [g.init(packed, "p")], to=TensorProto.INT32)
    x = g.op("Unsqueeze", [x, g.const(np.array([1], np.int64))])
    x = g.op("Div", [x, g.const(np.array([128, 64, 32, 16, 8, 4, 2, 1], np.int32))])
    x = g.op("Mod", [x, g.const(np.array([2], np.int32))])
    x = g.op("Reshape", [x, g.const(np.array([-1], np.int64))])
    x = g.op("Slice", [x, g.const(np.array([0], np.int64)), g.const(np.array([n * bits], np.int64))])
    x = g.op("Reshape", [x, g.const(np.array([n, bits], np.int64))])
    x = g.op("Mul", [x, g.const((1 << np.arange(bits - 1, -1, -1)).astype(np.int32))])
    return g.op("ReduceSum", [x, g.const(np.array([1], np.int64))], keepdims=0)


def _tensors(g: _Graph, c: CompressedMLP, storage: str, pack: bool) -> tuple[str, str, list[tuple[str, str]]]:
    """Names of mean, std and each layer's (W^T [in, out], b), all fp32 at run time.

    ``compact``: every float array in one or two pooled blobs (fp16 where exact); the clustered layers'
    weights as indices into one shared codebook (entry 0 = 0.0 for pruned positions) -> Gather -> Split
    -> Reshape. ``fp32``: one plain initializer per tensor.
    """
    std = c.safe_std()
    if storage == "fp32":
        layers = [(g.init(np.ascontiguousarray(w.T)), g.init(b)) for w, b in c.layers]
        return g.init(c.mean), g.init(std), layers
    pieces: dict[str, np.ndarray] = {"mean": c.mean, "std": std}
    codebook, index_parts, clustered = [np.zeros(1, np.float32)], [], []
    offset = 1
    for i, ((w, b), mask, cb) in enumerate(zip(c.layers, c.masks, c.codebooks, strict=True)):
        pieces[f"b{i}"] = b
        if cb is None:
            pieces[f"w{i}"] = np.ascontiguousarray(w.T)
            continue
        centroids, indices = cb
        idx = indices.astype(np.int64) + offset
        if mask is not None:
            idx = np.where(mask, idx, 0)
        index_parts.append(np.ascontiguousarray(idx.T).reshape(-1))
        codebook.append(centroids)
        clustered.append(i)
        offset += len(centroids)
    if clustered:
        pieces["codebook"] = np.concatenate(codebook).astype(np.float32)
    names = _pooled_floats(g, pieces)
    weights: dict[int, str] = {}
    if clustered:
        idx = _unpacked_indices(g, np.concatenate(index_parts), pack)
        flat = g.op("Gather", [names["codebook"], idx], axis=0)
        sizes = [c.layers[i][0].size for i in clustered]
        parts = (
            [flat]
            if len(sizes) == 1
            else g.multi("Split", [flat, g.const(np.array(sizes, np.int64))], len(sizes), axis=0)
        )
        for i, part in zip(clustered, parts, strict=True):
            weights[i] = g.op("Reshape", [part, g.const(np.array(c.layers[i][0].T.shape, np.int64))])
    for i, (w, _) in enumerate(c.layers):
        if i not in weights:
            weights[i] = g.op("Reshape", [names[f"w{i}"], g.const(np.array(w.T.shape, np.int64))])
    return names["mean"], names["std"], [(weights[i], names[f"b{i}"]) for i in range(len(c.layers))]


def compressed_to_onnx(
    c: CompressedMLP,
    *,
    storage: str = "compact",
    fold_standardization: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The runnable scoring graph of a compressed MLP.

    Args:
        c: the compressed model (any shapes; masks and codebooks optional).
        storage: ``"compact"`` (pooled fp16-where-exact floats, clustered layers as indices into one
            shared codebook, packed to ``ceil(log2 K)`` bits or as bytes, whichever file is smaller) or
            ``"fp32"`` (plain fp32 initializers, the input for ORT's int8 quantizers).
        fold_standardization: fold ``(x - mean) / std`` into layer 0 (``W / std``, ``b - (mean / std) W``,
            computed by ORT at load); off keeps explicit ``Sub``/``Div`` nodes (better for int8).
        metadata: string key/values for ``metadata_props``.

    Returns:
        A checked ``onnx.ModelProto``: ``features`` float32 [N, F] -> ``score`` float32 [N].

    Raises:
        ConfigError: on an unknown storage or inconsistent shapes.
    """
    if storage not in _STORAGES:
        raise ConfigError(f"storage must be one of {', '.join(_STORAGES)}, got {storage!r}")
    c._validate_shapes()
    if storage == "compact" and any(cb is not None for cb in c.codebooks):
        built = [_build(c, storage, pack, fold_standardization, metadata) for pack in (False, True)]
        return min(built, key=lambda m: m.ByteSize())
    return _build(c, storage, False, fold_standardization, metadata)


def _build(
    c: CompressedMLP, storage: str, pack: bool, fold: bool, metadata: Mapping[str, str] | None
) -> onnx.ModelProto:
    g = _Graph()
    mean_name, std_name, layers = _tensors(g, c, storage, pack)
    h = INPUT_NAME
    n = len(layers)
    for i, (wt, bias) in enumerate(layers):
        if i == 0 and fold:
            wt = g.op("Div", [wt, g.op("Unsqueeze", [std_name, g.const(np.array([1], np.int64))])])
            shift = g.op("MatMul", [mean_name, wt])  # (mean / std) @ W == mean @ (W / std)
            bias = g.op("Sub", [bias, shift])
        elif i == 0:
            h = g.op("Div", [g.op("Sub", [h, mean_name]), std_name])
        z = g.op("Add", [g.op("MatMul", [h, wt]), bias])
        if i < n - 1:
            h = g.op("Relu", [z])
        else:  # [N, 1]: ORT fuses MatMul+Add+Sigmoid into one FusedGemm; the Reshape is free
            prob = g.op("Sigmoid", [z])
            g.nodes.append(
                helper.make_node("Reshape", [prob, g.const(np.array([-1], np.int64))], [OUTPUT_NAME])
            )
    graph = helper.make_graph(
        g.nodes,
        "fraudlite_compressed",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c.n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", RUNNABLE_OPSET)],
        producer_name="fraudlite",
        ir_version=_IR_VERSION,
    )
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=str(key), value=str(value)))
    onnx.checker.check_model(model)
    return model


def reference_scores(c: CompressedMLP, X: np.ndarray) -> np.ndarray:
    """Fraud probabilities of ``c`` computed in float64 numpy (the torch module's arithmetic, exactly
    ordered: standardize, then the layers), float32 [N]. The yardstick for exported graphs."""
    std = c.safe_std().astype(np.float64)
    h = (np.asarray(X, dtype=np.float64) - c.mean.astype(np.float64)) / std
    for i, (w, b) in enumerate(c.layers):
        h = h @ w.astype(np.float64).T + b.astype(np.float64)
        if i < len(c.layers) - 1:
            h = np.maximum(h, 0.0)
    return (1.0 / (1.0 + np.exp(-h.reshape(-1)))).astype(np.float32)


def fp32_runnable(
    c: CompressedMLP, storage: str = "auto", metadata: Mapping[str, str] | None = None
) -> bytes:
    """The fp32-compute runnable graph (standardization folded); ``storage="auto"`` keeps the smaller
    of the compact and plain-fp32 weight storages (identical scores, both fp32 at run time)."""
    if storage not in ("auto", *_STORAGES):
        raise ConfigError(f"storage must be auto, compact or fp32, got {storage!r}")
    options = _STORAGES if storage == "auto" else (storage,)
    built = [compressed_to_onnx(c, storage=s, metadata=metadata).SerializeToString() for s in options]
    return min(built, key=len)


def max_score_diff(onnx_bytes: bytes, c: CompressedMLP, X: np.ndarray) -> float:
    """Largest |score difference| between the ONNX graph and ``c``'s weights (float64 reference)."""
    from fraudlite.runtime import OnnxScorer

    return float(np.max(np.abs(OnnxScorer(onnx_bytes).score(X) - reference_scores(c, X)))) if len(X) else 0.0
