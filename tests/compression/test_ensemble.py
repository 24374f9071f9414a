"""The teacher ensemble: the merged wide MLP is exactly the mean of its members, bad members and settings
are refused, and members train with the source's standardization."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlite.compression.ensemble import TeacherSettings, merge_members, train_teacher_ensemble
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError


def _same_stats(state: CompressedMLP, like: CompressedMLP) -> CompressedMLP:
    return CompressedMLP(state.layers, like.mean.copy(), like.std.copy())


@pytest.mark.parametrize("hidden", [(16, 8), (12,), (6, 5, 4)])
def test_merged_logit_is_the_mean_of_the_members(make_state, hidden) -> None:
    members = [make_state(hidden, seed=0)]
    members += [_same_stats(make_state(hidden, seed=s), members[0]) for s in (1, 2)]
    merged = merge_members(members)
    merged.validate()
    assert merged.hidden == tuple(3 * h for h in hidden)
    X = np.random.default_rng(5).standard_normal((500, 20)).astype(np.float32)
    expected = np.mean([m.logits(X) for m in members], axis=0)
    np.testing.assert_allclose(merged.logits(X), expected, rtol=1e-5, atol=1e-5)


def test_one_member_is_the_member_itself(make_state) -> None:
    state = make_state((8, 4))
    X = np.random.default_rng(0).standard_normal((100, 20)).astype(np.float32)
    np.testing.assert_array_equal(merge_members([state]).logits(X), state.logits(X))


def test_members_that_cannot_merge_are_refused(make_state) -> None:
    a = make_state((8, 4))
    with pytest.raises(ConfigError, match="at least one"):
        merge_members([])
    with pytest.raises(ConfigError, match="same depth"):
        merge_members([a, _same_stats(make_state((8,)), a)])
    with pytest.raises(ConfigError, match="standardization"):
        merge_members([a, make_state((8, 4), seed=1)])


@pytest.mark.parametrize("bad", [{"members": 0}, {"members": 101}, {"members": 2.5}, {"members": True},
                                 {"max_epochs": 0}])  # fmt: skip
def test_teacher_settings_are_checked(bad) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        TeacherSettings(**bad)


def test_members_train_with_the_source_standardization(stage_data, base_state) -> None:
    lines: list[str] = []
    teacher = train_teacher_ensemble(
        base_state, stage_data, TeacherSettings(members=2, max_epochs=2), lines.append
    )
    assert teacher.hidden == tuple(2 * h for h in base_state.hidden)
    np.testing.assert_array_equal(teacher.mean, base_state.mean)
    np.testing.assert_array_equal(teacher.std, base_state.std)
    # the source is the first member, unchanged; the second is a new model, so the mean differs from it
    w0 = base_state.layers[0][0]
    np.testing.assert_array_equal(teacher.layers[0][0][: len(w0)], w0)
    assert any("teacher member 2/2: valid AP" in line for line in lines)
    X = stage_data.X_valid
    assert not np.allclose(teacher.logits(X), base_state.logits(X), atol=1e-3)
