"""Weight sharing: k-means codebooks, sparsity kept, centroid gradients pooled, half precision."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudlite.compression.cluster import (
    ClusterConfig,
    apply_clustering,
    cluster_stage,
    clustered_parametrization,
    compute_codebook,
    compute_codebooks,
    finetune_centroids,
    round_half,
)
from fraudlite.errors import ConfigError


def test_codebook_on_masked_weights_keeps_zeros_and_sorts():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 20)).astype(np.float32)
    mask = rng.random(w.shape) > 0.7
    w = np.where(mask, w, np.float32(0))
    c, idx = compute_codebook(w, mask, 16)
    assert c.dtype == np.float32 and idx.dtype == np.uint8 and idx.shape == w.shape
    assert 1 < len(c) <= 16 and np.all(np.diff(c) > 0)
    assert np.all(idx[~mask] == 0)
    rebuilt = np.where(mask, c[idx], 0)
    # every kept weight goes to its nearest centroid
    nearest = np.abs(w[mask][:, None] - c[None, :]).argmin(axis=1)
    assert np.array_equal(idx[mask], nearest)
    assert np.abs(rebuilt - w)[mask].max() < (w[mask].max() - w[mask].min()) / 8
    # linear init keeps the extremes close
    assert c[0] <= np.quantile(w[mask], 0.02) and c[-1] >= np.quantile(w[mask], 0.98)


def test_codebook_is_exact_when_few_distinct_values_and_handles_edge_cases():
    w = np.array([[0.5, -0.25, 0.5], [0.0, -0.25, 1.0]], np.float32)
    c, idx = compute_codebook(w, None, 8)
    np.testing.assert_array_equal(c[idx], w)
    c1, idx1 = compute_codebook(w, None, 1)
    assert len(c1) == 1 and np.all(idx1 == 0)
    c0, idx0 = compute_codebook(w, np.zeros(w.shape, bool), 4)
    assert np.all(idx0 == 0) and len(c0) == 1


def test_codebook_is_deterministic_and_density_init_works():
    w = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    a, b = compute_codebook(w, None, 16), compute_codebook(w, None, 16)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c, _ = compute_codebook(w, None, 16, init="density")
    assert len(c) <= 16


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"k": 257}, {"k": 2.5}, {"init": "kmeans++"}, {"per_layer_k": {0: 300}}, {"lr": -1.0}],
)
def test_cluster_config_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        ClusterConfig(**kwargs)


def test_apply_clustering_keeps_sparsity(make_state):
    state = make_state(sparsity=0.8)
    clustered = apply_clustering(state, compute_codebooks(state, ClusterConfig(k=4, per_layer_k={"2": 2})))
    clustered.validate()
    assert clustered.sparsity() == state.sparsity()
    assert [len(cb[0]) for cb in clustered.codebooks][:2] == [4, 4] and len(clustered.codebooks[2][0]) <= 2
    assert clustered.cluster_bits()[:2] == [2, 2]
    for (w, _), m in zip(clustered.layers, clustered.masks, strict=True):
        assert np.all(w[~m] == 0)
        assert len(np.unique(w[m])) <= 4


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    import torch

    idx = np.array([[0, 1, 1], [2, 0, 1]], np.uint8)
    mask = np.array([[True, True, False], [True, True, True]])
    param = clustered_parametrization(idx, mask, np.array([-1.0, 0.5, 2.0], np.float32))
    c = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    w = param(c)
    g = torch.arange(1.0, 7.0).reshape(2, 3)
    (w * g).sum().backward()
    # centroid 0: (0,0)->1 + (1,1)->5; centroid 1: (0,1)->2 + (1,2)->6 (pruned (0,2) excluded); centroid 2: 4
    np.testing.assert_allclose(c.grad.numpy(), [6.0, 8.0, 4.0])
    assert w[0, 2].item() == 0.0


def test_finetuning_changes_centroids_not_assignments(base_state, stage_data):
    clustered = apply_clustering(base_state, compute_codebooks(base_state, ClusterConfig(k=8)))
    tuned = finetune_centroids(clustered, stage_data, ClusterConfig(k=8, finetune_epochs=1, batch_size=1024))
    tuned.validate()
    for before, after in zip(clustered.codebooks, tuned.codebooks, strict=True):
        assert len(after[0]) == len(before[0])
        # centroids may reorder after training; the partition of weights is the same
        pairs = set(zip(before[1].ravel().tolist(), after[1].ravel().tolist(), strict=True))
        assert len(pairs) == len(before[0])
    assert any(
        not np.array_equal(a[0], b[0]) for a, b in zip(clustered.codebooks, tuned.codebooks, strict=True)
    )


def test_round_half_gives_float16_representable_values(make_state):
    state = make_state(sparsity=0.5)
    out = round_half(apply_clustering(state, compute_codebooks(state)))
    for arr in [out.mean, out.std, *[b for _, b in out.layers], *[cb[0] for cb in out.codebooks]]:
        np.testing.assert_array_equal(arr.astype(np.float16).astype(np.float32), arr)
    out.validate()


def test_cluster_stage_refuses_quantized_state(make_state, stage_data):
    state = make_state()
    state.quant = [{} for _ in state.layers]
    with pytest.raises(ConfigError, match="before quantization"):
        cluster_stage(state, stage_data)


def test_pow2_standardization_is_an_exact_reparametrization(make_state, stage_data):
    from fraudlite.compression.cluster import pow2_standardization

    state = make_state(sparsity=0.5)
    out = pow2_standardization(state)
    assert np.all(out.mean == 0)
    assert np.array_equal(np.exp2(np.round(np.log2(out.std))), out.std)
    assert np.array_equal(out.masks[0], state.masks[0]) and np.all(out.layers[0][0][~state.masks[0]] == 0)
    X = stage_data.X_valid[:2000] / 50  # keep the random model in a sane range
    np.testing.assert_allclose(out.logits(X), state.logits(X), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="before layer 0 is clustered"):
        pow2_standardization(apply_clustering(state, compute_codebooks(state)))


def test_importance_weighted_centroids_follow_the_important_weights():
    w = np.array([[0.0, 0.1, 0.9, 1.0]], np.float32)
    imp = np.array([[1.0, 1.0, 1.0, 1000.0]])
    plain, _ = compute_codebook(w, None, 1)
    weighted, _ = compute_codebook(w, None, 1, importance=imp)
    assert plain[0] == pytest.approx(0.5) and weighted[0] > 0.99
    with pytest.raises(ConfigError):
        compute_codebook(w, None, 2, importance=-imp)


def test_fisher_diagonal_shapes_and_weighting_option(base_state, stage_data):
    from fraudlite.compression.cluster import fisher_diagonal

    fisher = fisher_diagonal(base_state, stage_data.X_train, stage_data.y_train, rows=2048, batch_size=256)
    assert [f.shape for f in fisher] == [w.shape for w, _ in base_state.layers]
    assert all(np.all(f >= 0) and f.sum() > 0 for f in fisher)
    again = fisher_diagonal(base_state, stage_data.X_train, stage_data.y_train, rows=2048, batch_size=256)
    assert all(np.array_equal(a, b) for a, b in zip(fisher, again, strict=True))
    with pytest.raises(ConfigError):
        ClusterConfig(weighting="hessian")


def test_cluster_sensitivity_and_automatic_k(base_state, stage_data):
    from fraudlite.compression.cluster import choose_per_layer_k, cluster_sensitivity

    table = cluster_sensitivity(base_state, stage_data.X_valid, stage_data.y_valid, ks=(4, 64))
    assert len(table) == 6 and {r["k"] for r in table} == {4, 64}
    assert choose_per_layer_k(table, max_drop=1.0) == {0: 4, 1: 4, 2: 4}
    assert choose_per_layer_k(table, max_drop=-1.0) == {0: 64, 1: 64, 2: 64}
    out = cluster_stage(
        base_state, stage_data, ClusterConfig(auto_k_max_drop=0.01, per_layer_k={2: 4}, finetune_epochs=0)
    )
    chosen = out.stages[-1]["chosen_k"]
    assert set(chosen) == {"0", "1", "2"} and chosen["2"] == 4
    assert [len(cb[0]) <= chosen[str(i)] for i, cb in enumerate(out.codebooks)] == [True] * 3
    with pytest.raises(ConfigError):
        ClusterConfig(auto_k_max_drop=2.0)


def test_center_standardization_is_exact_and_keeps_weights(make_state, stage_data):
    from fraudlite.compression.cluster import center_standardization

    state = make_state(sparsity=0.5)
    out = center_standardization(state)
    assert np.all(out.mean == 0) and np.array_equal(out.std, state.std)
    for (wa, _), (wb, _) in zip(out.layers, state.layers, strict=True):
        assert np.array_equal(wa, wb)
    X = stage_data.X_valid[:2000] / 50
    np.testing.assert_allclose(out.logits(X), state.logits(X), rtol=1e-4, atol=1e-4)
    assert center_standardization(out) is out


def test_center_standardization_can_round_the_std_exactly(make_state, stage_data):
    from fraudlite.compression.cluster import center_standardization

    state = make_state(sparsity=0.5)
    out = center_standardization(state, std_mantissa_bits=3)
    low_bits = out.std.astype(np.float16).view(np.uint16) & np.uint16(0x7F)
    assert np.all(out.mean == 0) and not low_bits.any() and not np.array_equal(out.std, state.std)
    assert np.array_equal(out.masks[0], state.masks[0]) and np.all(out.layers[0][0][~out.masks[0]] == 0)
    X = stage_data.X_valid[:2000] / 50
    np.testing.assert_allclose(out.logits(X), state.logits(X), rtol=1e-4, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-3e4, 3e4, allow_nan=False, width=32), min_size=1, max_size=50), st.integers(0, 10))
def test_round_half_keeps_mantissa_bits_and_rounds_to_nearest(values: list[float], bits: int):
    from fraudlite.compression.compact import round_to_float16 as round_array

    a = np.array(values, dtype=np.float32)
    out = round_array(a, bits)
    words = out.astype(np.float16).view(np.uint16)
    assert not np.any(words & np.uint16((1 << (10 - bits)) - 1))
    half = a.astype(np.float16).astype(np.float32)
    # within half a step of the kept mantissa (relative to the magnitude), or subnormal-sized
    assert np.all(np.abs(out - half) <= np.maximum(np.abs(half) * 2.0 ** -(bits + 1), 2.0**-14))
    assert np.array_equal(round_array(a, 10), half)


def test_sorted_codebooks_keep_pruned_indices_zero():
    from fraudlite.compression.cluster import _sorted

    idx = np.array([[0, 1, 2], [2, 0, 1]], np.uint8)
    mask = np.array([[False, True, True], [True, True, True]])
    (c, new), none = _sorted([(np.array([0.5, -1.0, 2.0], np.float32), idx), None], [mask, None])
    assert none is None and np.array_equal(c, [-1.0, 0.5, 2.0])
    assert new[0, 0] == 0  # pruned: index 0 whatever the centroid order
    np.testing.assert_array_equal(np.where(mask, c[new], 0), np.where(mask, [[0, -1, 2], [2, 0.5, -1]], 0))


def test_clustering_aware_training_keeps_sparsity_and_trains_onto_the_codebook(make_state, stage_data):
    from fraudlite.compression.cluster_ste import apply_ste_training, compute_ste_centroids

    c = compute_ste_centroids(np.array([0.0, 0.1, 0.9, 1.0, 5.0]), None, np.array([0.0, 1.0, 4.0]), 3)
    np.testing.assert_allclose(c, [0.05, 0.95, 5.0], rtol=1e-6)
    state = make_state(sparsity=0.5)
    config = ClusterConfig(k=8, ste_epochs=1, ste_refit_steps=5, lr=1e-3, batch_size=1024)
    out, codebooks = apply_ste_training(state, stage_data, config)
    again, _ = apply_ste_training(state, stage_data, config)
    assert out.equals(again)  # deterministic under the seed
    clustered = apply_clustering(out, codebooks)
    clustered.validate()
    assert clustered.sparsity() == state.sparsity() and all(len(cb[0]) <= 8 for cb in codebooks)
    stage = cluster_stage(
        state, stage_data, ClusterConfig(k=8, ste_epochs=1, finetune_epochs=1, batch_size=1024)
    )
    stage.validate()
    assert stage.sparsity() == state.sparsity() and all(0 < b <= 3 for b in stage.cluster_bits())
