"""Accuracy-bounded search: run the recipe's stages in order, each with the most aggressive candidate
setting whose validation AP stays within ``max_ap_drop`` of the source model's.

Stage by stage (the strategy of Intel Neural Compressor's accuracy-driven tuning and NNI's iterative
pruners): for stage ``i`` the candidates of ``[search]`` are tried from the smallest model to the
largest; the first whose *cumulative* AP drop (source AP minus AP after this stage) is within the
stage's share of the budget is kept and the next stage starts from it. The drop is always measured
against the source, so the budget is never spent twice. The share is ``(i + 1) / n`` of
``--max-ap-drop`` by default (``budget = "proportional"``; measured: with ``"greedy"`` a first stage
that spends the whole budget leaves later, nearly free stages nothing), the whole budget for the last
stage; a recipe may set the shares itself (``budget = [0.4, 0.8, 1.0]``) and keep a ``reserve`` of the
budget back from every stage. When no candidate of a stage fits, an ``optional`` stage is skipped
(the next stage starts from the same model) and a required one stops the search with a
:class:`SearchError` that lists every trial and says what would make it fit.

A stage with ``restarts = n`` trains each candidate with n seeds and keeps the run whose top 1% of
training rows by score overlaps most with the teacher's top 1% (:func:`alert_agreement`; the teacher
is ``data.teacher``, the source model or the recipe's teacher ensemble, else the source). That
choice looks at no label and no validation row, so the validation drop of the kept run stays an honest
check; measured on the default data, a clustering run with low agreement was also the one that lost
the most AP on the weeks after the validation window.

The validation window is the only thing that judges a candidate. For that judgement to generalise,
the built-in recipe's stages train fixed schedules and keep their last weights instead of the epoch
with the best validation AP (``early_stopping = false``): selecting the best of many noisy epochs on
the very window the budget is checked on made the validation drop look ~0.005 smaller than the drop
on later data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fraudlite.compression.compact import encode_compact
from fraudlite.compression.recipe import Recipe, stage_runner
from fraudlite.compression.state import CompressedMLP, StageData
from fraudlite.errors import ConfigError, UserError

__all__ = ["Trial", "SearchError", "SearchResult", "alert_agreement", "run_search"]

AGREEMENT_SHARE = 0.01  # the alert rate whose agreement picks among restarts

logger = logging.getLogger(__name__)

Evaluate = Callable[[CompressedMLP], dict]


class SearchError(UserError):
    """No candidate of a stage kept the AP drop within the budget (exit status 2 from the CLI)."""

    def __init__(self, message: str, trials: list[Trial]) -> None:
        super().__init__(message)
        self.trials = trials


@dataclass
class Trial:
    """One stage run with one candidate setting."""

    stage: str
    index: int
    setting: dict[str, Any]
    metrics: dict
    ap_drop: float
    accepted: bool
    seconds: float
    state: CompressedMLP | None = field(default=None, repr=False)
    compact_bytes: int | None = None
    agreement: float | None = None
    restart_agreements: list[float] = field(default_factory=list)

    def record(self) -> dict:
        return {
            "compact_bytes": self.compact_bytes,
            "top_agreement": self.agreement,
            **({"restart_agreements": self.restart_agreements} if len(self.restart_agreements) > 1 else {}),
            "stage": self.stage,
            "index": self.index,
            "setting": self.setting,
            "average_precision": self.metrics["average_precision"],
            "roc_auc": self.metrics.get("roc_auc"),
            "card_precision_at_100": self.metrics.get("card_precision_at_100"),
            "ap_drop": self.ap_drop,
            "accepted": self.accepted,
            "seconds": round(self.seconds, 2),
            **({"summary": self.state.summary()} if self.state is not None else {}),
        }


@dataclass
class SearchResult:
    """The final state, the accepted state after each stage, every trial, the optional stages skipped, and
    the source's own top-1% agreement with the teacher (1.0 when the teacher is the source)."""

    state: CompressedMLP
    accepted: list[Trial]
    trials: list[Trial]
    skipped: list[dict] = field(default_factory=list)
    source_agreement: float = 1.0


def alert_agreement(reference: np.ndarray, scores: np.ndarray, share: float = AGREEMENT_SHARE) -> float:
    """The fraction of the ``share`` highest-``reference`` rows that are also among the ``share``
    highest-``scores`` rows (1.0 = the same alerts at that alert rate; label-free).

    Raises:
        ConfigError: on arrays of different lengths or a share outside (0, 1].
    """
    reference, scores = np.asarray(reference).reshape(-1), np.asarray(scores).reshape(-1)
    if len(reference) != len(scores) or not 0 < share <= 1:
        raise ConfigError("alert_agreement needs two score arrays of one length and a share in (0, 1]")
    n = max(1, int(round(share * len(reference))))
    if n >= len(reference):
        return 1.0
    top_ref = np.argpartition(-reference, n - 1)[:n]
    top = np.argpartition(-scores, n - 1)[:n]
    return float(np.intersect1d(top_ref, top, assume_unique=True).size / n)


def run_search(
    recipe: Recipe,
    source: CompressedMLP,
    data: StageData,
    evaluate: Evaluate,
    source_ap: float,
    max_ap_drop: float,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run the recipe with the accuracy bound.

    Args:
        recipe: stages, their settings and ``[search]`` candidates.
        source: the trained model as a :class:`CompressedMLP`.
        data: training sample and validation rows for the stages.
        evaluate: validation metrics of a state (``average_precision`` at least).
        source_ap: validation AP of the source model (the reference of every drop).
        max_ap_drop: the budget.
        progress: per-epoch lines from the techniques, and one line per trial.

    Returns:
        The :class:`SearchResult`.

    Raises:
        SearchError: a stage where no candidate fits (message lists the trials and the smallest drop).
        ConfigError: a stage setting the technique rejects.
    """
    say = progress or (lambda msg: None)
    state = source
    accepted: list[Trial] = []
    trials: list[Trial] = []
    skipped: list[dict] = []
    n_stages = len(recipe.stages)
    started = time.perf_counter()
    reference = None  # the teacher's logits on the training rows, computed once
    teacher = data.teacher if data.teacher is not None else source
    for i, spec in enumerate(recipe.stages):
        runner = stage_runner(spec.name)
        moot = getattr(runner, "not_applicable", lambda data: None)(data)  # e.g. no extra columns
        if moot:
            msg = f"compress: stage {i + 1}/{n_stages} {spec.name}: not applicable ({moot})"
            logger.info(msg)
            say(msg)
            continue
        candidates = recipe.candidates(i)
        stage_budget = recipe.stage_budget(i, max_ap_drop)
        stage_trials = []
        for j, overrides in enumerate(candidates):
            config = spec.config(overrides)
            label = f"stage {i + 1}/{n_stages} {spec.name}" + (
                f" trial {j + 1}/{len(candidates)} {overrides}" if overrides else ""
            )
            msg = f"compress: {label}: start"
            logger.info(msg)
            say(msg)
            t0 = time.perf_counter()
            runs = []
            for r in range(spec.restarts):
                cfg = config if r == 0 else _reseeded(spec, overrides, config, r)
                tag = label + (
                    f" restart {r + 1}/{spec.restarts} seed {cfg.seed}" if spec.restarts > 1 else ""
                )
                out = runner(
                    state, data, cfg, lambda line, tag=tag: _relay(f"compress: {tag}: {line}", progress)
                )
                if reference is None:
                    reference = teacher.logits(data.X_train)
                runs.append((alert_agreement(reference, out.logits(data.X_train)), r, out))
                if spec.restarts > 1:
                    say(f"compress: {tag}: top-1% agreement with the teacher {runs[-1][0]:.4f}")
            agreement, _, out = max(runs, key=lambda run: (run[0], -run[1]))
            metrics = evaluate(out)
            drop = source_ap - metrics["average_precision"]
            ok = drop <= stage_budget + 1e-12
            trial = Trial(spec.name, i, overrides, metrics, drop, ok, time.perf_counter() - t0, out)
            trial.compact_bytes = len(encode_compact(out))
            trial.agreement = agreement
            trial.restart_agreements = [run[0] for run in runs]
            trials.append(trial)
            stage_trials.append(trial)
            elapsed = time.perf_counter() - started
            done = i + (j + 1) / len(candidates)
            eta = elapsed / done * (n_stages - done) if done else 0.0
            msg = (
                f"compress: {label}: AP={metrics['average_precision']:.4f} drop={drop:+.4f} "
                f"({'accepted' if ok else 'over budget'}) top-1% agreement={agreement:.3f} kept={out.n_kept_weights():,} "
                f"{trial.seconds:.1f}s elapsed={elapsed:.0f}s eta~{eta:.0f}s"
            )
            logger.info(msg)
            say(msg)
            if ok:
                state = out
                accepted.append(trial)
                break
        else:
            if not spec.optional:
                raise SearchError(
                    _explain(spec.name, i, stage_trials, source_ap, max_ap_drop, stage_budget), trials
                )
            best = min(t.ap_drop for t in stage_trials)
            msg = (
                f"compress: stage {i + 1}/{n_stages} {spec.name}: skipped (optional; no candidate within the "
                f"budget, smallest AP drop {best:+.4f})"
            )
            logger.info(msg)
            say(msg)
            skipped.append({"stage": spec.name, "index": i, "smallest_ap_drop": best})
    for t in trials:
        if not t.accepted:
            t.state = None  # free rejected models; their records stay
    source_agreement = 1.0
    if teacher is not source:
        if reference is None:
            reference = teacher.logits(data.X_train)
        source_agreement = alert_agreement(reference, source.logits(data.X_train))
    return SearchResult(state, accepted, trials, skipped, source_agreement)


def _reseeded(spec, overrides: dict, config: Any, restart: int) -> Any:
    if not hasattr(config, "seed"):
        raise ConfigError(f"stage {spec.name!r} has no seed setting, so restarts cannot differ")
    return spec.config({**overrides, "seed": int(config.seed) + restart})


def _relay(line: str, progress: Callable[[str], None] | None) -> None:
    # the techniques log their own epoch lines; only forward them to a caller's callback
    if progress is not None:
        progress(line)


def _explain(
    stage: str, index: int, trials: list[Trial], source_ap: float, max_ap_drop: float, stage_budget: float
) -> str:
    best = min(trials, key=lambda t: t.ap_drop)
    tried = "; ".join(f"{t.setting or 'recipe settings'}: AP drop {t.ap_drop:+.4f}" for t in trials)
    share = "" if stage_budget >= max_ap_drop else f" (this stage's share: {stage_budget:.4f})"
    needed = best.ap_drop * max_ap_drop / stage_budget if stage_budget > 0 else best.ap_drop
    return (
        f"compression stopped at stage {index + 1} ({stage!r}): no setting kept the validation AP drop within "
        f"--max-ap-drop {max_ap_drop}{share} (source AP {source_ap:.4f}). Tried: {tried}. "
        f"The smallest drop was {best.ap_drop:.4f}; raise --max-ap-drop to at least {needed:.4f}, add "
        f"milder candidates for {stage!r} to the recipe's [search], make the stage optional, or remove it."
    )
