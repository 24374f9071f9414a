"""Training: standardization stats, imbalance-aware losses and a reusable early-stopping loop.

Memory: features stay in the caller's float32 numpy arrays. Each step gathers one batch by index
(``X[idx]``, batch-sized) and wraps it with ``torch.from_numpy``; stats are computed chunk by chunk.
Nothing makes a full copy of ``X``. ``train_rows``/``valid_rows`` select the training and validation
rows of one shared feature matrix, so callers need not copy ``X[mask]`` either.

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
    "RunningStats",
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


def standardization_stats(
    X: np.ndarray, chunk_rows: int = 65_536, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (population), float32, in float64 chunks (no full copy of ``X``).

    Args:
        X: [N, F] features.
        chunk_rows: rows per chunk (bounds the temporary memory).
        rows: only these rows (integer indices or a boolean mask); default all.

    Returns:
        ``(mean, std)`` float32 [F]; a constant column gets std 1.

    Raises:
        DataError: when ``X`` is empty or holds NaN/inf.
    """
    rows = _as_rows(rows, len(X), "rows")
    n_rows = len(X) if rows is None else len(rows)
    if X.ndim != 2 or n_rows == 0:
        raise DataError(f"expected a non-empty [rows, features] matrix, got shape {X.shape} ({n_rows} rows)")
    stats = RunningStats(X.shape[1])
    for start in range(0, n_rows, chunk_rows):
        stats.add(X[start : start + chunk_rows] if rows is None else X[rows[start : start + chunk_rows]])
    return stats.result()


class RunningStats:
    """Per-column mean and M2 merged chunk by chunk in float64 (Chan et al.): the core of
    :func:`standardization_stats`, for callers that stream rows (the same chunks give the same bits)."""

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def add(self, part: np.ndarray) -> None:
        """One chunk of rows; DataError on NaN/inf."""
        chunk = part.astype(np.float64)
        if not np.isfinite(chunk).all():
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=0))
            raise DataError(f"features contain NaN or infinite values (columns {bad.tolist()})")
        n, k = self.n, len(chunk)
        if k == 0:
            return
        c_mean = chunk.mean(axis=0)
        chunk -= c_mean
        c_m2 = np.einsum("ij,ij->j", chunk, chunk)
        delta = c_mean - self.mean
        total = n + k
        self.mean += delta * (k / total)
        self.m2 += c_m2 + delta**2 * (n * k / total)
        self.n = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` float32; a constant column gets std 1."""
        if self.n == 0:
            raise DataError("no rows to compute standardization statistics on")
        std = np.sqrt(self.m2 / self.n)
        std[std < 1e-6 * np.maximum(np.abs(self.mean), 1.0)] = 1.0
        return self.mean.astype(np.float32), std.astype(np.float32)


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


def predict_logits(
    model: nn.Module, X: np.ndarray, batch_size: int = 65_536, rows: np.ndarray | None = None
) -> np.ndarray:
    """Model outputs (logits) float32 [N] in eval mode, batch by batch; restores the previous mode.

    ``rows`` (indices or boolean mask) scores only those rows, in that order.
    """
    rows = _as_rows(rows, len(X), "rows")
    n = len(X) if rows is None else len(rows)
    was_training = model.training
    model.eval()
    out = np.empty(n, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            part = X[start : start + batch_size] if rows is None else X[rows[start : start + batch_size]]
            batch = np.ascontiguousarray(part, dtype=np.float32)
            out[start : start + len(batch)] = model(torch.from_numpy(batch)).reshape(-1).numpy()
    model.train(was_training)
    return out


def predict_proba(
    model: nn.Module, X: np.ndarray, batch_size: int = 65_536, rows: np.ndarray | None = None
) -> np.ndarray:
    """Fraud probabilities float32 [N] (sigmoid of :func:`predict_logits`)."""
    logits = predict_logits(model, X, batch_size, rows)
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
    train_rows: np.ndarray | None = None,
    valid_rows: np.ndarray | None = None,
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
        train_rows, valid_rows: use only these rows (indices or boolean masks) of ``X_train`` /
            ``X_valid``, which may then be the same full matrix (no ``X[mask]`` copies).

    Returns:
        History: one dict per epoch with ``epoch, loss, val_ap, lr, seconds, rows_per_s, best``.

    Raises:
        DataError: on mismatched shapes or a validation set without both classes.
    """
    config = config or MLPConfig()
    train_rows = _check_xy(X_train, y_train, "training", train_rows)
    if evaluate is None and X_valid is not None:
        valid_rows = _check_xy(X_valid, y_valid, "validation", valid_rows)
        if X_valid.shape[1] != X_train.shape[1]:
            raise DataError(f"validation has {X_valid.shape[1]} features, training has {X_train.shape[1]}")
        evaluate = _ap_evaluator(X_valid, y_valid, valid_rows)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _loop(
            model,
            loss_fn,
            X_train,
            y_train,
            train_rows,
            config,
            evaluate,
            progress=progress,
            parameters=parameters,
            after_backward=after_backward,
            after_step=after_step,
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
    train_rows: np.ndarray | None = None,
    valid_rows: np.ndarray | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[FraudMLP, list[dict]]:
    """Train a :class:`FraudMLP` on raw float32 features (stats from train, imbalance-weighted loss).

    Args:
        X_train, y_train: float32 [N, F] raw features and 0/1 labels.
        X_valid, y_valid: validation data for early stopping on average precision.
        config: architecture and training settings (default ``MLPConfig()``).
        progress: per-epoch progress callback (see :func:`run_training`).
        threads: torch intra-op threads (default 1, see :func:`run_training`; None = unchanged).
        train_rows, valid_rows: row subsets (indices or boolean masks) of ``X_train`` / ``X_valid``;
            pass one full feature matrix twice with both to train without copying it.
        stats: ``(mean, std)`` standardization to use instead of the training rows' own (a model that
            must match another's inputs, e.g. a member of a teacher ensemble).

    Returns:
        ``(model, history)``: the best-epoch model in eval mode and the per-epoch history.

    Raises:
        DataError: on bad shapes, NaN/inf features or a single-class train/validation set.
    """
    config = config or MLPConfig()
    train_rows = _check_xy(X_train, y_train, "training", train_rows)
    y_fit = y_train if train_rows is None else y_train[train_rows]
    balanced = default_pos_weight(y_fit)  # also checks that both classes are present
    pos_weight = config.pos_weight if config.pos_weight is not None else balanced
    mean, std = standardization_stats(X_train, rows=train_rows) if stats is None else stats
    torch.manual_seed(config.seed)
    model = FraudMLP(X_train.shape[1], config, mean, std)
    _init_output_bias(model, float(np.count_nonzero(y_fit)) / len(y_fit), pos_weight)
    history = run_training(
        model,
        classification_loss(config, pos_weight),
        X_train,
        y_train,
        X_valid,
        y_valid,
        config,
        progress=progress,
        threads=threads,
        train_rows=train_rows,
        valid_rows=valid_rows,
    )
    return model.eval(), history


def _init_output_bias(model: FraudMLP, prior: float, pos_weight: float) -> None:
    """Start the output at the (weighted) fraud prior so early epochs do not fight the imbalance."""
    odds = pos_weight * prior / max(1.0 - prior, 1e-12)
    with torch.no_grad():
        model.layers[-1].bias.fill_(math.log(max(odds, 1e-12)))


def _check_xy(
    X: np.ndarray | None, y: np.ndarray | None, what: str, rows: np.ndarray | None = None
) -> np.ndarray | None:
    """Validate a (features, labels[, rows]) triple; returns the rows as int64 indices or None."""
    if X is None or y is None:
        raise DataError(f"{what} features and labels are both required")
    if X.ndim != 2 or len(X) == 0:
        raise DataError(f"{what} features must be a non-empty [rows, features] matrix, got shape {X.shape}")
    if len(y) != len(X):
        raise DataError(f"{what} features have {len(X)} rows but labels have {len(y)}")
    rows = _as_rows(rows, len(X), f"{what} rows")
    if rows is not None and len(rows) == 0:
        raise DataError(f"{what} rows select nothing")
    return rows


def _as_rows(rows: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    """None, a boolean mask of length ``n`` or integer indices -> None or int64 indices in range."""
    if rows is None:
        return None
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise DataError(f"{what}: boolean mask of length {rows.size} for {n} rows")
        return np.flatnonzero(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise DataError(
            f"{what}: expected integer row indices or a boolean mask, got {rows.dtype} {rows.shape}"
        )
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise DataError(f"{what}: indices out of range for {n} rows")
    return rows.astype(np.int64, copy=False)


def _ap_evaluator(
    X_valid: np.ndarray, y_valid: np.ndarray, rows: np.ndarray | None
) -> Callable[[nn.Module], float]:
    y = np.asarray(y_valid if rows is None else y_valid[rows])
    default_pos_weight(y)  # both classes present, or AP is meaningless

    def evaluate(model: nn.Module) -> float:
        logits = predict_logits(model, X_valid, rows=rows)
        if not np.isfinite(logits).all():  # diverged: never "best", patience ends the run
            return math.nan
        return float(average_precision_score(y, logits))

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
    rows: np.ndarray | None,
    config: MLPConfig,
    evaluate: Callable[[nn.Module], float] | None,
    *,
    progress: Callable[[str], None] | None,
    parameters: Iterable[nn.Parameter] | None,
    after_backward: Hook | None,
    after_step: Hook | None,
) -> list[dict]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n, bs = (len(X) if rows is None else len(rows)), config.batch_size
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
            idx = perm[start : start + bs] if rows is None else rows[perm[start : start + bs]]
            idx = np.sort(idx)  # same batch, friendlier memory access
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
    if progress is not None:
        progress(msg)
    else:
        logger.info("%s", msg)
