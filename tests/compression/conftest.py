"""Shared fixtures of the compression tests: small learnable data and one trained model per session.

The data imitates the fraud features' shape: 20 columns, ~2% positives, a heavy-tailed amount-like
column and a rare binary risk flag, a nonlinear (interaction + ReLU) decision function.
"""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.state import CompressedMLP, StageData


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 20)).astype(np.float32)
    X[:, 0] = np.exp(X[:, 0]) * 50  # amount-like, heavy tail
    X[:, 1] = (rng.random(n) < 0.05).astype(np.float32)  # rare risk flag
    z = -12.5 + 2.0 * (
        1.2 * np.log(X[:, 0] / 50)
        + 3.0 * X[:, 1]
        + 1.0 * X[:, 2] * X[:, 3]
        + 1.5 * np.maximum(X[:, 4], 0)
        + 0.8 * X[:, 5]
        - 0.6 * X[:, 6]
        + 0.5 * np.abs(X[:, 7])
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return X, y


@pytest.fixture(scope="session")
def stage_data() -> StageData:
    """16k training rows, 8k validation rows (deterministic); column groups as extra columns would
    give them (``GROUPS``: two of pure noise, one that carries signal) for input-group pruning."""
    X, y = make_data(16_000, 0)
    Xv, yv = make_data(8_000, 1)
    return StageData(X, y, Xv, yv, groups={k: np.array(v) for k, v in GROUPS.items()})


#: Input groups of :func:`make_data`'s columns: 4 and 5 carry signal, 8..19 are noise.
GROUPS = {"signal": [4, 5], "noise_a": list(range(8, 14)), "noise_b": list(range(14, 20))}


@pytest.fixture(scope="session")
def trained_model(stage_data):
    """The default architecture (20 -> 64 -> 32 -> 1) trained briefly on :func:`stage_data`."""
    from fraudlite.models import MLPConfig, train_mlp

    d = stage_data
    model, _ = train_mlp(
        d.X_train, d.y_train, d.X_valid, d.y_valid, MLPConfig(max_epochs=8, lr=1e-2, batch_size=512)
    )
    return model


@pytest.fixture(scope="session")
def base_state(trained_model) -> CompressedMLP:
    """The trained model as a :class:`CompressedMLP` (no structure yet). Treat as read-only."""
    return CompressedMLP.from_model(trained_model)


@pytest.fixture
def make_state():
    """Factory: an untrained random CompressedMLP, optionally magnitude-pruned (no training, fast)."""

    def make(hidden=(16, 8), n_features: int = 20, sparsity: float = 0.0, seed: int = 0) -> CompressedMLP:
        rng = np.random.default_rng(seed)
        widths = [n_features, *hidden, 1]
        layers = [
            (
                (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32),
                (0.1 * rng.standard_normal(b)).astype(np.float32),
            )
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ]
        mean = rng.standard_normal(n_features).astype(np.float32)
        std = (0.5 + rng.random(n_features)).astype(np.float32)
        state = CompressedMLP(layers, mean, std)
        if sparsity > 0:
            from fraudlite.compression.prune import compute_magnitude_masks

            masks = compute_magnitude_masks(state, sparsity)
            state = CompressedMLP(
                [(np.where(m, w, np.float32(0)), b) for (w, b), m in zip(layers, masks, strict=True)],
                mean,
                std,
                masks=masks,
            )
        state.validate()
        return state

    return make
