"""Training: standardization stats, imbalance-aware losses and a reusable early-stopping loop.

Memory: features stay in the caller's float32 numpy arrays. Each step gathers one batch by index
(``X[idx]``, batch-sized) and wraps it with ``torch.from_numpy``; stats are computed chunk by chunk.
Nothing makes a full copy of ``X``.

Determinism: ``torch.manual_seed(seed)`` before weight init and the loop (dropout), a seeded
``torch.Generator`` for the per-epoch permutation, a fixed thread count: same inputs -> same weights.

:func:`run_training` is the generic loop: any module returning logits [N], any
``loss_fn(batch_x, batch_y, logits) -> loss``, optional hooks around the optimizer step. Compression
(distillation, pruning fine-tuning, weight-sharing and quantization-aware training) reuses it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn

from fraudlite.errors import DataError
from fraudlite.models.mlp import FraudMLP, MLPConfig

__all__ = [
    "LossFn",
    "standardization_stats",
    "default_pos_weight",
    "classification_loss",
    "predict_logits",
    "predict_proba",
    "run_training",
    "train_mlp",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(batch_x, batch_y, logits) -> scalar loss``; ``batch_y`` is float32 0/1."""

Hook = Callable[[nn.Module], None]


def standardization_stats(X: np.ndarray, chunk_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (population), float32, in float64 chunks (no full copy of ``X``).

    Args:
        X: [N, F] features.
        chunk_rows: rows per chunk (bounds the temporary memory).

    Returns:
        ``(mean, std)`` float32 [F]; a constant column gets std 1.

    Raises:
        DataError: when ``X`` is empty or holds NaN/inf.
    """
    if X.ndim != 2 or len(X) == 0:
        raise DataError(f"expected a non-empty [rows, features] matrix, got shape {X.shape}")
    n = 0
    mean = np.zeros(X.shape[1])
    m2 = np.zeros(X.shape[1])
    for start in range(0, len(X), chunk_rows):
        chunk = X[start : start + chunk_rows].astype(np.float64)
        if not np.isfinite(chunk).all():
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=0))
            raise DataError(f"features contain NaN or infinite values (columns {bad.tolist()})")
        k = len(chunk)
        c_mean = chunk.mean(axis=0)
        chunk -= c_mean
        c_m2 = np.einsum("ij,ij->j", chunk, chunk)
        delta = c_mean - mean
        total = n + k
        mean += delta * (k / total)
        m2 += c_m2 + delta**2 * (n * k / total)
        n = total
    std = np.sqrt(m2 / n)
    std[std < 1e-6 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def default_pos_weight(y: np.ndarray) -> float:
    """``sqrt(n_neg / n_pos)``: softened class balancing (full balancing over-predicts fraud).

    Raises:
        DataError: when ``y`` has no positive or no negative row.
    """
    n_pos = int(np.count_nonzero(y))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"labels must contain both classes, got {n_pos} fraud and {n_neg} genuine rows")
    return math.sqrt(n_neg / n_pos)


def classification_loss(config: MLPConfig, pos_weight: float) -> LossFn:
    """The loss named by ``config.loss``, with fraud rows weighted by ``pos_weight``.

    Returns:
        ``loss_fn(batch_x, batch_y, logits)``: weighted BCE, or focal loss
        ``w * (1 - p_t) ** gamma * BCE`` with ``w = pos_weight`` on fraud rows.
    """
    pw = torch.tensor(float(pos_weight), dtype=torch.float32)
    gamma = float(config.focal_gamma)

    def bce(batch_x: torch.Tensor, batch_y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, batch_y, pos_weight=pw)

    def focal(batch_x: torch.Tensor, batch_y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(logits, batch_y, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * batch_y + (1 - p) * (1 - batch_y)
        weight = 1 + (pw - 1) * batch_y
        return (weight * (1 - p_t).pow(gamma) * ce).mean()

    return bce if config.loss == "bce" else focal


def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Model outputs (logits) float32 [N] in eval mode, batch by batch; restores the previous mode."""
    was_training = model.training
    model.eval()
    out = np.empty(len(X), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            batch = np.ascontiguousarray(X[start : start + batch_size], dtype=np.float32)
            out[start : start + len(batch)] = model(torch.from_numpy(batch)).reshape(-1).numpy()
    model.train(was_training)
    return out


def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Fraud probabilities float32 [N] (sigmoid of :func:`predict_logits`)."""
    logits = predict_logits(model, X, batch_size)
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def run_training(
    model: nn.Module,
    loss_fn: LossFn,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    config: MLPConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    threads: int | None = 1,
    parameters: Iterable[nn.Parameter] | None = None,
    after_backward: Hook | None = None,
    after_step: Hook | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> list[dict]:
    """Train ``model`` in place with AdamW, early stopping on validation AP, best weights restored.

    Args:
        model: any module mapping float32 [B, F] to logits [B].
        loss_fn: ``loss_fn(batch_x, batch_y, logits) -> scalar``.
        X_train, y_train: float32 [N, F] features and 0/1 labels [N].
        X_valid, y_valid: validation data; None = no early stopping (all ``max_epochs`` run, last
            weights kept) unless ``evaluate`` is given.
        config: uses ``lr, weight_decay, batch_size, max_epochs, patience, schedule, seed``.
        progress: called once per epoch with a line (epoch, loss, val AP, rows/s, ETA).
        threads: torch intra-op threads during training (restored afterwards); None = unchanged.
            Default 1: the steps are a few small matmuls, where thread hand-off costs more than it
            saves, and multi-threaded torch collapses (10x+ slower) when the cores are shared.
        parameters: what to optimize; default every parameter with ``requires_grad``.
        after_backward: called after ``loss.backward()`` (e.g. mask or pool gradients).
        after_step: called after each optimizer step (e.g. re-apply pruning masks).
        evaluate: validation score to maximize; default average precision on ``X_valid``.

    Returns:
        History: one dict per epoch with ``epoch, loss, val_ap, lr, seconds, rows_per_s, best``.

    Raises:
        DataError: on mismatched shapes or a validation set without both classes.
    """
    config = config or MLPConfig()
    _check_xy(X_train, y_train, "training")
    if evaluate is None and X_valid is not None:
        _check_xy(X_valid, y_valid, "validation")
        default_pos_weight(y_valid)  # both classes present, or AP is meaningless
        evaluate = _ap_evaluator(X_valid, y_valid)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _loop(
            model,
            loss_fn,
            X_train,
            y_train,
            config,
            progress,
            parameters,
            after_backward,
            after_step,
            evaluate,
        )
    finally:
        torch.set_num_threads(previous_threads)


def train_mlp(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    config: MLPConfig | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int | None = 1,
) -> tuple[FraudMLP, list[dict]]:
    """Train a :class:`FraudMLP` on raw float32 features (stats from train, imbalance-weighted loss).

    Args:
        X_train, y_train: float32 [N, F] raw features and 0/1 labels.
        X_valid, y_valid: validation data for early stopping on average precision.
        config: architecture and training settings (default ``MLPConfig()``).
        progress: per-epoch progress callback (see :func:`run_training`).
        threads: torch intra-op threads (default 1, see :func:`run_training`; None = unchanged).

    Returns:
        ``(model, history)``: the best-epoch model in eval mode and the per-epoch history.

    Raises:
        DataError: on bad shapes, NaN/inf features or a single-class train/validation set.
    """
    config = config or MLPConfig()
    _check_xy(X_train, y_train, "training")
    balanced = default_pos_weight(y_train)  # also checks that both classes are present
    pos_weight = config.pos_weight if config.pos_weight is not None else balanced
    mean, std = standardization_stats(X_train)
    torch.manual_seed(config.seed)
    model = FraudMLP(X_train.shape[1], config, mean, std)
    _init_output_bias(model, float(np.count_nonzero(y_train)) / len(y_train), pos_weight)
    loss_fn = classification_loss(config, pos_weight)
    history = run_training(
        model, loss_fn, X_train, y_train, X_valid, y_valid, config, progress=progress, threads=threads
    )
    return model.eval(), history


def _init_output_bias(model: FraudMLP, prior: float, pos_weight: float) -> None:
    """Start the output at the (weighted) fraud prior so early epochs do not fight the imbalance."""
    odds = pos_weight * prior / max(1.0 - prior, 1e-12)
    with torch.no_grad():
        model.layers[-1].bias.fill_(math.log(max(odds, 1e-12)))


def _check_xy(X: np.ndarray | None, y: np.ndarray | None, what: str) -> None:
    if X is None or y is None:
        raise DataError(f"{what} features and labels are both required")
    if X.ndim != 2 or len(X) == 0:
        raise DataError(f"{what} features must be a non-empty [rows, features] matrix, got shape {X.shape}")
    if len(y) != len(X):
        raise DataError(f"{what} features have {len(X)} rows but labels have {len(y)}")


def _ap_evaluator(X_valid: np.ndarray, y_valid: np.ndarray) -> Callable[[nn.Module], float]:
    def evaluate(model: nn.Module) -> float:
        return float(average_precision_score(y_valid, predict_logits(model, X_valid)))

    return evaluate


def _lr_lambda(config: MLPConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over the first epoch, then cosine decay to 5% of the peak at ``max_epochs``."""
    warmup = steps_per_epoch if config.max_epochs > 1 else 0
    total = max(config.max_epochs * steps_per_epoch, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(total - warmup, 1))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _loop(
    model: nn.Module,
    loss_fn: LossFn,
    X: np.ndarray,
    y: np.ndarray,
    config: MLPConfig,
    progress: Callable[[str], None] | None,
    parameters: Iterable[nn.Parameter] | None,
    after_backward: Hook | None,
    after_step: Hook | None,
    evaluate: Callable[[nn.Module], float] | None,
) -> list[dict]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n, bs = len(X), config.batch_size
    steps_per_epoch = max(1, math.ceil(n / bs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch))
    history: list[dict] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    started = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=generator).numpy()
        total_loss = 0.0
        for start in range(0, n, bs):
            idx = np.sort(perm[start : start + bs])
            batch_x = torch.from_numpy(np.ascontiguousarray(X[idx], dtype=np.float32))
            batch_y = torch.from_numpy(np.asarray(y[idx], dtype=np.float32))
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch_x, batch_y, model(batch_x))
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(model)
            total_loss += float(loss.detach()) * len(idx)
        train_seconds = time.perf_counter() - t0
        score = evaluate(model) if evaluate is not None else None
        improved = score is not None and score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "loss": total_loss / n,
            "val_ap": score,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "rows_per_s": n / max(train_seconds, 1e-9),
            "best": improved,
        }
        history.append(record)
        stop = score is not None and epoch - best_epoch >= config.patience
        _report(record, config, best_score, best_epoch, (time.perf_counter() - started) / epoch, progress)
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _report(
    record: dict,
    config: MLPConfig,
    best_score: float,
    best_epoch: int,
    mean_epoch_seconds: float,
    progress: Callable[[str], None] | None,
) -> None:
    epoch = record["epoch"]
    eta = (config.max_epochs - epoch) * mean_epoch_seconds
    val = (
        "n/a"
        if record["val_ap"] is None
        else f"{record['val_ap']:.4f} (best {best_score:.4f} @ {best_epoch})"
    )
    msg = (
        f"epoch {epoch}/{config.max_epochs} loss={record['loss']:.5f} val_ap={val} "
        f"{record['rows_per_s']:,.0f} rows/s eta<={eta:.0f}s"
    )
    logger.info(msg)
    if progress is not None:
        progress(msg)
