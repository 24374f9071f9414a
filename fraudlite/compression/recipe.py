"""Compression recipes: a TOML file naming the stages, in order, with their settings.

Example (abridged; the built-in default is :data:`DEFAULT_RECIPE_TOML`)::

    [[stage]]
    name = "distill"          # knowledge distillation into a smaller student
    optional = true           # the search may skip it if no student fits the AP budget
    hidden = [16, 8]

    [[stage]]
    name = "prune"            # gradual global magnitude pruning
    sparsity = 0.7

    [[stage]]
    name = "cluster"          # k-means weight sharing + centroid fine-tuning
    k = 16
    restarts = 3              # train 3 seeds, keep the one that agrees best with the teacher (no labels)

    [search]                  # candidates per "stage.setting", most aggressive first
    budget = "proportional"   # stage i of n may spend (i + 1) / n of --max-ap-drop, or "greedy"
    "distill.hidden" = [[8, 4], [16, 8], [24, 12], [32, 16]]
    "prune.sparsity" = [0.85, 0.7, 0.5, 0.3]

    [export]                  # how the compact artifact serves
    form = "auto"             # auto (time the runnable forms, serve the fastest) | ort-dense | numpy-dense | ...

    [data]                    # max_train_rows: fine-tuning rows (0 = all); [teacher] members = 3: an ensemble

Each stage's settings are the fields of its technique's config dataclass (``DistillConfig``, ``PruneConfig``,
``StructuredConfig``, ``ClusterConfig``, ``QATConfig`` (``bits`` 2..8), ``TernaryConfig``, ``BinaryConfig``); an
unknown stage, section or setting is a :class:`ConfigError` naming it and listing the valid names.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudlite.compression.ensemble import TeacherSettings
from fraudlite.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "StageSpec",
    "ExportSettings",
    "DataSettings",
    "Recipe",
    "DEFAULT_RECIPE_TOML",
    "default_recipe",
    "load_recipe",
    "parse_recipe",
    "stage_runner",
]

# stage name -> (module, config class, stage function); resolved lazily (torch is imported there)
STAGES: dict[str, tuple[str, str, str]] = {
    "distill": ("fraudlite.compression.distill", "DistillConfig", "distill_stage"),
    "prune": ("fraudlite.compression.prune", "PruneConfig", "prune_stage"),
    "structured": ("fraudlite.compression.prune", "StructuredConfig", "structured_prune_stage"),
    "drop_inputs": ("fraudlite.compression.inputs", "InputDropConfig", "drop_inputs_stage"),
    "cluster": ("fraudlite.compression.cluster", "ClusterConfig", "cluster_stage"),
    "qat": ("fraudlite.compression.qat", "QATConfig", "qat_stage"),
    "ternary": ("fraudlite.compression.lowbit", "TernaryConfig", "ternary_stage"),
    "binary": ("fraudlite.compression.lowbit", "BinaryConfig", "binary_stage"),
}

FORMS = ("auto", "ort-dense", "numpy-dense", "numpy-sparse", "ort-folded", "numpy-folded")
BUDGETS = ("proportional", "greedy")
STORAGES = ("auto", "compact", "fp32")

DEFAULT_RECIPE_TOML = """\
# fraudlite built-in compression recipe
# distill -> drop unneeded extra columns -> prune -> share weights (clustering-aware training + k-means) -> entropy-coded compact artifact
# + fp32 runnable ONNX. Candidates are tried smallest model first; the first within its share of
# --max-ap-drop wins. An optional stage with no candidate within the budget is skipped (and reported), a
# required one stops the run.
# Every stage trains a fixed schedule and keeps its last weights (early_stopping = false): the validation
# window then only judges candidates. Measured: picking the best of ~30 noisy epochs on the same window
# the budget is checked on made validation AP look ~0.005 better than it generalised (test drop 0.011
# for a validation drop of 0.005).

[[stage]]
name = "distill"
optional = true
hidden = [24, 12]
kd_teacher = "source"  # the teacher ensemble of [teacher]
init = "auto"  # start from the teacher structurally pruned to the student's widths
epochs = 80  # measured: 80 epochs agreed more with the teacher than 40 and lost ~0.002 AP less on every window
early_stopping = false

[[stage]]
name = "drop_inputs"  # extra columns the model does not need (none: the stage is passed over)
optional = true

[[stage]]
name = "prune"
optional = true
sparsity = 0.5
prune_epochs = 10  # measured: 4 + 10 epochs at 60% lost ~0.004 AP more on later weeks than 10 + 30
finetune_epochs = 30
kd_teacher = "source"  # distil from the original model, not from the student (no drift stage to stage)
kd_alpha = 0.9
kd_temperature = 1.0
early_stopping = false

[[stage]]
name = "cluster"
restarts = 3  # measured: one seed's clustering can land ~0.005 AP apart from another's on later weeks
k = 16
ste_epochs = 10  # clustering-aware training first: k-means alone lost up to ~0.13 AP before fine-tuning
finetune_epochs = 20
kd_teacher = "source"
kd_alpha = 0.9
kd_temperature = 1.0
early_stopping = false
mantissa_bits = 4  # centroids, biases and std: measured < 0.001 AP for ~65 B (of ~520) vs full fp16
pow2_stats = false  # measured: power-of-two stats folded into layer 0 cost ~0.01 AP at k = 16..32
# center_stats (default): the mean folds into the first bias, exactly

[search]
budget = [0.4, 0.6, 0.8, 1.0]  # cumulative share of --max-ap-drop per stage (distillation is nearly free)
"distill.hidden" = [[24, 12], [32, 16]]
# measured on the weeks after the validation window: 60% sparsity lost 0.006-0.012 AP there while the
# validation window showed 0.002, so the search starts at 50%
"prune.sparsity" = [0.5, 0.45, 0.4]
"cluster.k" = [16, 24, 32]

[export]
form = "auto"

[data]
max_train_rows = 0  # all training rows: a 400k sample cost students ~0.01 AP
seed = 0

[teacher]
# distil from the source plus two more seeds of it (one wide MLP = the mean of their logits), here and
# in the stages' kd_teacher = "source". Measured over 4 seeds of the whole recipe on the default data
# (mean AP drop against the source; single teacher -> 3-model teacher): validation window +0.0042 ->
# +0.0030, the week after it +0.0002 -> -0.0144, the test window +0.0064 -> +0.0009 (better on test in
# 4 of 4 seeds). Costs two trainings and a wider teacher in every fine-tuning step.
members = 3
"""


@dataclass(frozen=True)
class StageSpec:
    """One stage of a recipe: technique name, its settings (validated against its config), whether the
    search may skip it when no candidate fits the AP budget (``optional = true``), and how many seeds
    each candidate trains with (``restarts``; the search keeps the run whose top alerts agree best
    with the teacher's on the training rows, see :func:`fraudlite.compression.search.alert_agreement`)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    restarts: int = 1

    def config(self, overrides: dict[str, Any] | None = None) -> Any:
        """The technique's config dataclass built from the settings (+ overrides).

        Raises:
            ConfigError: unknown stage/setting or an invalid value (from the config's own checks).
        """
        module, config_name, _ = _stage_entry(self.name)
        cls = getattr(_import_stage_module(self.name, module), config_name)
        settings = {**self.settings, **(overrides or {})}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(
                f"recipe stage {self.name!r}: unknown setting(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(known)})"
            )
        try:
            return cls(**{k: _tuples(v) for k, v in settings.items()})
        except ConfigError as exc:
            raise ConfigError(f"recipe stage {self.name!r}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"recipe stage {self.name!r}: invalid setting ({exc})") from exc


@dataclass(frozen=True)
class ExportSettings:
    """How the compressed model serves: it ships as its compact artifact and runs as one of the runnable
    forms of the decoded weights (``fraudlite.runtime.forms``).

    Attributes:
        form: ``auto`` (time every form side by side and serve the fastest) or a form to force:
            ``ort-dense``, ``numpy-dense``, ``numpy-sparse`` (only for a pruned model), ``numpy-folded``
            (some input's standardization folds into layer 0), ``ort-folded`` (every input's does).
        storage: weight storage of the per-stage ONNX graphs in the report: ``compact`` (codebook + packed
            indices, fp16 where exact), ``fp32``, or ``auto`` (the smaller file).
        max_score_diff: largest |score difference| allowed between the served form and the compressed
            weights (a bug guard: every form computes the same float32 arithmetic).
    """

    form: str = "auto"
    storage: str = "auto"
    max_score_diff: float = 1e-6

    def __post_init__(self) -> None:
        _choice("export.form", self.form, FORMS)
        _choice("export.storage", self.storage, STORAGES)
        if not (math.isfinite(self.max_score_diff) and self.max_score_diff > 0):
            raise ConfigError(f"export.max_score_diff must be > 0, got {self.max_score_diff}")


_RETIRED_EXPORT = {"precision", "calibration", "per_channel", "calibration_rows"}
"""[export] settings of the int8 ONNX export, retired: int8 graphs measured 0.29-0.65x fp32 on these
models and were never chosen; the served model is the compact artifact's exact weights."""


def _export_section(raw: dict) -> ExportSettings:
    table = dict(raw.get("export", {})) if isinstance(raw.get("export", {}), dict) else raw.get("export")
    if isinstance(table, dict):
        precision = table.get("precision", "auto")
        if precision not in ("auto", "fp32"):
            raise ConfigError(
                f"recipe [export]: precision = {precision!r} is retired: a compressed model serves the exact "
                "weights of its compact artifact (int8 ONNX graphs measured slower here); remove the setting "
                'or set form = "auto"'
            )
        for key in _RETIRED_EXPORT & set(table):
            logger.warning("recipe [export]: %s is retired and ignored (the served form is measured)", key)
            del table[key]
    return _section({"export": table}, "export", ExportSettings)


@dataclass(frozen=True)
class DataSettings:
    """Which rows the stages fine-tune on.

    Attributes:
        max_train_rows: a seeded uniform sample of the training window of at most this many rows
            (0 = all); validation always uses the whole validation window.
        seed: sampling seed.
    """

    max_train_rows: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.max_train_rows) < 0:
            raise ConfigError(f"data.max_train_rows must be >= 0, got {self.max_train_rows}")


@dataclass(frozen=True)
class Recipe:
    """Stages in order, search candidates, export and data settings."""

    stages: tuple[StageSpec, ...]
    search: dict[str, list[Any]] = field(default_factory=dict)
    export: ExportSettings = field(default_factory=ExportSettings)
    data: DataSettings = field(default_factory=DataSettings)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    source: str = "built-in"
    budget: str | tuple[float, ...] = "proportional"
    reserve: float = 0.0

    def stage_budget(self, index: int, max_ap_drop: float) -> float:
        """The cumulative AP drop stage ``index`` may reach: ``greedy`` = the whole budget at every stage
        (the first stages may spend it all); ``proportional`` (default) = ``(index + 1) / n`` of it, so
        later stages keep room (the last stage always gets the whole budget). ``reserve`` (a fraction
        in [0, 1)) is kept back from every stage: a safety margin for the noise of validation AP, so
        the chosen model does not sit exactly at the limit on the window it was chosen on. A list
        of cumulative fractions (one per stage) sets each stage's share explicitly."""
        usable = max_ap_drop * (1.0 - self.reserve)
        if isinstance(self.budget, tuple):
            return usable * self.budget[index]
        if self.budget == "greedy":
            return usable
        return usable * (index + 1) / len(self.stages)

    def candidates(self, index: int) -> list[dict[str, Any]]:
        """Setting overrides to try for stage ``index``, most aggressive first; ``[{}]`` when the stage
        has nothing to search. Several searched settings of one stage are tried jointly, in the order
        of the first one (lists of equal length), else as a grid."""
        stage = self.stages[index]
        keys = [k.split(".", 1)[1] for k in self.search if k.split(".", 1)[0] == stage.name]
        if not keys:
            return [{}]
        lists = [self.search[f"{stage.name}.{k}"] for k in keys]
        if len({len(v) for v in lists}) == 1:
            return [dict(zip(keys, values, strict=True)) for values in zip(*lists, strict=True)]
        grid: list[dict[str, Any]] = [{}]
        for key, values in zip(keys, lists, strict=True):
            grid = [{**g, key: v} for g in grid for v in values]
        return grid

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "stages": [
                {
                    "name": s.name,
                    **({"optional": True} if s.optional else {}),
                    **({"restarts": s.restarts} if s.restarts != 1 else {}),
                    **s.settings,
                }
                for s in self.stages
            ],
            "search": {
                "budget": list(self.budget) if isinstance(self.budget, tuple) else self.budget,
                **({"reserve": self.reserve} if self.reserve else {}),
                **copy.deepcopy(self.search),
            },
            "export": dataclasses.asdict(self.export),
            "data": dataclasses.asdict(self.data),
            "teacher": dataclasses.asdict(self.teacher),
        }


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _tuples(value: Any) -> Any:
    """TOML arrays arrive as lists; config fields use tuples (hidden widths)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _stage_entry(name: str) -> tuple[str, str, str]:
    if name not in STAGES:
        raise ConfigError(f"recipe: unknown stage {name!r} (known: {', '.join(STAGES)})")
    return STAGES[name]


def _import_stage_module(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigError(
                f"recipe: stage {name!r} is not available in this build ({module} is missing)"
            ) from exc
        raise


def stage_runner(name: str):
    """A technique's ``(state, data, config, progress) -> CompressedMLP``; ``.not_applicable(data)``: skip why."""
    module, _, func = _stage_entry(name)
    mod = _import_stage_module(name, module)
    try:
        return getattr(mod, func)
    except AttributeError as exc:
        raise ConfigError(f"recipe: stage {name!r} is not available in this build ({module}.{func})") from exc


def _section(raw: dict, name: str, cls: type) -> Any:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"recipe: [{name}] must be a table")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"recipe [{name}]: unknown setting(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
        )
    try:
        return cls(**table)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"recipe [{name}]: {exc}") from exc


def _budget(value: Any, n_stages: int, source: str) -> str | tuple[float, ...]:
    """``"proportional"``, ``"greedy"`` or one cumulative fraction of the budget per stage."""
    if isinstance(value, list):
        try:
            shares = tuple(float(v) for v in value if not isinstance(v, bool))
        except (TypeError, ValueError):
            shares = ()
        ok = (
            len(shares) == len(value) == n_stages
            and all(0.0 < v <= 1.0 for v in shares)
            and all(a <= b for a, b in zip(shares, shares[1:], strict=False))
        )
        if not ok:
            raise ConfigError(
                f"{source}: [search] budget as a list needs one non-decreasing fraction in (0, 1] per stage "
                f"({n_stages}), got {value!r}"
            )
        return shares
    if value not in BUDGETS:
        raise ConfigError(
            f"{source}: [search] budget must be one of {', '.join(BUDGETS)} or a list of per-stage fractions, "
            f"got {value!r}"
        )
    return value


def parse_recipe(text: str, source: str = "<recipe>", check_stages: bool = True) -> Recipe:
    """Parse and validate recipe TOML.

    Args:
        text: the TOML document.
        source: name used in messages (file path).
        check_stages: also build every stage's config (imports the techniques) so that a bad setting
            fails now, before any work.

    Raises:
        ConfigError: TOML syntax, unknown section/stage/setting, bad search entries, invalid values.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    unknown = sorted(set(raw) - {"stage", "search", "export", "data", "teacher"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(map(repr, unknown))} "
            "(known: stage, search, export, data, teacher)"
        )
    stages_raw = raw.get("stage", [])
    if not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
        raise ConfigError(f"{source}: stages are [[stage]] tables")
    stages = []
    for i, table in enumerate(stages_raw, 1):
        table = dict(table)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f'{source}: stage {i} has no name (name = "prune", ...)')
        try:
            _stage_entry(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: stage {i}: {exc}") from exc
        optional = table.pop("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"{source}: stage {i} ({name!r}): optional must be true or false")
        restarts = table.pop("restarts", 1)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or not 1 <= restarts <= 100:
            raise ConfigError(f"{source}: stage {i} ({name!r}): restarts must be an integer in 1..100")
        stages.append(StageSpec(name, table, optional, restarts))
    search = dict(raw.get("search", {})) if isinstance(raw.get("search", {}), dict) else None
    if search is None:
        raise ConfigError(f'{source}: [search] must be a table of "stage.setting" = [candidates]')
    budget = _budget(search.pop("budget", "proportional"), len(stages), source)
    reserve = search.pop("reserve", 0.0)
    if isinstance(reserve, bool) or not isinstance(reserve, int | float) or not 0.0 <= reserve < 1.0:
        raise ConfigError(f"{source}: [search] reserve must be a fraction in [0, 1), got {reserve!r}")
    names = [s.name for s in stages]
    for key, values in search.items():
        stage, dot, setting = key.partition(".")
        if not dot or stage not in names:
            raise ConfigError(
                f'{source}: [search] key {key!r} must be "stage.setting" for a stage of this recipe '
                f"({', '.join(names) or 'none'})"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: [search] {key!r} must be a non-empty list of candidates")
    recipe = Recipe(
        tuple(stages),
        {k: list(v) for k, v in search.items()},
        _export_section(raw),
        _section(raw, "data", DataSettings),
        _section(raw, "teacher", TeacherSettings),
        source,
        budget,
        float(reserve),
    )
    if check_stages:
        for i, stage in enumerate(recipe.stages):
            stage.config()
            for overrides in recipe.candidates(i):
                stage.config(overrides)
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        ConfigError: the file is missing/unreadable or invalid (see :func:`parse_recipe`).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"--recipe: no such file {str(p)!r}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--recipe: cannot read {str(p)!r} ({exc})") from exc
    return parse_recipe(text, str(p))


def default_recipe(check_stages: bool = True) -> Recipe:
    """The built-in recipe (:data:`DEFAULT_RECIPE_TOML`)."""
    return parse_recipe(DEFAULT_RECIPE_TOML, "built-in", check_stages=check_stages)
