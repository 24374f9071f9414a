"""FraudMLP, MLPConfig validation, numpy layer views and safetensors persistence."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fraudlite.errors import ConfigError, ModelDirError
from fraudlite.models import TEACHER_CONFIG, FraudMLP, MLPConfig, layer_shapes, load_mlp, mlp_layers, save_mlp


def _model(n_features: int = 6, hidden: tuple[int, ...] = (8, 4), seed: int = 0) -> FraudMLP:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mean = rng.normal(size=n_features) * 10
    std = rng.uniform(0.5, 50, size=n_features)
    return FraudMLP(n_features, MLPConfig(hidden=hidden), mean, std).eval()


def _inputs(n: int = 50, n_features: int = 6) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(0, 20, size=(n, n_features)).astype(np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden": (64, 0)},
        {"hidden": "wide"},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"weight_decay": -1.0},
        {"batch_size": 0},
        {"max_epochs": 0},
        {"patience": 0},
        {"loss": "hinge"},
        {"focal_gamma": -1.0},
        {"pos_weight": 0.0},
        {"pos_weight": float("inf")},
        {"schedule": "step"},
    ],
)
def test_config_rejects_invalid_values(kwargs):
    with pytest.raises(ConfigError):
        MLPConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_key():
    config = MLPConfig(hidden=[16, 8], loss="focal", pos_weight=3.0)
    assert config.hidden == (16, 8)
    assert MLPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="bogus"):
        MLPConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_teacher_is_wider_and_deeper():
    default = MLPConfig()
    assert len(TEACHER_CONFIG.hidden) > len(default.hidden)
    assert sum(TEACHER_CONFIG.hidden) > sum(default.hidden)


def test_forward_standardizes_raw_inputs():
    model = _model()
    x = _inputs()
    plain = FraudMLP.from_layers(mlp_layers(model), np.zeros(6), np.ones(6)).eval()
    standardized = (x - model.mean) / model.std
    with torch.no_grad():
        assert model(x).shape == (50,)
        torch.testing.assert_close(model(x), plain(standardized), rtol=0, atol=1e-6)


def test_zero_std_becomes_one_and_bad_stats_are_rejected():
    model = FraudMLP(3, MLPConfig(hidden=(4,)), mean=[0, 0, 0], std=[2.0, 0.0, float("nan")])
    assert model.std.tolist() == [2.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="3 entries"):
        FraudMLP(3, mean=[0.0, 1.0])


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = FraudMLP(6, MLPConfig(hidden=(32,), dropout=0.5))
    x = _inputs()
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_layers_round_trip_with_pruned_shapes():
    layers = [
        (np.ones((5, 6), np.float32), np.zeros(5, np.float32)),
        (np.full((3, 5), 0.5, np.float32), np.ones(3, np.float32)),
        (np.ones((1, 3), np.float32), np.zeros(1, np.float32)),
    ]
    model = FraudMLP.from_layers(layers, np.zeros(6), np.ones(6), MLPConfig(dropout=0.3))
    assert model.config.hidden == (5, 3) and model.config.dropout == 0.3
    assert layer_shapes(mlp_layers(model)) == [(5, 6), (3, 5), (1, 3)]
    for (w, b), (w2, b2) in zip(layers, mlp_layers(model), strict=True):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)


@pytest.mark.parametrize(
    "layers",
    [
        [],
        [(np.ones((4, 6)), np.zeros(4)), (np.ones((1, 5)), np.zeros(1))],  # widths do not chain
        [(np.ones((2, 6)), np.zeros(2))],  # output is not one unit
        [(np.ones((1, 6)), np.zeros(3))],  # bias length
    ],
)
def test_from_layers_rejects_bad_shapes(layers):
    with pytest.raises(ConfigError):
        FraudMLP.from_layers(layers, np.zeros(6), np.ones(6))


def test_save_load_round_trip(tmp_path):
    model = _model(hidden=(8, 4, 3))
    path = tmp_path / "weights.safetensors"
    save_mlp(model, path)
    loaded = load_mlp(path)
    assert loaded.config == model.config and loaded.n_features == 6
    assert not loaded.training
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # plain safetensors: 8-byte little-endian header length, then a JSON header carrying our metadata
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    assert header["__metadata__"]["format"] == "fraudlite.mlp"
    assert MLPConfig.from_dict(json.loads(header["__metadata__"]["config"])) == model.config


def test_load_rejects_foreign_and_missing_files(tmp_path):
    with pytest.raises(ModelDirError, match="no such"):
        load_mlp(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelDirError, match="not a fraudlite MLP"):
        load_mlp(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(ModelDirError):
        load_mlp(garbage)


def test_package_exports_lazily_and_metrics_stay_torch_free():
    import fraudlite.models as models

    assert all(getattr(models, name) is not None for name in models.__all__)
    code = (
        "import sys, fraudlite.models.metrics; "
        "print(sorted(m for m in ('torch', 'sklearn', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
