"""Unstructured and structured pruning: mask maths, schedule, hooks, unit removal, sensitivity."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.prune import (
    PruneConfig,
    StructuredConfig,
    apply_masks,
    apply_structured_pruning,
    choose_per_layer_sparsity,
    compute_magnitude_masks,
    compute_unit_importance,
    compute_unit_keep,
    mask_hooks,
    prune_gradual,
    remove_dead_units,
    sensitivity_analysis,
    sparsity_schedule,
    structured_prune_stage,
)
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError


def test_global_masks_hit_the_sparsity_exactly(make_state):
    state = make_state(hidden=(16, 8))
    masks = compute_magnitude_masks(state, 0.75)
    total = sum(m.size for m in masks)
    assert sum(int((~m).sum()) for m in masks) == round(0.75 * total)
    # global: every kept weight is at least as large as every pruned one
    kept = np.concatenate([np.abs(w)[m] for (w, _), m in zip(state.layers, masks, strict=True)])
    pruned = np.concatenate([np.abs(w)[~m] for (w, _), m in zip(state.layers, masks, strict=True)])
    assert kept.min() >= pruned.max()


def test_per_layer_overrides_and_every_layer_keeps_a_weight(make_state):
    state = make_state(hidden=(16, 8))
    masks = compute_magnitude_masks(state, 0.99, per_layer={"0": 0.5})
    assert (~masks[0]).sum() == 0.5 * masks[0].size
    assert all(m.any() for m in masks)
    assert [m.all() for m in compute_magnitude_masks(state, 0.0)] == [True] * 3


def test_mask_ties_break_deterministically():
    layers = [
        (np.ones((4, 3), np.float32), np.zeros(4, np.float32)),
        (np.ones((1, 4), np.float32), np.zeros(1, np.float32)),
    ]
    a = compute_magnitude_masks(layers, 0.5)
    b = compute_magnitude_masks(layers, 0.5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"schedule": "cubic"},
        {"per_layer": {"x": 0.5}},
        {"per_layer": {0: 1.5}},
        {"steps": 0},
        {"lr": 0},
        {"initial_sparsity": 0.95},
    ],
)
def test_prune_config_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        PruneConfig(**kwargs)


def test_bad_layer_index_is_a_config_error(make_state):
    with pytest.raises(ConfigError, match="out of range"):
        compute_magnitude_masks(make_state(), 0.5, per_layer={7: 0.5})


def test_polynomial_schedule_rises_to_the_target():
    s = sparsity_schedule(PruneConfig(sparsity=0.9, steps=8, initial_sparsity=0.1))
    assert len(s) == 8 and s[-1] == pytest.approx(0.9) and s[0] > 0.1
    assert all(b >= a for a, b in zip(s, s[1:], strict=False))
    # cubic decay: most of the pruning happens early
    assert s[3] > 0.1 + 0.5 * (0.9 - 0.1)
    assert sparsity_schedule(PruneConfig(schedule="one_shot", sparsity=0.6)) == [0.6]


def test_mask_hooks_keep_pruned_weights_at_zero_during_training(stage_data):
    import torch

    from fraudlite.models import FraudMLP, MLPConfig, classification_loss, run_training

    model = FraudMLP(20, MLPConfig(hidden=(8,)))
    masks = compute_magnitude_masks(model, 0.7)
    apply_masks(model, masks)
    after_backward, after_step = mask_hooks(model, masks)
    d = stage_data
    run_training(model, classification_loss(MLPConfig(), 5.0), d.X_train[:2048], d.y_train[:2048],
                 config=MLPConfig(max_epochs=1, batch_size=256), after_backward=after_backward,
                 after_step=after_step)  # fmt: skip
    for layer, m in zip(model.layers, masks, strict=True):
        w = layer.weight.detach().numpy()
        assert np.all(w[~m] == 0) and np.count_nonzero(w[m]) > 0
    assert isinstance(model.layers[0].weight, torch.nn.Parameter)


def test_prune_gradual_reaches_the_sparsity_and_returns_exact_zeros(trained_model, stage_data):
    import copy

    model = copy.deepcopy(trained_model)
    d = stage_data
    cfg = PruneConfig(sparsity=0.7, steps=3, prune_epochs=1, finetune_epochs=1, batch_size=1024)
    masks = prune_gradual(model, d.X_train, d.y_train, d.X_valid, d.y_valid, cfg)
    total = sum(m.size for m in masks)
    assert sum(int((~m).sum()) for m in masks) / total == pytest.approx(0.7, abs=0.01)
    for layer, m in zip(model.layers, masks, strict=True):
        assert np.all(layer.weight.detach().numpy()[~m] == 0)


def test_sensitivity_analysis_and_choice(base_state, stage_data):
    table = sensitivity_analysis(base_state, stage_data.X_valid, stage_data.y_valid, sparsities=(0.5, 0.9))
    assert len(table) == 3 * 2
    assert {r["layer"] for r in table} == {0, 1, 2}
    assert all(r["ap_drop"] == pytest.approx(table[0]["ap"] + table[0]["ap_drop"] - r["ap"]) for r in table)
    choice = choose_per_layer_sparsity(table, max_drop=0.01)
    assert set(choice) == {0, 1, 2} and all(v in (0.0, 0.5, 0.9) for v in choice.values())
    assert choose_per_layer_sparsity(table, max_drop=1.0) == {0: 0.9, 1: 0.9, 2: 0.9}


# ---------------------------------------------------------------------------- structured


def test_remove_dead_units_is_exact(make_state, stage_data):
    state = make_state(hidden=(16, 8))
    w0, b0 = state.layers[0]
    w0 = w0.copy()
    w0[[1, 5]] = 0  # no inputs: constant relu(b)
    b0 = b0.copy()
    b0[1] = 0.7  # a constant, nonzero contribution
    w1 = state.layers[1][0].copy()
    w1[:, 9] = 0  # no outputs
    state.layers[0] = (w0, b0)
    state.layers[1] = (w1, state.layers[1][1])
    out = remove_dead_units(state)
    assert out.hidden == (13, 8)
    X = stage_data.X_valid[:500]
    np.testing.assert_allclose(out.logits(X), state.logits(X), rtol=1e-5, atol=1e-5)


def test_remove_dead_units_cascades_and_keeps_masks(make_state):
    state = make_state(hidden=(8, 4), sparsity=0.5)
    w1 = state.layers[1][0].copy()
    w1[2] = 0
    m1 = state.masks[1].copy()
    m1[2] = False
    state.layers[1] = (w1, state.layers[1][1])
    state.masks[1] = m1
    out = remove_dead_units(state)
    out.validate()
    assert out.hidden[1] <= 3
    assert all(m is None or m.shape == w.shape for m, (w, _) in zip(out.masks, out.layers, strict=True))


def test_structured_pruning_physically_shrinks_a_torch_model(trained_model, stage_data):
    from fraudlite.models import FraudMLP, predict_logits

    imp = compute_unit_importance(trained_model, stage_data.X_train[:4096])
    assert [len(i) for i in imp] == [64, 32]
    keep = compute_unit_keep(imp, (40, 20))
    small = apply_structured_pruning(trained_model, keep, stage_data.X_train[:4096])
    assert isinstance(small, FraudMLP)
    assert [tuple(layer.weight.shape) for layer in small.layers] == [(40, 20), (20, 40), (1, 20)]
    assert small.config.hidden == (40, 20)
    assert predict_logits(small, stage_data.X_valid[:10]).shape == (10,)
    # keeping every unit changes nothing
    same = apply_structured_pruning(trained_model, compute_unit_keep(imp, (64, 32)))
    np.testing.assert_array_equal(
        predict_logits(same, stage_data.X_valid), predict_logits(trained_model, stage_data.X_valid)
    )


def test_unit_importance_without_data_and_keep_indices(make_state):
    state = make_state(hidden=(6, 4))
    imp = compute_unit_importance(state)
    keep = compute_unit_keep(imp, (3, 2))
    assert [len(k) for k in keep] == [3, 2] and all(np.all(np.diff(k) > 0) for k in keep)
    assert set(keep[0]) == set(np.argsort(-imp[0])[:3])
    with pytest.raises(ConfigError):
        compute_unit_keep(imp, (3,))


def test_structured_stage_rejects_bad_targets(base_state, stage_data):
    with pytest.raises(ConfigError, match="hidden layers"):
        structured_prune_stage(base_state, stage_data, StructuredConfig(hidden=(8,)))
    with pytest.raises(ConfigError, match="exceed"):
        structured_prune_stage(base_state, stage_data, StructuredConfig(hidden=(128, 8)))
    with pytest.raises(ConfigError):
        StructuredConfig(importance="random")


def test_pruning_refuses_a_clustered_state(make_state, stage_data):
    from fraudlite.compression.cluster import apply_clustering, compute_codebooks
    from fraudlite.compression.prune import prune_stage

    state = make_state()
    clustered = apply_clustering(state, compute_codebooks(state))
    with pytest.raises(ConfigError, match="before weight sharing"):
        prune_stage(clustered, stage_data)


def test_state_round_trip_keeps_masks(make_state, tmp_path):
    state = make_state(sparsity=0.8)
    state.save(tmp_path / "s.safetensors")
    back = CompressedMLP.load(tmp_path / "s.safetensors")
    assert back.equals(state) and back.sparsity() == pytest.approx(0.8, abs=0.01)


def test_knowledge_distillation_settings_are_validated():
    with pytest.raises(ConfigError, match="kd_alpha"):
        PruneConfig(kd_alpha=1.5)
    with pytest.raises(ConfigError, match="kd_temperature"):
        StructuredConfig(kd_temperature=0.0)
