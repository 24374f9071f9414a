"""Training: stats, losses, the generic loop, early stopping, determinism, learning a signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudlite.errors import DataError
from fraudlite.models import (
    FraudMLP,
    MLPConfig,
    classification_loss,
    default_pos_weight,
    predict_logits,
    predict_proba,
    run_training,
    standardization_stats,
    train_mlp,
)

FAST = MLPConfig(hidden=(32, 16), dropout=0.0, batch_size=128, max_epochs=15, patience=5, lr=3e-3)


def _data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw-scale features (a log-normal 'amount', a count) with a non-linear fraud signal, ~8% positives.

    The true logit reaches ROC AUC ~0.94 on the 1000 validation rows.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] = np.exp(rng.normal(3, 1, n))  # amount-like
    X[:, 1] = rng.poisson(3, n)  # count-like
    logit = -8.7 + 2 * np.log(X[:, 0]) - 1.0 * X[:, 1] + 4 * (X[:, 2] * X[:, 3] > 0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return X, y


def _split(seed: int = 0):
    X, y = _data(seed=seed)
    return X[:4000], y[:4000], X[4000:], y[4000:]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_standardization_stats_match_numpy_and_use_chunks():
    X, _ = _data()
    X[:, 5] = 7.0  # constant column
    mean, std = standardization_stats(X, chunk_rows=333)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, X.mean(axis=0, dtype=np.float64), rtol=1e-6, atol=1e-6)
    expected = X.astype(np.float64).std(axis=0)
    expected[5] = 1.0
    np.testing.assert_allclose(std, expected, rtol=1e-5)


def test_standardization_stats_reject_nan():
    X, _ = _data()
    X[17, 3] = np.nan
    with pytest.raises(DataError, match=r"NaN.*\[3\]"):
        standardization_stats(X)


def test_default_pos_weight_and_single_class():
    y = np.array([1] * 10 + [0] * 1000)
    assert default_pos_weight(y) == pytest.approx(10.0)
    with pytest.raises(DataError, match="both classes"):
        default_pos_weight(np.zeros(10))


def test_focal_with_gamma_zero_is_weighted_bce():
    logits = torch.linspace(-4, 4, 64)
    y = (torch.arange(64) % 5 == 0).float()
    x = torch.zeros(64, 2)
    bce = classification_loss(MLPConfig(loss="bce"), 7.0)(x, y, logits)
    focal0 = classification_loss(MLPConfig(loss="focal", focal_gamma=0.0), 7.0)(x, y, logits)
    focal2 = classification_loss(MLPConfig(loss="focal", focal_gamma=2.0), 7.0)(x, y, logits)
    torch.testing.assert_close(bce, focal0)
    assert focal2 < focal0


def test_mlp_learns_the_signal():
    Xt, yt, Xv, yv = _split()
    model, history = train_mlp(Xt, yt, Xv, yv, FAST)
    scores = predict_proba(model, Xv)
    assert scores.dtype == np.float32 and scores.shape == (len(Xv),)
    assert roc_auc_score(yv, scores) > 0.85
    assert average_precision_score(yv, scores) > 3 * yv.mean()
    assert not model.training
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))


def test_training_is_deterministic_under_the_seed():
    Xt, yt, Xv, yv = _split()
    config = MLPConfig(hidden=(16, 8), batch_size=256, max_epochs=3, dropout=0.2)
    a, ha = train_mlp(Xt, yt, Xv, yv, config)
    b, hb = train_mlp(Xt, yt, Xv, yv, config)
    c, _ = train_mlp(Xt, yt, Xv, yv, MLPConfig(**{**config.to_dict(), "seed": 1}))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_early_stopping_restores_the_best_epoch():
    Xt, yt, Xv, yv = _split()
    # A learning rate this high overshoots after the first epochs, so validation AP peaks early.
    config = MLPConfig(hidden=(16, 8), batch_size=128, max_epochs=25, patience=2, lr=0.3, schedule="constant")
    model, history = train_mlp(Xt, yt, Xv, yv, config)
    scores = [h["val_ap"] for h in history]
    best = int(np.argmax(scores))
    assert len(history) == best + 1 + config.patience < config.max_epochs
    assert [h["best"] for h in history].count(True) >= 1 and history[best]["best"]
    restored = average_precision_score(yv, predict_logits(model, Xv))
    assert restored == pytest.approx(scores[best], abs=1e-12)
    assert restored > scores[-1]


def test_progress_once_per_epoch_with_rate_and_eta():
    Xt, yt, Xv, yv = _split()
    lines: list[str] = []
    _, history = train_mlp(Xt, yt, Xv, yv, MLPConfig(hidden=(8,), max_epochs=2), progress=lines.append)
    assert len(lines) == len(history) == 2
    for line in lines:
        assert (
            "epoch" in line and "loss=" in line and "val_ap=" in line and "rows/s" in line and "eta" in line
        )


def test_run_training_with_custom_loss_and_hooks_keeps_threads():
    Xt, yt, _, _ = _split()
    torch.manual_seed(0)
    model = FraudMLP(Xt.shape[1], MLPConfig(hidden=(8,)), *standardization_stats(Xt))
    mask = torch.ones_like(model.layers[0].weight)
    mask[:, :4] = 0  # a pruning mask that the hook must keep applied
    seen: dict[str, int] = {"loss": 0, "backward": 0, "step": 0}

    def loss_fn(batch_x, batch_y, logits):
        assert batch_x.dtype == torch.float32 and batch_x.shape[1] == Xt.shape[1]
        assert logits.shape == batch_y.shape == (len(batch_x),)
        seen["loss"] += 1
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch_y)

    def after_backward(m):
        seen["backward"] += 1
        m.layers[0].weight.grad.mul_(mask)

    def after_step(m):
        seen["step"] += 1
        with torch.no_grad():
            m.layers[0].weight.mul_(mask)

    threads = torch.get_num_threads()
    config = MLPConfig(hidden=(8,), batch_size=500, max_epochs=2)
    history = run_training(
        model, loss_fn, Xt, yt, config=config, after_backward=after_backward, after_step=after_step, threads=1
    )
    assert torch.get_num_threads() == threads
    assert seen == {"loss": 16, "backward": 16, "step": 16}
    assert len(history) == 2 and history[0]["val_ap"] is None
    assert torch.all(model.layers[0].weight[:, :4] == 0)


def test_run_training_with_custom_evaluate_and_frozen_parameters():
    Xt, yt, _, _ = _split()
    torch.manual_seed(0)
    model = FraudMLP(Xt.shape[1], MLPConfig(hidden=(8,)), *standardization_stats(Xt))
    frozen = model.layers[0].weight.detach().clone()
    scores = iter([0.5, 0.9, 0.1, 0.2])
    history = run_training(
        model,
        classification_loss(MLPConfig(), 2.0),
        Xt,
        yt,
        config=MLPConfig(max_epochs=10, patience=2),
        parameters=model.layers[1].parameters(),
        evaluate=lambda m: next(scores),
    )
    assert [h["val_ap"] for h in history] == [0.5, 0.9, 0.1, 0.2]
    assert torch.equal(model.layers[0].weight, frozen)


def test_inputs_are_not_copied_or_modified():
    Xt, yt, Xv, yv = _split()
    before = Xt.copy()
    Xt.flags.writeable = False
    train_mlp(Xt, yt, Xv, yv, MLPConfig(hidden=(8,), max_epochs=1))
    assert np.array_equal(Xt, before)


@pytest.mark.parametrize("bad", ["rows", "single_class_valid", "single_class_train", "nan"])
def test_bad_training_data_is_a_data_error(bad):
    Xt, yt, Xv, yv = _split()
    if bad == "rows":
        yt = yt[:-1]
    elif bad == "single_class_valid":
        yv = np.zeros_like(yv)
    elif bad == "single_class_train":
        yt = np.zeros_like(yt)
    else:
        Xt = Xt.copy()
        Xt[0, 0] = np.inf
    with pytest.raises(DataError):
        train_mlp(Xt, yt, Xv, yv, MLPConfig(max_epochs=1))


def test_diverged_training_stops_on_patience_instead_of_crashing():
    Xt, yt, Xv, yv = _split()

    class Diverged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] * self.w * float("nan")

    loss_fn = classification_loss(MLPConfig(), 1.0)
    history = run_training(Diverged(), loss_fn, Xt, yt, Xv, yv, MLPConfig(max_epochs=10, patience=2))
    assert len(history) == 2
    assert all(np.isnan(h["val_ap"]) and not h["best"] for h in history)


def test_row_subsets_of_one_matrix_train_exactly_like_copies():
    X, y = _data()
    rng = np.random.default_rng(5)
    train = rng.random(len(X)) < 0.7
    valid = ~train
    config = MLPConfig(hidden=(8,), batch_size=256, max_epochs=2)
    copied, h1 = train_mlp(X[train], y[train], X[valid], y[valid], config)
    subset, h2 = train_mlp(X, y, X, y, config, train_rows=train, valid_rows=np.flatnonzero(valid))
    for key, value in copied.state_dict().items():
        assert torch.equal(value, subset.state_dict()[key]), key
    assert [h["val_ap"] for h in h1] == [h["val_ap"] for h in h2]
    np.testing.assert_array_equal(predict_logits(copied, X[valid]), predict_logits(subset, X, rows=valid))


@pytest.mark.parametrize(
    "rows", [np.array([0, 5000]), np.array([-1]), np.ones(10, bool), np.array([0.5]), []]
)
def test_bad_row_subsets_are_data_errors(rows):
    X, y = _data()
    with pytest.raises(DataError):
        train_mlp(X, y, X, y, MLPConfig(max_epochs=1), train_rows=np.asarray(rows))
