"""Recipes: parsing, validation that names the bad stage/setting, search candidates, the default."""

from __future__ import annotations

import pytest

from fraudlite.compression.recipe import (
    DEFAULT_RECIPE_TOML,
    STAGES,
    ExportSettings,
    default_recipe,
    load_recipe,
    parse_recipe,
    stage_runner,
)
from fraudlite.errors import ConfigError


def test_default_recipe_is_valid_and_ordered() -> None:
    recipe = default_recipe()
    assert [s.name for s in recipe.stages] == ["distill", "drop_inputs", "prune", "cluster"]
    assert [s.optional for s in recipe.stages] == [True, True, True, False]
    assert recipe.export == ExportSettings()
    for i, stage in enumerate(recipe.stages):
        assert callable(stage_runner(stage.name))
        for overrides in recipe.candidates(i):
            stage.config(overrides)  # every candidate builds a valid config
    assert recipe.to_dict()["stages"][0]["name"] == "distill"
    assert parse_recipe(DEFAULT_RECIPE_TOML).to_dict()["search"] == recipe.to_dict()["search"]


def test_every_registered_stage_resolves() -> None:
    for name in STAGES:
        assert callable(stage_runner(name))


def test_stage_settings_become_configs() -> None:
    recipe = parse_recipe('[[stage]]\nname = "distill"\nhidden = [8, 4]\ntemperature = 2.0\n')
    config = recipe.stages[0].config()
    assert config.hidden == (8, 4) and config.temperature == 2.0


def test_low_bit_stages_parse_from_a_recipe() -> None:
    text = (
        '[[stage]]\nname = "prune"\nsparsity = 0.5\n[[stage]]\nname = "ternary"\nthreshold = 0.2\n'
        '[[stage]]\nname = "qat"\nbits = 4\n[[stage]]\nname = "binary"\noptional = true\nepochs = 2\n'
        '[search]\n"qat.bits" = [2, 3, 4]\n"ternary.threshold" = [0.3, 0.1]\n'
    )
    recipe = parse_recipe(text)
    assert [s.name for s in recipe.stages] == ["prune", "ternary", "qat", "binary"]
    assert recipe.stages[1].config().threshold == 0.2 and recipe.stages[2].config().bits == 4
    assert recipe.stages[3].optional and recipe.stages[3].config().epochs == 2
    assert [recipe.stages[2].config(c).bits for c in recipe.candidates(2)] == [2, 3, 4]
    assert stage_runner("ternary").__name__ == "ternary_stage"
    assert stage_runner("binary").__name__ == "binary_stage"
    with pytest.raises(ConfigError, match="bits"):
        parse_recipe('[[stage]]\nname = "qat"\nbits = 1\n')
    with pytest.raises(ConfigError, match="threshold"):
        parse_recipe('[[stage]]\nname = "ternary"\nthreshold = 2.0\n')


def test_candidates_joint_and_grid() -> None:
    text = (
        '[[stage]]\nname = "prune"\n[[stage]]\nname = "cluster"\n'
        '[search]\n"prune.sparsity" = [0.9, 0.5]\n"prune.steps" = [4, 2]\n"cluster.k" = [8]\n'
    )
    recipe = parse_recipe(text)
    assert recipe.candidates(0) == [{"sparsity": 0.9, "steps": 4}, {"sparsity": 0.5, "steps": 2}]
    assert recipe.candidates(1) == [{"k": 8}]
    grid = parse_recipe(
        '[[stage]]\nname = "prune"\n[search]\n"prune.sparsity" = [0.9, 0.5]\n"prune.steps" = [4, 2, 1]\n'
    )
    assert len(grid.candidates(0)) == 6
    assert parse_recipe('[[stage]]\nname = "prune"\n').candidates(0) == [{}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[stage]]\nname = "shrink"\n', "unknown stage 'shrink'"),
        ('[[stage]]\nname = "prune"\nsparsty = 0.5\n', "unknown setting(s) 'sparsty'"),
        ('[[stage]]\nname = "prune"\nsparsity = 1.5\n', "sparsity"),
        ('[[stage]]\nname = "cluster"\nk = 1000\n', "cluster"),
        ("[[stage]]\nsparsity = 0.5\n", "has no name"),
        ('[stages]\nname = "prune"\n', "unknown section(s) 'stages'"),
        ('[[stage]]\nname = "prune"\n[search]\n"cluster.k" = [8]\n', "cluster.k"),
        ('[[stage]]\nname = "prune"\n[search]\n"prune.sparsity" = []\n', "non-empty list"),
        ('[[stage]]\nname = "prune"\n[search]\n"prune.sparsity" = [0.5, 7]\n', "sparsity"),
        ('[[stage]]\nname = "prune"\n[search]\n"prune.sparsty" = [0.5]\n', "sparsty"),
        ('[export]\nform = "int4"\n', "export.form"),
        ("[export]\nthreads = 4\n", "unknown setting(s) 'threads'"),
        ("[data]\nmax_train_rows = -1\n", "max_train_rows"),
        ("[[stage]\nname = 'prune'\n", "not valid TOML"),
    ],
)
def test_bad_recipes_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(text, "r.toml")
    assert message in str(exc.value)


def test_load_recipe_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    path = tmp_path / "r.toml"
    path.write_text('[[stage]]\nname = "prune"\nsparsity = 0.5\n')
    assert load_recipe(path).stages[0].settings == {"sparsity": 0.5}
    assert load_recipe(path).source == str(path)


def test_optional_flag() -> None:
    recipe = parse_recipe('[[stage]]\nname = "prune"\noptional = true\nsparsity = 0.5\n')
    assert recipe.stages[0].optional and recipe.stages[0].settings == {"sparsity": 0.5}
    assert recipe.to_dict()["stages"][0]["optional"] is True
    with pytest.raises(ConfigError, match="optional must be true or false"):
        parse_recipe('[[stage]]\nname = "prune"\noptional = "yes"\n')


def test_restarts_setting() -> None:
    recipe = parse_recipe('[[stage]]\nname = "cluster"\nrestarts = 3\nk = 8\n')
    assert recipe.stages[0].restarts == 3 and recipe.stages[0].settings == {"k": 8}
    assert recipe.to_dict()["stages"][0]["restarts"] == 3
    assert "restarts" not in parse_recipe('[[stage]]\nname = "cluster"\n').to_dict()["stages"][0]
    assert default_recipe().stages[3].restarts == 3
    for bad in ("0", "true", "2.5", '"3"'):
        with pytest.raises(ConfigError, match="restarts must be an integer"):
            parse_recipe(f'[[stage]]\nname = "cluster"\nrestarts = {bad}\n')


def test_budget_schedule() -> None:
    text = '[[stage]]\nname = "prune"\n[[stage]]\nname = "cluster"\n[[stage]]\nname = "distill"\n'
    proportional = parse_recipe(text)
    assert proportional.budget == "proportional"
    assert [round(proportional.stage_budget(i, 0.006), 6) for i in range(3)] == [0.002, 0.004, 0.006]
    greedy = parse_recipe(text + '[search]\nbudget = "greedy"\n')
    assert [greedy.stage_budget(i, 0.006) for i in range(3)] == [0.006] * 3
    assert greedy.to_dict()["search"] == {"budget": "greedy"}
    with pytest.raises(ConfigError, match="budget must be one of"):
        parse_recipe(text + '[search]\nbudget = "lavish"\n')


def test_budget_shares_and_reserve() -> None:
    text = '[[stage]]\nname = "prune"\n[[stage]]\nname = "cluster"\n'
    shares = parse_recipe(text + "[search]\nbudget = [0.5, 1.0]\nreserve = 0.2\n")
    assert shares.budget == (0.5, 1.0) and shares.reserve == 0.2
    assert [round(shares.stage_budget(i, 0.005), 6) for i in range(2)] == [0.002, 0.004]
    assert shares.to_dict()["search"] == {"budget": [0.5, 1.0], "reserve": 0.2}
    reserved = parse_recipe(text + '[search]\nbudget = "greedy"\nreserve = 0.5\n')
    assert reserved.stage_budget(0, 0.006) == pytest.approx(0.003)
    for bad in ("[0.5]", "[0.8, 0.5]", "[0.0, 1.0]", '["a", 1.0]', "[0.5, 1.5]"):
        with pytest.raises(ConfigError, match="one non-decreasing fraction"):
            parse_recipe(text + f"[search]\nbudget = {bad}\n")
    for bad in ("1.0", "-0.1", "true", '"half"'):
        with pytest.raises(ConfigError, match="reserve must be a fraction"):
            parse_recipe(text + f"[search]\nreserve = {bad}\n")
