"""Input-group pruning (``drop_inputs``): whole extra columns the model does not need are masked out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fraudlite.compression.inputs import InputDropConfig, drop_inputs_stage, group_sensitivity
from fraudlite.errors import ConfigError

FAST = {"batch_size": 512, "lr": 3e-3}


@pytest.fixture(scope="module")
def dropped(base_state, stage_data):
    return drop_inputs_stage(base_state, stage_data, InputDropConfig(finetune_epochs=2, **FAST))


def test_noise_columns_go_and_the_signal_stays(dropped, stage_data):
    record = dropped.stages[-1]
    assert set(record["dropped"]) <= {"noise_a", "noise_b"} and record["dropped"]
    assert "signal" not in record["dropped"]
    gone = np.concatenate([stage_data.groups[n] for n in record["dropped"]])
    w0 = dropped.decoded_weight(0)
    assert np.all(w0[:, gone] == 0) and not np.any(dropped.masks[0][:, gone])
    assert record["inputs_used"] == 20 - len(gone)
    # the dropped inputs no longer matter: any value there gives the same scores
    X = stage_data.X_valid[:500].copy()
    before = dropped.logits(X)
    X[:, gone] = 1e3
    np.testing.assert_allclose(dropped.logits(X), before, rtol=1e-6)


def test_the_signal_group_is_the_sensitive_one(base_state, stage_data):
    s = group_sensitivity(base_state, stage_data)
    assert s["signal"] > max(s["noise_a"], s["noise_b"]) + 0.01


def test_keep_and_zero_tolerance(base_state, stage_data):
    kept = drop_inputs_stage(
        base_state, stage_data, InputDropConfig(keep=("noise_a", "noise_b", "signal"), finetune_epochs=0)
    )
    assert kept.stages[-1]["dropped"] == [] and base_state.stages == []
    for (w1, b1), (w2, b2) in zip(kept.layers, base_state.layers, strict=True):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    with pytest.raises(ConfigError, match="merchant"):
        drop_inputs_stage(base_state, stage_data, InputDropConfig(keep=("merchant",)))


def test_a_model_without_extra_columns_passes_through(base_state, stage_data):
    plain = dataclasses.replace(stage_data, groups=None)
    out = drop_inputs_stage(base_state, plain, InputDropConfig(finetune_epochs=2))
    assert out.stages[-1]["dropped"] == []
    for (w1, b1), (w2, b2) in zip(out.layers, base_state.layers, strict=True):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)


def test_bad_settings():
    with pytest.raises(ConfigError, match="tolerance"):
        InputDropConfig(tolerance=-0.1)
    with pytest.raises(ConfigError, match="finetune_epochs"):
        InputDropConfig(finetune_epochs=-1)


def test_every_form_reads_only_the_used_inputs(dropped, stage_data):
    """The runnable forms of the dropped model score the full rows as the state does, through a slice
    or a gather of the used inputs."""
    from fraudlite.runtime.forms import InputSubset, build_forms, make_form

    X = np.ascontiguousarray(stage_data.X_valid[:3000])
    want = dropped.predict_proba(X)
    forms = build_forms(dropped.layers, dropped.mean, dropped.std, dropped.masks)
    assert forms and all(isinstance(f, InputSubset) for f in forms.values())
    for name, form in forms.items():
        np.testing.assert_allclose(form.score(X), want, atol=2e-6, err_msg=name)
        again = make_form(name, dropped.layers, dropped.mean, dropped.std, dropped.masks)
        np.testing.assert_allclose(again.score(X), want, atol=2e-6, err_msg=name)
        if hasattr(form, "logit"):
            np.testing.assert_allclose(form.logit(X), dropped.logits(X), atol=1e-4, err_msg=name)


def test_the_search_passes_over_it_without_extra_columns(base_state, stage_data):
    from fraudlite.compression.recipe import parse_recipe
    from fraudlite.compression.search import run_search
    from fraudlite.models.metrics import average_precision

    recipe = parse_recipe('[[stage]]\nname = "drop_inputs"\noptional = true\nfinetune_epochs = 1\n')
    lines: list[str] = []

    def evaluate(state):
        return {
            "average_precision": float(
                average_precision(stage_data.y_valid, state.logits(stage_data.X_valid))
            )
        }

    plain = dataclasses.replace(stage_data, groups=None)
    ap0 = evaluate(base_state)["average_precision"]
    result = run_search(recipe, base_state, plain, evaluate, ap0, 0.005, lines.append)
    assert result.accepted == [] and result.skipped == [] and result.trials == []
    assert any("drop_inputs: not applicable (the model has no extra columns)" in line for line in lines)
    with_groups = run_search(recipe, base_state, stage_data, evaluate, ap0, 0.005, lines.append)
    assert [t.stage for t in with_groups.accepted] == ["drop_inputs"]


def test_forms_slice_over_a_hole_and_gather_scattered_inputs(base_state, stage_data):
    """Masked-out columns inside the used span are read with their zero weights (one slice); inputs
    spread wider are gathered. Both score as the state does."""
    from fraudlite.compression.inputs import _without
    from fraudlite.runtime.forms import build_forms

    X = np.ascontiguousarray(stage_data.X_valid[:2000])
    for gone, sliced in ((np.array([0, 1, 9]), True), (np.arange(1, 20, 2), False)):
        state = _without(base_state, gone)
        forms = build_forms(state.layers, state.mean, state.std, state.masks)
        for name, form in forms.items():
            assert (form._slice is not None) == sliced, name
            np.testing.assert_allclose(form.score(X), state.predict_proba(X), atol=2e-6, err_msg=name)
