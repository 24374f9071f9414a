"""Clustering-aware training (the weight-sharing counterpart of quantization-aware training): before the
final k-means of :func:`fraudlite.compression.cluster.cluster_stage`, the network trains with every kept
weight replaced in the forward pass by its nearest centroid, gradients passing straight through to the
full-precision weights (Bengio et al. 2013's straight-through estimator; TF-MOT's clustering-preserving
QAT and DKM use the same idea). Assignments may change while training and the per-layer centroids are
re-fitted by warm-started Lloyd iterations every ``ste_refit_steps`` optimizer steps, so the weights
settle into clusters the loss agrees with; plain k-means of an unprepared layer lost up to ~0.13
validation AP before centroid fine-tuning here. Sparsity is kept (pruned weights stay exactly 0).

:func:`compute_ste_centroids` is the pure part (centroids of a layer from its kept weights, warm
started); :func:`apply_ste_training` trains a state and returns it with the codebooks it trained with.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fraudlite.compression.finetune import OriginalView, mask_hooks, train, training_model
from fraudlite.compression.kmeans import _assign, compute_codebook
from fraudlite.compression.state import Codebook, CompressedMLP, StageData

__all__ = ["compute_ste_centroids", "apply_ste_training"]


def compute_ste_centroids(
    weights: np.ndarray, mask: np.ndarray | None, centroids: np.ndarray, iterations: int = 2
) -> np.ndarray:
    """A few Lloyd iterations of the kept weights from ``centroids`` (ascending; empty clusters keep
    their centroid so the count stays fixed while training).

    Returns:
        float32 centroids, ascending.
    """
    vals = np.asarray(weights, dtype=np.float64).reshape(-1)
    if mask is not None:
        vals = vals[np.asarray(mask, dtype=bool).reshape(-1)]
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    if vals.size == 0 or c.size < 2:
        return c.astype(np.float32)
    for _ in range(int(iterations)):
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, vals)
        counts = np.bincount(idx, minlength=len(c))
        sums = np.bincount(idx, weights=vals, minlength=len(c))
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
    return c.astype(np.float32)


def apply_ste_training(
    state: CompressedMLP,
    data: StageData,
    config: object,
    progress: Callable[[str], None] | None = None,
    teacher: object = None,
) -> tuple[CompressedMLP, list[Codebook]]:
    """Train ``state`` for ``config.ste_epochs`` with nearest-centroid weights in the forward pass.

    Args:
        state: an unclustered (possibly pruned) model.
        data: training rows (and validation rows, used only when ``config.early_stopping``).
        config: a ``ClusterConfig`` (k per layer, init, training settings, ``ste_epochs``,
            ``ste_refit_steps``).
        progress: one line per epoch.
        teacher: a frozen module for knowledge distillation (``config.kd_alpha > 0``), or None.

    Returns:
        ``(state, codebooks)``: the trained full-precision weights (masks kept) and one codebook per layer
        (the final centroids and nearest-centroid indices: the weights the forward pass trained with).
    """
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    epochs = int(getattr(config, "ste_epochs", 0))
    model = training_model(state, config)
    keeps = [
        torch.ones_like(layer.weight) if m is None else torch.from_numpy(np.asarray(m, dtype=np.float32))
        for layer, m in zip(model.layers, state.masks, strict=True)
    ]
    centroids = [
        torch.from_numpy(compute_codebook(w, m, config.k_for(i), config.init, config.max_iter)[0].copy())
        for i, ((w, _b), m) in enumerate(zip(state.layers, state.masks, strict=True))
    ]

    class Snap(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i = i

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            c = centroids[self.i]
            if c.numel() < 2:
                q = c.expand_as(w)
            else:
                q = c[torch.bucketize(w.detach(), (c[1:] + c[:-1]) / 2)]
            return (w + (q - w).detach()) * keeps[self.i]

    for i, layer in enumerate(model.layers):
        parametrize.register_parametrization(layer, "weight", Snap(i))
    originals = OriginalView(model)  # the masks act on the full-precision weights under Snap
    after_backward, mask_step = mask_hooks(originals, list(state.masks))
    steps = [0]
    refit = max(1, int(getattr(config, "ste_refit_steps", 20)))

    def after_step(module: object) -> None:
        mask_step(module)
        steps[0] += 1
        if steps[0] % refit == 0:
            for i, (layer, m) in enumerate(zip(originals.layers, state.masks, strict=True)):
                new = compute_ste_centroids(layer.weight.detach().numpy(), m, centroids[i].numpy())
                centroids[i] = torch.from_numpy(new)

    train(model, data, config, epochs, early_stopping=True, after_backward=after_backward,
          after_step=after_step, progress=progress, teacher=teacher)  # fmt: skip
    for layer in model.layers:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    out = CompressedMLP.from_model(model, masks=list(state.masks), stages=state.stages)
    out.layers = [
        (w if m is None else np.where(m, w, np.float32(0)).astype(np.float32), b)
        for (w, b), m in zip(out.layers, state.masks, strict=True)
    ]
    return out, [
        _codebook(w, m, c.numpy()) for (w, _b), m, c in zip(out.layers, out.masks, centroids, strict=True)
    ]


def _codebook(w: np.ndarray, mask: np.ndarray | None, centroids: np.ndarray) -> Codebook:
    """The trained weights assigned to their nearest final centroid, unused centroids dropped."""
    keep = np.ones(w.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    c = np.unique(np.asarray(centroids, dtype=np.float32))
    idx = np.zeros(w.shape, dtype=np.intp)
    idx[keep] = _assign(w[keep], c)
    used = np.unique(idx[keep]) if keep.any() else np.zeros(1, dtype=np.intp)
    remap = np.zeros(len(c), dtype=np.intp)
    remap[used] = np.arange(len(used))
    out = np.where(keep, remap[idx], 0).astype(np.uint8)
    return c[used].astype(np.float32), out
