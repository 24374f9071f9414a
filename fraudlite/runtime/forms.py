"""The runnable forms of an MLP scorer: one model, several ways to compute it, chosen by measurement.

A compressed model decodes to numpy layers (weights, biases, optional pruning masks) and standardization
stats. Which way of running it is fastest depends on the model's widths, its sparsity, the batch sizes
and the machine (:mod:`fraudlite.runtime.choice` times them), so every form scores the same inputs to
the same probabilities (within float32 rounding):

- ``ort-dense`` (:class:`OrtDense`): the graph of :func:`~fraudlite.runtime.onnx_graph.mlp_graph` in
  an ONNX Runtime session; fused MatMul+Add+activation, the fastest on wide layers or big batches.
- ``numpy-dense`` (:class:`NumpyDense`): the same arithmetic in numpy, no onnxruntime in the process.
- ``numpy-sparse`` (:class:`NumpySparse`): pruned layers as a padded-CSR gather + batched matmul, work
  proportional to the kept weights (per output unit, padded to the fullest one); pays off only at a
  few percent density, since a dense BLAS matmul is far faster per multiply.
- ``numpy-folded``, ``ort-folded`` (:mod:`~fraudlite.runtime.folded`): the standardization folded into
  the first layer wherever that costs no precision, so raw rows go straight into the first matmul (two
  elementwise passes fewer over a wide input).

Each takes RAW float32 features [N, F] and returns float32 probabilities [N]; inputs above 65536 rows
go through in chunks to bound the temporaries. The numpy forms also give the logit (``logit``): a
probability saturates at 1.0 in float32 once the logit passes ~17, where reason codes still need to tell
two rows apart. Importing this module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.util import find_spec
from typing import Protocol, runtime_checkable

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.runtime.folded import NumpyFolded, OrtFolded, foldable, sigmoid_of_negative_logit
from fraudlite.runtime.onnx_graph import Layers, check_layers, mlp_graph, standardization

__all__ = [
    "Form",
    "FORMS",
    "OrtDense",
    "NumpyDense",
    "NumpySparse",
    "build_forms",
    "make_form",
    "used_inputs",
    "InputSubset",
    "one_blas_thread",
    "CHUNK_ROWS",
]

CHUNK_ROWS = 65536  # as OnnxScorer.score: bounds the per-call temporaries
# Used inputs spanning at most this many times their number are read as one slice, the unused ones
# among them with their zero weights (bench_wide's 75 of 332 inputs, one hole: 1.77x the fp32 model's
# rows/s at batch 256 with a gather of the 75, 2.28x with the slice of 76; two runs, noisy machine).
_SPAN_RATIO = 1.25
_GATHER_ELEMENTS = 1 << 22  # float32 elements (16 MB) per gather of a pruned layer
Masks = Sequence[np.ndarray | None] | None
Kernel = Callable[[np.ndarray], np.ndarray]


@runtime_checkable
class Form(Protocol):
    """A runnable scorer: RAW float32 features [N, F] -> float32 fraud probabilities [N]."""

    name: str
    needs_onnxruntime: bool  # a serving process that loads only numpy forms never imports it

    def score(self, features: np.ndarray) -> np.ndarray: ...


def one_blas_thread():
    """Limit numpy's BLAS to one thread, as serving runs it (ONNX Runtime sessions get one thread too).
    Applies at once, for the process (the scorer); used as a ``with`` block, the old limit is back after
    it (timing the forms in ``choice``).

    Why: an OpenBLAS thread spins for a while after each call, waiting for more work; in a scorer on two
    cores it takes the core the Kafka client's threads need. Measured in bench_streaming: the numpy-dense
    model at 0.80x the msg/s of the fp32 ONNX one with OpenBLAS's default two threads. A scorer's matmuls
    (a batch of 2,000 x a few dozen units) take well under a millisecond on one thread.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _masked(layers: Layers, masks: Masks) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layers with pruned weights set to exactly zero (a mask may be None: layer not pruned)."""
    masks = list(masks) if masks is not None else [None] * len(layers)
    if len(masks) != len(layers):
        raise ConfigError(f"{len(masks)} masks for {len(layers)} layers")
    out = []
    for i, ((w, b), m) in enumerate(zip(layers, masks, strict=True)):
        if m is not None and np.shape(m) != np.shape(w):
            raise ConfigError(f"layer {i}: mask {np.shape(m)} does not match W {np.shape(w)}")
        out.append((w if m is None else np.where(np.asarray(m, bool), w, 0), b))
    return out


def _chunked(run: Kernel, features: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) <= CHUNK_ROWS:
        return run(x)
    return np.concatenate([run(x[i : i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """float32 ``1 / (1 + exp(-z))`` in place, five ufunc calls (per-call overhead is what a tiny model's
    batch of one costs). z is clipped to +-88 first, where exp stays finite in float32 and the sigmoid
    is already 1 or below 1e-38: no overflow, and the error stays within float32 rounding."""
    np.clip(z, -88.0, 88.0, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _dense_t(w: np.ndarray, b: np.ndarray) -> Kernel:
    """A dense layer on transposed activations ([units, N], the layout of :func:`_padded_csr`)."""
    w, b = np.ascontiguousarray(w), b.reshape(-1, 1)

    def layer(h: np.ndarray) -> np.ndarray:
        z = w @ h
        z += b
        return z

    return layer


def _padded_csr(w: np.ndarray, b: np.ndarray) -> Kernel:
    """A pruned layer on transposed activations: z[j] = b[j] + vals[j] @ h[cols[j]] for each output unit.

    CSR rows padded to the longest one (ELLPACK): each output unit's kept input columns and weights,
    padding entries pointing at column 0 with weight 0, so an output unit with no kept weight sums to
    its bias. The gather ``h[cols]`` [out, k, N] then goes through one batched matmul; measured 5-10x
    faster than the unpadded gather + ``np.add.reduceat`` (an unvectorized loop over segments) at
    3-30% density. The gather is done a slice of samples at a time to bound its size.
    """
    rows, kept = np.nonzero(w)  # row-major: each output unit's kept weights are contiguous
    counts = np.bincount(rows, minlength=w.shape[0])
    width = max(int(counts.max(initial=0)), 1)
    slot = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    cols = np.zeros((w.shape[0], width), np.intp)
    vals = np.zeros((w.shape[0], 1, width), np.float32)
    cols[rows, slot], vals[rows, 0, slot] = kept, w[rows, kept]
    b = b.reshape(-1, 1)
    step = max(1, _GATHER_ELEMENTS // cols.size)

    def layer(h: np.ndarray) -> np.ndarray:
        n = h.shape[1]
        if n <= step:
            z = (vals @ h[cols]).reshape(-1, n)
        else:
            z = np.empty((len(cols), n), np.float32)
            for i in range(0, n, step):
                z[:, i : i + step] = (vals @ h[cols, i : i + step])[:, 0]
        z += b
        return z

    return layer


class _NumpyMLP:
    """Shared numpy scoring loop over per-layer kernels: ReLU in place between layers, sigmoid last."""

    name = ""
    needs_onnxruntime = False

    def __init__(
        self, kernels: list[Kernel], transposed: bool = False, standardize: Kernel | None = None
    ) -> None:
        self._kernels = kernels
        self._transposed = transposed
        self._standardize = standardize or (lambda x: x)

    def score(self, features: np.ndarray) -> np.ndarray:
        return _chunked(lambda x: _sigmoid(self._logit(x)), features)

    def logit(self, features: np.ndarray) -> np.ndarray:
        """The output unit before the sigmoid, float32 [N]."""
        return _chunked(self._logit, features)

    def _logit(self, x: np.ndarray) -> np.ndarray:
        x = self._standardize(x)
        h = np.ascontiguousarray(x.T) if self._transposed else x
        for kernel in self._kernels[:-1]:
            h = kernel(h)
            np.maximum(h, 0, out=h)
        return self._kernels[-1](h).reshape(-1)


def _standardizer(layers: Layers, mean: np.ndarray | None, std: np.ndarray | None) -> Kernel:
    """``(x - mean) / std`` in float32, the weights' own arithmetic (not folded into layer 0: see
    :mod:`~fraudlite.runtime.onnx_graph`); the identity without stats."""
    stats = standardization(check_layers(layers), mean, std)
    if stats is None:
        return lambda x: x
    mu, sd = stats

    def run(x: np.ndarray) -> np.ndarray:
        z = x - mu
        z /= sd
        return z

    return run


class NumpyDense:
    """numpy matmuls on pre-transposed contiguous float32 W^T after ``(x - mean) / std``, and
    as few ufunc calls per batch as the arithmetic allows (a tiny model's batch of one is call overhead:
    ~1 us per call). Every hidden layer carries one extra unit that is constantly 1 after its ReLU, so
    the next layer's bias is a row of its weight matrix (one add fewer per layer), and the output layer
    is negated so that the sigmoid is ``1 / (1 + exp(-z))`` without a negation: 13 calls for two hidden
    layers instead of 18. Same probabilities as the other forms within float32 rounding."""

    name = "numpy-dense"
    needs_onnxruntime = False

    def __init__(
        self, layers: Layers, mean: np.ndarray | None, std: np.ndarray | None, masks: Masks = None
    ) -> None:
        self._standardize = _standardizer(layers, mean, std)
        folded = _masked(layers, masks)
        last = len(folded) - 1
        self._b0 = np.append(folded[0][1], np.float32(1)).astype(np.float32) if last else -folded[0][1]
        mats = []
        for i, (w, b) in enumerate(folded):
            wt = w.T.astype(np.float32)  # [in, out]
            if i > 0:  # the previous layer's constant unit carries this layer's bias
                wt = np.vstack([wt, b[None, :]])
            if i < last:  # this layer's constant unit: weight 0 from every input, 1 from the constant
                extra = np.zeros((wt.shape[0], 1), np.float32)
                if i > 0:
                    extra[-1, 0] = 1
                wt = np.hstack([wt, extra])
            mats.append(np.ascontiguousarray(-wt if i == last else wt))
        self._mats = mats

    def score(self, features: np.ndarray) -> np.ndarray:
        return _chunked(self._run, features)

    def logit(self, features: np.ndarray) -> np.ndarray:
        """The output unit before the sigmoid, float32 [N]."""
        return _chunked(lambda x: -self._negative_logit(x), features)

    def _negative_logit(self, x: np.ndarray) -> np.ndarray:
        mats = self._mats
        h = self._standardize(x) @ mats[0]
        h += self._b0
        for m in mats[1:]:
            np.maximum(h, 0, out=h)
            h = h @ m
        return h.reshape(-1)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return sigmoid_of_negative_logit(self._negative_logit(x))


class NumpySparse(_NumpyMLP):
    """Pruned layers (those with a mask) as padded-CSR gathers + one batched matmul, the others dense;
    activations transposed ([units, N]) throughout so that every gather reads contiguous rows."""

    name = "numpy-sparse"

    def __init__(
        self, layers: Layers, mean: np.ndarray | None, std: np.ndarray | None, masks: Masks = None
    ) -> None:
        pruned = list(masks) if masks is not None else [None] * len(layers)
        kernels = [
            _dense_t(w, b) if m is None else _padded_csr(w, b)
            for (w, b), m in zip(_masked(layers, masks), pruned, strict=True)
        ]
        super().__init__(kernels, transposed=True, standardize=_standardizer(layers, mean, std))


class OrtDense:
    """The :func:`mlp_graph` bytes in an ONNX Runtime session (imported here, not with this module)."""

    name = "ort-dense"
    needs_onnxruntime = True

    def __init__(
        self,
        layers: Layers,
        mean: np.ndarray | None,
        std: np.ndarray | None,
        masks: Masks = None,
        threads: int = 1,
    ) -> None:
        from fraudlite.runtime.session import OnnxScorer

        self.scorer = OnnxScorer(mlp_graph(_masked(layers, masks), mean, std), threads=threads)

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.scorer.score(features, batch_size=CHUNK_ROWS)


FORMS: dict[str, type] = {
    form.name: form for form in (OrtDense, NumpyDense, NumpySparse, OrtFolded, NumpyFolded)
}
"""Every form class by name (the manifest's ``runtime.form``)."""


class InputSubset:
    """A form run on the inputs some kept first-layer weight reads (input-group pruning masked the
    others' whole columns out): the same probabilities, with the first matmul only as wide as the
    inputs used. A contiguous run of used inputs is a slice, else a gather."""

    def __init__(self, inner: Form, columns: np.ndarray) -> None:
        self.inner, self.columns = inner, np.asarray(columns, np.intp)
        self.name, self.needs_onnxruntime = inner.name, inner.needs_onnxruntime
        lo, hi = int(self.columns[0]), int(self.columns[-1]) + 1
        self._slice = slice(lo, hi) if hi - lo == len(self.columns) else None
        if hasattr(inner, "logit"):  # the numpy forms' logit, for reason codes (ServedModel.log_odds)
            self.logit = lambda features: inner.logit(self._take(features))

    def _take(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features)
        return x[:, self._slice] if self._slice is not None else x.take(self.columns, axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.inner.score(self._take(features))


def used_inputs(layers: Layers, masks: Masks = None) -> np.ndarray:
    """bool [F]: the inputs some kept weight of layer 0 reads (all of them without a layer-0 mask)."""
    m0 = None if masks is None else list(masks)[0]
    n = np.shape(layers[0][0])[1]
    return np.ones(n, bool) if m0 is None else np.asarray(m0, bool).any(axis=0)


def _narrowed(layers: Layers, mean, std, masks: Masks):
    """(used input indices or None when all are used, and the arguments of a form over them)."""
    used = used_inputs(layers, masks)
    if used.all() or not used.any():
        return None, (layers, mean, std, masks)
    cols = np.flatnonzero(used)
    if cols[-1] + 1 - cols[0] <= _SPAN_RATIO * len(cols):  # a few holes: read the whole run (a slice)
        cols = np.arange(cols[0], cols[-1] + 1)
        if len(cols) == len(used):
            return None, (layers, mean, std, masks)
    (w0, b0), rest = layers[0], list(layers[1:])
    masks = list(masks)
    m0 = np.asarray(masks[0], bool)[:, cols]
    stats = standardization(len(used), mean, std)
    mean, std = (None, None) if stats is None else (stats[0][cols], stats[1][cols])
    return cols, ([(np.asarray(w0)[:, cols], b0), *rest], mean, std, [None if m0.all() else m0, *masks[1:]])


def make_form(name: str, layers: Layers, mean, std, masks: Masks = None) -> Form:
    """The form ``name`` (``FORMS``) of these weights, over the used inputs only (:class:`InputSubset`)."""
    cols, args = _narrowed(layers, mean, std, masks)
    form = FORMS[name](*args)
    return form if cols is None else InputSubset(form, cols)


def build_forms(
    layers: Layers, mean: np.ndarray | None, std: np.ndarray | None, masks: Masks = None
) -> dict[str, Form]:
    """Every form that applies: ort-dense when onnxruntime is installed, numpy-dense always,
    numpy-sparse when some mask drops at least one weight (otherwise it is numpy-dense, slower);
    with standardization stats, numpy-folded when some column folds and ort-folded when every one does
    (``folded.foldable``; without stats folding changes nothing). Inputs no kept weight reads are not
    read (:class:`InputSubset`)."""
    cols, args = _narrowed(layers, mean, std, masks)
    forms = _every_form(*args)
    return forms if cols is None else {n: InputSubset(f, cols) for n, f in forms.items()}


def _every_form(layers: Layers, mean, std, masks: Masks) -> dict[str, Form]:
    forms: dict[str, Form] = {}
    ort = find_spec("onnxruntime") is not None
    if ort:
        forms[OrtDense.name] = OrtDense(layers, mean, std, masks)
    forms[NumpyDense.name] = NumpyDense(layers, mean, std, masks)
    if masks is not None and any(m is not None and not np.all(m) for m in masks):
        forms[NumpySparse.name] = NumpySparse(layers, mean, std, masks)
    if mean is not None or std is not None:
        fold = foldable(check_layers(layers), mean, std)
        if ort and fold.all():
            forms[OrtFolded.name] = OrtFolded(layers, mean, std, masks)
        if fold.any():
            forms[NumpyFolded.name] = NumpyFolded(layers, mean, std, masks)
    return forms
