"""Runnable ONNX export: exact against the compressed weights and the torch model, folded to plain fp32
at load, smaller storage for clustered layers, int8 candidates, runs without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fraudlite.compression.compact import round_floats
from fraudlite.compression.export import (
    compressed_to_onnx,
    fp32_runnable,
    max_score_diff,
    reference_scores,
)
from fraudlite.compression.quantize import (
    quantize_dynamic_onnx,
    quantize_static_onnx,
    torch_dynamic_quantize,
    torch_module_bytes,
)
from fraudlite.compression.recipe import ExportSettings
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError
from fraudlite.runtime import OnnxScorer, session_options

SCORE_TOL = 1e-5


def _clustered(state: CompressedMLP, k: int = 16) -> CompressedMLP:
    from fraudlite.compression.cluster import apply_clustering, compute_codebooks, round_half

    return round_half(apply_clustering(state, compute_codebooks(state, _cluster_config(k))))


def _cluster_config(k: int):
    from fraudlite.compression.cluster import ClusterConfig

    return ClusterConfig(k=k, finetune_epochs=0)


@pytest.fixture(scope="module")
def X(stage_data) -> np.ndarray:
    return stage_data.X_valid[:3000]


@pytest.mark.parametrize("hidden", [(16, 8), (5,), (), (40, 3, 7)])
@pytest.mark.parametrize("sparsity", [0.0, 0.8])
@pytest.mark.parametrize("storage", ["compact", "fp32"])
@pytest.mark.parametrize("fold", [True, False])
def test_scores_match_the_compressed_weights(make_state, X, hidden, sparsity, storage, fold) -> None:
    state = make_state(hidden=hidden, sparsity=sparsity)
    for c in (state, _clustered(state)):
        model = compressed_to_onnx(c, storage=storage, fold_standardization=fold)
        assert [i.name for i in model.graph.input] == ["features"]
        assert [o.name for o in model.graph.output] == ["score"]
        assert max_score_diff(model.SerializeToString(), c, X) < SCORE_TOL


def test_scores_match_the_torch_model(base_state, stage_data) -> None:
    from fraudlite.models import predict_proba

    c = _clustered(base_state)
    onnx_scores = OnnxScorer(fp32_runnable(c)).score(stage_data.X_valid)
    torch_scores = predict_proba(c.to_model(), stage_data.X_valid)
    assert np.max(np.abs(onnx_scores - torch_scores)) < SCORE_TOL
    assert np.max(np.abs(reference_scores(c, stage_data.X_valid) - torch_scores)) < SCORE_TOL


def test_constant_subgraphs_fold_away_at_load(make_state, tmp_path) -> None:
    """What runs is the plain fp32 MLP: one FusedGemm per layer (+ the free Reshape), no unpacking."""
    c = _clustered(make_state(hidden=(16, 8), sparsity=0.5))
    model = compressed_to_onnx(c, storage="compact")
    assert any(n.op_type == "Gather" for n in model.graph.node)
    opts = session_options(1)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops == ["FusedGemm", "FusedGemm", "FusedGemm", "Reshape"], ops


def test_compact_storage_is_smaller_for_clustered_layers(make_state) -> None:
    c = _clustered(make_state(hidden=(64, 32), sparsity=0.7))
    compact = compressed_to_onnx(c, storage="compact").SerializeToString()
    plain = compressed_to_onnx(c, storage="fp32").SerializeToString()
    assert len(compact) < 0.5 * len(plain)
    assert fp32_runnable(c) == min(compact, plain, key=len)


def test_unknown_storage_is_a_config_error(make_state) -> None:
    with pytest.raises(ConfigError, match="storage"):
        compressed_to_onnx(make_state(), storage="int3")


def test_int8_quantizers_produce_close_scores(base_state, stage_data) -> None:
    plain = compressed_to_onnx(base_state, storage="fp32", fold_standardization=False).SerializeToString()
    reference = OnnxScorer(plain).score(stage_data.X_valid)
    for method in ("minmax", "percentile", "entropy"):
        q = quantize_static_onnx(plain, stage_data.X_train, method=method, rows=512)
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(q).graph.node)
        assert np.max(np.abs(OnnxScorer(q).score(stage_data.X_valid) - reference)) < 0.2
    dyn = quantize_dynamic_onnx(plain)
    assert np.max(np.abs(OnnxScorer(dyn).score(stage_data.X_valid) - reference)) < 0.1
    with pytest.raises(ConfigError, match="calibration"):
        quantize_static_onnx(plain, stage_data.X_train, method="median")


def test_torch_dynamic_quantization_baseline(trained_model, stage_data) -> None:
    import torch

    q = torch_dynamic_quantize(trained_model)
    with torch.inference_mode():
        logits = q(torch.from_numpy(stage_data.X_valid[:100])).numpy()
    assert logits.shape == (100,)
    assert 0 < torch_module_bytes(q) < torch_module_bytes(trained_model)


def test_the_served_form_is_the_one_measured_fastest(make_state, stage_data) -> None:
    """A real choice: every form of a pruned + clustered model timed side by side on real rows."""
    import math

    from fraudlite.compression.served import FORMS, choose_runtime
    from fraudlite.runtime.choice import SLACK_SECONDS, machine_fingerprint

    c = _clustered(make_state(hidden=(16, 8), sparsity=0.5))
    name, record = choose_runtime(c, stage_data.X_valid[:512])
    speed = record["rows_per_s"]
    assert {"ort-dense", "numpy-dense", "numpy-sparse"} <= set(speed) <= set(FORMS) and record["form"] == name
    geo = {f: math.sqrt(r["1"] * r["256"]) for f, r in speed.items()}
    fastest = max(geo, key=geo.get)
    if name != fastest:  # only a numpy form within the slack of an ORT one, for the memory it saves
        assert fastest == "ort-dense" and name.startswith("numpy") and "needs no onnxruntime" in record["why"]
        extra = max(b / speed[name][str(b)] - b / speed[fastest][str(b)] for b in (1, 256))
        assert extra <= SLACK_SECONDS * 1.01
    assert record["machine"] == machine_fingerprint() and name in record["why"]
    served = FORMS[name](c.layers, c.mean, c.std, c.masks).score(stage_data.X_valid)
    assert np.max(np.abs(served - c.predict_proba(stage_data.X_valid))) <= 1e-6


def test_retired_int8_export_settings_are_refused_with_the_reason() -> None:
    from fraudlite.compression.recipe import parse_recipe

    with pytest.raises(ConfigError, match="retired"):
        parse_recipe('[[stage]]\nname = "cluster"\n[export]\nprecision = "int8-dynamic"\n')
    assert parse_recipe('[[stage]]\nname = "cluster"\n[export]\nprecision = "fp32"\n').export.form == "auto"
    with pytest.raises(ConfigError, match="export.form"):
        ExportSettings(form="int8")


def test_runnable_scores_without_torch(make_state, tmp_path) -> None:
    c = round_floats(_clustered(make_state(hidden=(16, 8), sparsity=0.5)))
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32_runnable(c))
    code = (
        "import sys, numpy as np\n"
        "from fraudlite.runtime import OnnxScorer\n"
        f"s = OnnxScorer({str(path)!r}).score(np.zeros((3, 20), np.float32))\n"
        "assert s.shape == (3,) and ((s > 0) & (s < 1)).all()\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
