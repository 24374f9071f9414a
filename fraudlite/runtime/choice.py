"""Choosing a runnable form by measuring it on this machine, at the batch sizes that matter.

Why measure: which form is fastest flips with the model's widths and sparsity, the batch size and the
CPU (ORT's fused kernels win on wide layers and big batches; numpy has less per-call overhead at small
ones), so a rule of thumb picks wrong somewhere. Forms are timed alternately within each round so
that machine noise (a neighbour on a shared core, frequency changes) hits all of them alike, and the
best round is kept: noise only ever adds time, so the fastest round is the nearest to what a form
costs, where a median on a loaded machine still carries the load (a compression run beside a test
suite once measured numpy-dense 191 us per call slower than ort-dense by the median, and chose the
form that costs 30 MB more). :func:`machine_fingerprint` says when an earlier choice still applies.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from fraudlite.errors import ConfigError
from fraudlite.runtime.forms import Form, one_blas_thread

__all__ = ["PREFERENCE", "SLACK_SECONDS", "measure_forms", "choose_form", "machine_fingerprint"]

PREFERENCE = ("ort-dense", "numpy-dense", "numpy-sparse", "ort-folded", "numpy-folded")  # ties: first wins


def _rows(X: np.ndarray, n: int) -> np.ndarray:
    """n rows of X (cycled when X is shorter), contiguous float32."""
    X = np.asarray(X, np.float32)
    if not len(X):
        raise ConfigError("measure_forms needs at least one row of features")
    return np.ascontiguousarray(X[np.arange(n) % len(X)])


def _rate(form: Form, x: np.ndarray, min_seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        form.score(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * len(x) / elapsed


def measure_forms(
    forms: Mapping[str, Form],
    X: np.ndarray,
    batch_sizes: Sequence[int] = (1, 256),
    rounds: int = 7,
    min_seconds: float = 0.01,
) -> dict[str, dict[int, float]]:
    """Rows/s of each form at each batch size: the best of ``rounds``, forms alternated in each round.

    Each timing repeats ``score`` on the first ``batch`` rows of X until ``min_seconds`` have passed;
    every form runs once per batch size untimed first (lazy allocations, caches). numpy's BLAS runs on
    one thread meanwhile, as in the scorer (``forms.one_blas_thread``).
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    samples: dict[str, dict[int, list[float]]] = {name: {} for name in forms}
    with one_blas_thread():  # as the scorer runs them
        _measure(forms, X, batch_sizes, rounds, min_seconds, samples)
    return {
        name: {batch: max(rates) for batch, rates in by_batch.items()} for name, by_batch in samples.items()
    }


def _measure(forms, X, batch_sizes, rounds, min_seconds, samples) -> None:
    for batch in batch_sizes:
        x = _rows(X, int(batch))
        for form in forms.values():
            form.score(x)
        for _ in range(rounds):
            for name, form in forms.items():
                samples[name].setdefault(int(batch), []).append(_rate(form, x, min_seconds))


def _rank(name: str) -> tuple[int, str]:
    return (PREFERENCE.index(name) if name in PREFERENCE else len(PREFERENCE), name)


SLACK_SECONDS = 50e-6
"""Extra time per call that serving cannot tell apart: a scorer batch costs milliseconds (~40 us per
message measured in bench_streaming), so 50 us is a few percent of the smallest batch's cost."""


def choose_form(
    rows_per_s: Mapping[str, Mapping[int, float]],
    needs_onnxruntime: Mapping[str, bool] | None = None,
    slack_seconds: float = SLACK_SECONDS,
) -> tuple[str, str]:
    """(name, why): the fastest form (highest geometric mean of rows/s over the batch sizes), unless the
    fastest needs onnxruntime and a numpy form is at most ``slack_seconds`` slower per call at every
    batch size: then the fastest such numpy form. Time serving cannot tell apart loses to memory it can:
    importing onnxruntime and creating a session adds ~33 MB of RSS and ~30 ms to a load (measured).

    The geometric mean weighs a 2x gain at batch 1 like a 2x gain at batch 256, where an arithmetic
    mean would let the big batch decide alone. Exact ties go to the first of :data:`PREFERENCE`.
    """
    if not rows_per_s:
        raise ConfigError("choose_form needs at least one measured form")
    batches = sorted({b for rates in rows_per_s.values() for b in rates})
    geo = {}
    for name, rates in rows_per_s.items():
        if sorted(rates) != batches or any(not r > 0 for r in rates.values()):
            raise ConfigError(f"{name}: need a positive rows/s at every batch size {batches}, got {rates}")
        geo[name] = math.exp(sum(math.log(rates[b]) for b in batches) / len(batches))
    fastest = min(geo, key=lambda name: (-geo[name], _rank(name)))
    others = sorted((n for n in geo if n != fastest), key=_rank)
    ratios = ", ".join(f"{geo[fastest] / geo[n]:.2f}x {n}" for n in others) or "the only form measured"
    basis = f"geometric mean of rows/s at batch {', '.join(str(b) for b in batches)}"
    why = f"{fastest}: {ratios} ({basis})"
    heavy = needs_onnxruntime or {}
    if not heavy.get(fastest):
        return fastest, why

    def extra(name: str) -> float:  # the largest extra seconds per call over the fastest
        return max(b / rows_per_s[name][b] - b / rows_per_s[fastest][b] for b in batches)

    light = [n for n in geo if not heavy.get(n) and extra(n) <= slack_seconds]
    if not light:
        return fastest, why
    best = min(light, key=lambda name: (-geo[name], _rank(name)))
    return best, (
        f"{best}: at most {extra(best) * 1e6:.0f} us per call slower than {fastest} at batch "
        f"{', '.join(str(b) for b in batches)} (within {slack_seconds * 1e6:.0f} us) and needs no "
        f"onnxruntime in the serving process; measured {why}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    """An installed package's version from its ``.dist-info`` directory name: no import of the package and
    no ``importlib.metadata`` (which costs milliseconds and the ``email`` package on every model load)."""
    spec = find_spec(package)
    if spec is None or not spec.origin:
        return "none"
    site = Path(spec.origin).resolve().parent.parent
    for info in site.glob(f"{package}-*.dist-info"):
        return info.name[len(package) + 1 : -len(".dist-info")]
    return "unknown"


@cache
def machine_fingerprint() -> str:
    """What makes two timings comparable: CPU architecture, count and model, numpy and onnxruntime
    versions (onnxruntime's from its metadata: importing it would load it into a numpy-only process)."""
    return (
        f"{platform.machine()} cpus={os.cpu_count()} cpu={_cpu_model()} "
        f"numpy={np.__version__} onnxruntime={_version('onnxruntime')}"
    )
