"""Knowledge distillation: soft targets, the combined loss, the student."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.distill import DistillConfig, distill
from fraudlite.compression.soft_targets import compute_soft_targets, distillation_loss
from fraudlite.errors import ConfigError


def test_soft_targets_soften_with_temperature(base_state, stage_data):
    X = stage_data.X_valid[:1000]
    p1 = compute_soft_targets(base_state, X, 1.0)
    p4 = compute_soft_targets(base_state, X, 4.0)
    assert p1.shape == (1000,) and p1.dtype == np.float32
    np.testing.assert_allclose(p1, base_state.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert np.abs(p4 - 0.5).mean() < np.abs(p1 - 0.5).mean()
    with pytest.raises(ConfigError):
        compute_soft_targets(base_state, X, 0.0)


def test_loss_mixes_soft_and_hard_terms(trained_model):
    import torch
    import torch.nn.functional as F

    x = torch.randn(64, 20)
    y = (torch.rand(64) < 0.2).float()
    z = torch.randn(64)
    hard = F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(3.0))
    only_hard = distillation_loss(trained_model, DistillConfig(alpha=0.0), 3.0)(x, y, z)
    assert torch.allclose(only_hard, hard)
    T = 2.0
    with torch.no_grad():
        target = torch.sigmoid(trained_model(x) / T)
    soft = F.binary_cross_entropy_with_logits(z / T, target) * T * T
    only_soft = distillation_loss(trained_model, DistillConfig(alpha=1.0, temperature=T), 3.0)(x, y, z)
    assert torch.allclose(only_soft, soft)
    mixed = distillation_loss(trained_model, DistillConfig(alpha=0.25, temperature=T), 3.0)(x, y, z)
    assert torch.allclose(mixed, 0.25 * soft + 0.75 * hard)


def test_distill_builds_the_requested_student(trained_model, stage_data):
    d = stage_data
    cfg = DistillConfig(hidden=(8,), epochs=1, batch_size=1024)
    student = distill(trained_model, d.X_train, d.y_train, d.X_valid, d.y_valid, cfg)
    assert student.config.hidden == (8,)
    assert [tuple(layer.weight.shape) for layer in student.layers] == [(8, 20), (1, 8)]
    mean, std = student.normalization()
    np.testing.assert_array_equal(mean, trained_model.normalization()[0])
    assert not student.training


def test_teacher_init_needs_a_compatible_student(trained_model, stage_data):
    d = stage_data
    with pytest.raises(ConfigError, match="teacher's depth"):
        distill(
            trained_model,
            d.X_train,
            d.y_train,
            d.X_valid,
            d.y_valid,
            DistillConfig(hidden=(8,), init="teacher"),
        )
    student = distill(trained_model, d.X_train[:4096], d.y_train[:4096], d.X_valid, d.y_valid,
                      DistillConfig(hidden=(16, 8), init="teacher", epochs=1))  # fmt: skip
    assert student.config.hidden == (16, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden": (0,)},
        {"hidden": "wide"},
        {"temperature": 0},
        {"alpha": 1.5},
        {"epochs": 0},
        {"init": "zeros"},
    ],
)
def test_distill_config_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)


def test_logit_matching_loss(trained_model):
    import torch
    import torch.nn.functional as F

    x = torch.randn(32, 20)
    y = torch.zeros(32)
    z = torch.randn(32)
    loss = distillation_loss(trained_model, DistillConfig(alpha=1.0, soft_loss="logit_mse"), 2.0)(x, y, z)
    with torch.no_grad():
        expected = F.mse_loss(z, trained_model(x))
    assert torch.allclose(loss, expected)
    with pytest.raises(ConfigError):
        DistillConfig(soft_loss="kl")
