"""The folded forms: the input standardization folded into the first layer wherever that is exact.

Why: a wide model (hundreds of inputs: the one-hot and hashed blocks of a bank's extra columns) spends
a good part of a call on ``(x - mean) / std``, two elementwise passes over the whole [N, F] input, and
ONNX Runtime cannot fuse them into the first MatMul. Folding them, ``W0' = W0 / std`` and
``b0' = b0 - W0' @ mean`` (float64, cast once), sends the raw rows straight into the matmul. The
algebra holds for any input (nothing assumes a one-hot row), so the folded forms score every row the
other forms score, the perturbed rows of reason codes included.

What folding may cost is float32 precision: ``W0' x + b0'`` cancels when ``|mean| >> std`` (measured
1.25e-6 off the weights' scores on the default model, over the 1e-6 serving promises; see
:mod:`~fraudlite.runtime.onnx_graph`). A column's rounding error grows from ``|x - mean| / std`` to
``(|x| + |mean|) / std``, so a column is folded only when ``|mean| <= FOLD_RATIO * std``
(:func:`foldable`): every column of a clustered model (the clustering stage moves the mean into the
first bias: stats of mean 0), a one-hot column of a category in at most half the rows
(``mean / std = sqrt(p / (1 - p)) <= 1``), a rare-event column. The others are standardized
explicitly, as in the other forms, on their own columns only.

- ``numpy-folded`` (:class:`NumpyFolded`): ``x @ W0'`` plus, for the explicit columns,
  ``((x[:, cols] - mean) / std) @ W0[cols]``, then the layers of ``NumpyDense`` (a constant unit
  carries each next bias). Offered whenever a model has stats and some column folds.
- ``ort-folded`` (:class:`OrtFolded`): :func:`~fraudlite.runtime.onnx_graph.mlp_graph` of the folded
  layers in an ONNX Runtime session: no Sub/Div nodes, one fused MatMul+Add+Relu per layer. Offered
  only when every column folds (a Gather of the explicit columns measured slower than Sub/Div).

Measured on the 332-input model of ``benchmarks/bench_wide.py`` (20 built-in features, one-hot mcc,
channel, country, 256 hashed merchant buckets; 64x32 hidden, 50% pruned, clustered), rows/s against
its fp32 ONNX file in one run: ort-folded 1.13x / 1.27x / 1.35x at batch 1 / 256 / 2,000, numpy-folded
0.98x / 1.03x / 1.11x, ort-dense 1.01x / 1.01x / 0.99x. Also measured there and left out: an
embedding lookup of the one-hot blocks (each block's 1 found by a matrix-vector product with
``0..width-1``, the batch proven one-hot by two more passes, then one folded weight row per block
gathered; else the matmul): exact, but 1.13x at batch 256 (the lookups and the proof cost ~90 us of the
~130 us of matmul they replace in numpy calls) and 1.6x at 2,000, slower than ort-folded where the
chooser measures, and it needs the spec's block layout wherever forms are built. Dynamic int8
(``quantize_dynamic``) of these layers: 0.8x-1.4x of fp32, scores changed by ~0.02. Importing this module
imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.runtime.onnx_graph import (
    Layers,
    check_layers,
    fold_standardization,
    mlp_graph,
    standardization,
)

__all__ = ["FOLD_RATIO", "foldable", "sigmoid_of_negative_logit", "NumpyFolded", "OrtFolded"]

FOLD_RATIO = 1.0
_CHUNK_ROWS = 65536  # as forms.CHUNK_ROWS: bounds the per-call temporaries
Masks = Sequence[np.ndarray | None] | None


def foldable(n_features: int, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """bool [F]: the columns whose standardization folds into layer 0 without cancellation,
    ``|mean| <= FOLD_RATIO * std`` (std not finite or <= 0 counts as 1); all of them without stats."""
    stats = standardization(n_features, mean, std)
    if stats is None:
        return np.ones(n_features, bool)
    mu, sd = stats
    return np.abs(mu.astype(np.float64)) <= FOLD_RATIO * sd.astype(np.float64)


def _masked(layers: Layers, masks: Masks) -> list[tuple[np.ndarray, np.ndarray]]:
    """float32 layers with pruned weights exactly zero (a mask may be None: the layer is dense)."""
    masks = list(masks) if masks is not None else [None] * len(layers)
    if len(masks) != len(layers):
        raise ConfigError(f"{len(masks)} masks for {len(layers)} layers")
    out = []
    for i, ((w, b), m) in enumerate(zip(layers, masks, strict=True)):
        w = np.asarray(w, np.float32)
        if m is not None and np.shape(m) != w.shape:
            raise ConfigError(f"layer {i}: mask {np.shape(m)} does not match W {w.shape}")
        out.append(
            (w if m is None else np.where(np.asarray(m, bool), w, np.float32(0)), np.asarray(b, np.float32))
        )
    return out


def sigmoid_of_negative_logit(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(z))`` in place on float32 ``z`` = -logit (the numpy forms' last step)."""
    np.minimum(z, 88.0, out=z)  # exp stays finite in float32; the sigmoid is below 1e-38 there
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


class NumpyFolded:
    """numpy matmuls on raw features: the foldable columns' standardization inside W0 (float64 fold,
    cast once), the other columns standardized on their own; same probabilities as the other forms
    within float32 rounding."""

    name = "numpy-folded"
    needs_onnxruntime = False

    def __init__(
        self, layers: Layers, mean: np.ndarray | None, std: np.ndarray | None, masks: Masks = None
    ) -> None:
        n_features = check_layers(layers)
        layers = _masked(layers, masks)
        fold = foldable(n_features, mean, std)
        stats = standardization(n_features, mean, std)
        w0, b0 = layers[0][0].astype(np.float64), layers[0][1].astype(np.float64)
        explicit = np.flatnonzero(~fold)
        if stats is not None:
            mu, sd = (s.astype(np.float64) for s in stats)
            w0[:, fold] /= sd[fold]
            b0 = b0 - (w0[:, fold] * mu[fold]).sum(axis=1)  # a row sum: no BLAS call at load
        last = len(layers) - 1  # > 0: hidden layers follow layer 0

        def first(wt: np.ndarray) -> np.ndarray:  # layer 0 as [in, out (+ the constant unit)]
            if not last:
                return -wt  # the output unit itself: negated, as every last layer
            return np.hstack([wt, np.zeros((wt.shape[0], 1))])

        self._cols = explicit
        if len(explicit):
            self._mu, self._sd = stats[0][explicit], stats[1][explicit]
            self._w_explicit = np.ascontiguousarray(first(w0[:, explicit].T), dtype=np.float32)
            w0[:, explicit] = 0  # their contribution comes from the explicit matmul
        self._b0 = (np.append(b0, 1) if last else -b0).astype(np.float32)
        mats = [first(w0.T)]
        for i, (w, b) in enumerate(layers[1:], 1):
            wt = np.vstack([w.T, b[None, :]])  # the previous layer's constant unit carries this bias
            if i < last:  # this layer's constant unit: 1 from the previous constant, 0 from the rest
                extra = np.zeros((wt.shape[0], 1), np.float32)
                extra[-1, 0] = 1
                wt = np.hstack([wt, extra])
            mats.append(-wt if i == last else wt)
        self._mats = [np.ascontiguousarray(m, dtype=np.float32) for m in mats]

    def score(self, features: np.ndarray) -> np.ndarray:
        return self._chunked(self._run, features)

    def logit(self, features: np.ndarray) -> np.ndarray:
        """The output unit before the sigmoid, float32 [N]."""
        return self._chunked(lambda x: -self._negative_logit(x), features)

    @staticmethod
    def _chunked(run, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if len(x) <= _CHUNK_ROWS:
            return run(x)
        return np.concatenate([run(x[i : i + _CHUNK_ROWS]) for i in range(0, len(x), _CHUNK_ROWS)])

    def _negative_logit(self, x: np.ndarray) -> np.ndarray:
        return self._upper(self._first(x))

    def _first(self, x: np.ndarray) -> np.ndarray:
        """Layer 0's pre-activation (plus the constant unit), float32 [N, out (+1)]."""
        h = x @ self._mats[0]
        self._add_explicit(x, h)
        return h

    def _add_explicit(self, x: np.ndarray, h: np.ndarray) -> None:
        """``h`` += the explicitly standardized columns' part of layer 0, and the bias."""
        if len(self._cols):
            z = x.take(self._cols, axis=1)
            z -= self._mu
            z /= self._sd
            h += z @ self._w_explicit
        h += self._b0

    def _upper(self, h: np.ndarray) -> np.ndarray:
        """The layers above layer 0: ReLU in place, then each matmul; the negated logit [N]."""
        for m in self._mats[1:]:
            np.maximum(h, 0, out=h)
            h = h @ m
        return h.reshape(-1)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return sigmoid_of_negative_logit(self._negative_logit(x))


class OrtFolded:
    """:func:`mlp_graph` of the folded layers in an ONNX Runtime session (imported here, not with this
    module). Only for a model whose every column folds (:func:`foldable`)."""

    name = "ort-folded"
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

        n_features = check_layers(layers)
        if not foldable(n_features, mean, std).all():
            raise ConfigError("ort-folded needs every column foldable (|mean| <= std); use numpy-folded")
        folded = fold_standardization(_masked(layers, masks), mean, std)
        self.scorer = OnnxScorer(mlp_graph(folded), threads=threads)

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.scorer.score(features, batch_size=_CHUNK_ROWS)
