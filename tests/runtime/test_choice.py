"""Choosing a form by measurement: a real choice on real forms, and the chooser's rules on given numbers."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from fraudlite.errors import ConfigError
from fraudlite.runtime.choice import choose_form, machine_fingerprint, measure_forms
from fraudlite.runtime.forms import NumpyDense, OrtDense, build_forms


def _mlp(widths: list[int], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            (0.1 * rng.standard_normal(n_out)).astype(np.float32),
        )
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


def test_the_choice_on_a_wide_model_is_the_measured_fastest():
    """Every applicable form of a wide, 10%-pruned model, timed at batch 1024: the chooser's pick is
    the form this same measurement shows fastest."""
    rng = np.random.default_rng(0)
    layers = _mlp([256, 512, 256, 1], rng)
    masks = [rng.random(w.shape) < 0.1 for w, _ in layers]
    forms = build_forms(layers, np.zeros(256), np.ones(256), masks)
    X = rng.standard_normal((1024, 256)).astype(np.float32)
    rates = measure_forms(forms, X, batch_sizes=(1024,), rounds=3)
    assert set(rates) == {"ort-dense", "numpy-dense", "numpy-sparse", "ort-folded", "numpy-folded"}
    name, why = choose_form(rates)
    assert name == max(rates, key=lambda n: rates[n][1024])
    assert all(rates[name][1024] >= r[1024] for r in rates.values())
    assert why.startswith(f"{name}: ") and why.endswith("(geometric mean of rows/s at batch 1024)")


def test_ort_beats_numpy_on_a_small_model_at_a_big_batch():
    """Measured here (2-core x86_64): ORT's fused kernels 1.15-1.5x numpy-dense for [20, 64, 32, 1] at
    batch 2048. NOT on the wide [256, 512, 256, 1]: there numpy's multithreaded BLAS ties or beats
    ORT's one intra-op thread, so the wide test above asserts only consistency."""
    rng = np.random.default_rng(1)
    layers = _mlp([20, 64, 32, 1], rng)
    forms = {f.name: f for f in (OrtDense(layers, None, None), NumpyDense(layers, None, None))}
    rates = measure_forms(forms, rng.standard_normal((2048, 20)).astype(np.float32), (2048,), rounds=5)
    assert choose_form(rates)[0] == "ort-dense", rates


class _Recorder:
    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log = name, log

    def score(self, features: np.ndarray) -> np.ndarray:
        self.log.append((self.name, len(features)))
        return np.zeros(len(features), np.float32)


def test_forms_are_timed_alternately_and_inputs_cycle_to_the_batch_size():
    log: list[tuple[str, int]] = []
    forms = {n: _Recorder(n, log) for n in ("a", "b", "c")}
    rates = measure_forms(forms, np.zeros((3, 2)), batch_sizes=(1, 5), rounds=2, min_seconds=0.0)
    assert {n: sorted(r) for n, r in rates.items()} == {"a": [1, 5], "b": [1, 5], "c": [1, 5]}
    assert [n for n, _ in log] == ["a", "b", "c"] * 6  # warm-up, then 2 rounds of A B C, per batch size
    assert [size for _, size in log] == [1] * 9 + [5] * 9
    with pytest.raises(ConfigError):
        measure_forms(forms, np.zeros((0, 2)))


def test_forms_are_timed_with_one_blas_thread_as_the_scorer_runs_them():
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    np.ones((64, 64)) @ np.ones((64, 64))  # load BLAS
    seen: list[set[int]] = []

    class Probe:
        name, needs_onnxruntime = "probe", False

        def score(self, x):
            seen.append(blas_threads())
            return np.zeros(len(x), np.float32)

    before = blas_threads()
    measure_forms({"probe": Probe()}, np.zeros((3, 2)), batch_sizes=(1,), rounds=1, min_seconds=0.0)
    assert seen and all(s == {1} for s in seen)
    assert blas_threads() == before  # the limit is the measurement's only


def test_choose_form_takes_the_highest_geometric_mean():
    rates = {
        "numpy-dense": {1: 100.0, 256: 1e6},  # the arithmetic mean would pick this one (big batch only)
        "ort-dense": {1: 1000.0, 256: 5e5},
    }
    name, why = choose_form(rates)
    assert name == "ort-dense"
    assert why == "ort-dense: 2.24x numpy-dense (geometric mean of rows/s at batch 1, 256)"


def test_why_names_the_ratio_to_every_other_form_in_preference_order():
    rates = {
        "numpy-sparse": {1: 1.0, 256: 100.0},
        "numpy-dense": {1: 2.0, 256: 200.0},
        "ort-dense": {1: 4.0, 256: 400.0},
    }
    assert choose_form(rates) == (
        "ort-dense",
        "ort-dense: 2.00x numpy-dense, 4.00x numpy-sparse (geometric mean of rows/s at batch 1, 256)",
    )
    assert choose_form({"numpy-dense": {1: 3.0}})[1] == (
        "numpy-dense: the only form measured (geometric mean of rows/s at batch 1)"
    )


@pytest.mark.parametrize(
    ("names", "winner"),
    [
        (["numpy-sparse", "numpy-dense", "ort-dense"], "ort-dense"),
        (["numpy-sparse", "numpy-dense"], "numpy-dense"),
        (["custom", "numpy-sparse"], "numpy-sparse"),
        (["zeta", "alpha"], "alpha"),
    ],
)
def test_ties_go_by_the_fixed_preference_order(names, winner):
    assert choose_form({n: {1: 10.0, 256: 1000.0} for n in names})[0] == winner


@pytest.mark.parametrize(
    "rates",
    [{}, {"a": {1: 1.0}, "b": {256: 1.0}}, {"a": {1: 0.0}}, {"a": {1: float("nan")}}],
)
def test_choose_form_rejects_unusable_measurements(rates):
    with pytest.raises(ConfigError):
        choose_form(rates)


def test_machine_fingerprint_is_stable_and_names_the_versions():
    fingerprint = machine_fingerprint()
    assert fingerprint == machine_fingerprint()
    assert f"numpy={np.__version__}" in fingerprint
    assert f"onnxruntime={metadata.version('onnxruntime')}" in fingerprint
    assert "\n" not in fingerprint


def test_a_numpy_form_wins_when_serving_cannot_tell_the_time_apart() -> None:
    """ORT 2x faster but only microseconds per call: memory decides; a real gap keeps ORT."""
    heavy = {"ort-dense": True, "numpy-dense": False}
    close = {"ort-dense": {1: 80_000, 256: 10_000_000}, "numpy-dense": {1: 40_000, 256: 6_000_000}}
    name, why = choose_form(close, heavy)
    assert name == "numpy-dense" and "needs no onnxruntime" in why and "ort-dense: 1." in why
    wide = {"ort-dense": {1: 5_000, 256: 400_000}, "numpy-dense": {1: 4_000, 256: 100_000}}  # +1.9 ms/call
    assert choose_form(wide, heavy)[0] == "ort-dense"
    assert choose_form(close)[0] == "ort-dense"  # without the runtime facts: speed alone
