"""Model registry: immutable versions, atomic promote/rollback under concurrent readers, verify, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fraudlite.cli import main
from fraudlite.errors import IntegrityError
from fraudlite.features.spec import FeatureSpec
from fraudlite.modeldir import ModelDir
from fraudlite.models.training import write_trained_model
from fraudlite.pipeline.registry import (
    ChampionChangedError,
    Registry,
    RegistryBusyError,
    RegistryError,
    UnknownVersionError,
    file_lock,
    read_champion,
)


def make_model(out: Path, version: str, weight: float = 0.1, ap: float | None = None) -> ModelDir:
    """A tiny but real scoring model directory (one linear layer) named ``version``."""
    from fraudlite.models.onnx_export import mlp_to_onnx

    spec = FeatureSpec()
    f = spec.n_features
    rng = np.random.default_rng(abs(hash(version)) % 2**32)
    layers = [(rng.normal(0, weight, (1, f)).astype(np.float32), np.zeros(1, np.float32))]
    onnx_bytes = mlp_to_onnx(layers, np.zeros(f), np.ones(f)).SerializeToString()
    metrics = {"validation": {"average_precision": 0.5}}
    if ap is not None:
        metrics["recent_window"] = {"average_precision": ap, "roc_auc": 0.9, "n": 100, "n_fraud": 5}
    return write_trained_model(
        out / version,
        onnx_bytes,
        spec,
        {"mean": [0.0] * f, "std": [1.0] * f},
        None,
        {
            "version": version,
            "model_type": "mlp",
            "threshold": 0.5,
            "alert_threshold": 0.9,
            "metrics": metrics,
            "compression": {"stages": []},
            "data_window": {
                "train_start": "2026-01-01",
                "train_end": "2026-01-21",
                "valid_end": "2026-01-28",
            },
            "parent_version": None,
        },
    )


@pytest.fixture
def registry(tmp_path) -> Registry:
    """A registry holding versions v1, v2, v3 (no champion yet)."""
    reg = Registry(tmp_path / "reg", create=True)
    for i, v in enumerate(("v1", "v2", "v3"), 1):
        reg.add(make_model(tmp_path / "src", v, ap=0.5 + i / 10))
    return reg


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes except the lock files (to prove a failed command changed nothing)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def cli(*argv: str) -> int:
    return main(list(argv))


def test_add_list_and_immutability(registry, tmp_path, capsys):
    assert registry.version_names() == ["v1", "v2", "v3"]
    assert registry.champion() is None
    with pytest.raises(RegistryError, match="already exists"):
        registry.add(make_model(tmp_path / "again", "v2"))
    # version files are read-only once registered
    for p in registry.path("v1").iterdir():
        assert p.stat().st_mode & 0o222 == 0
    registry.promote("v2")
    assert cli("registry", "--root", str(registry.root), "list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["champion"] == "v2"
    rows = {r["version"]: r for r in listing["versions"]}
    assert set(rows) == {"v1", "v2", "v3"}
    assert rows["v2"]["champion"] and rows["v2"]["status"] == "champion"
    assert not rows["v1"]["champion"] and rows["v1"]["status"] == "registered"
    assert rows["v3"]["metrics"]["recent_window"]["average_precision"] == pytest.approx(0.8)
    assert cli("registry", "--root", str(registry.root), "list") == 0
    table = capsys.readouterr().out
    assert "v2 *" in table and "champion: v2" in table
    assert cli("registry", "--root", str(registry.root), "show", "v3") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["manifest"]["version"] == "v3" and shown["status"] == "registered"


def test_promote_rollback_chain_and_history(registry, capsys):
    root = str(registry.root)
    for v in ("v1", "v2", "v3"):
        assert cli("registry", "--root", root, "promote", v) == 0
    assert read_champion(registry.root) == "v3"
    assert cli("registry", "--root", root, "rollback") == 0
    assert read_champion(registry.root) == "v2"
    assert cli("registry", "--root", root, "rollback") == 0
    assert read_champion(registry.root) == "v1"
    before = snapshot(registry.root)
    assert cli("registry", "--root", root, "rollback") == 2
    assert "no earlier champion" in capsys.readouterr().err
    assert snapshot(registry.root) == before
    history = registry.history()
    assert [e["decision"] for e in history] == ["promoted"] * 3 + ["rollback"] * 2
    assert history[1]["champion"] == "v1" and history[1]["challenger"] == "v2"
    for e in history:
        assert {"time", "challenger", "champion", "decision", "reason", "new_champion"} <= set(e)
    assert history[2]["metrics"]["challenger"]["average_precision"] == pytest.approx(0.8)
    assert history[2]["metrics"]["champion"]["average_precision"] == pytest.approx(0.7)
    # promoting the champion again is a no-op: exit 0, nothing recorded
    assert cli("registry", "--root", root, "promote", "v1") == 0
    assert "already the champion" in capsys.readouterr().out
    assert len(registry.history()) == 5
    # promoting again after a rollback, then rolling back, returns to the right version
    registry.promote("v3")
    assert registry.rollback()["new_champion"] == "v1"
    assert registry.status("v3") == "retired"


def test_unknown_version_and_not_a_registry_exit_2(registry, tmp_path, capsys):
    root = str(registry.root)
    registry.promote("v1")
    before = snapshot(registry.root)
    assert cli("registry", "--root", root, "promote", "v9") == 2
    err = capsys.readouterr().err
    assert "unknown version 'v9'" in err and "v1" in err and "Traceback" not in err
    assert cli("registry", "--root", root, "show", "../v1") == 2
    assert "invalid version name" in capsys.readouterr().err
    assert cli("registry", "--root", root, "verify", "nope") == 2
    assert cli("registry", "--root", str(tmp_path / "missing"), "list") == 2
    assert "not a model registry" in capsys.readouterr().err
    assert snapshot(registry.root) == before
    with pytest.raises(UnknownVersionError):
        registry.load("v9")


def test_verify_names_tampered_files_and_promote_refuses(registry, capsys):
    root = str(registry.root)
    registry.promote("v1")
    assert cli("registry", "--root", root, "verify") == 0
    assert capsys.readouterr().out.count("ok ") == 3
    onnx = registry.path("v2") / "model.onnx"
    onnx.chmod(0o644)
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    onnx.write_bytes(bytes(data))
    manifest = registry.path("v3") / "manifest.json"
    manifest.chmod(0o644)
    m = json.loads(manifest.read_text())
    m["threshold"] = 0.01  # a tampered manifest: files still match, the registered hash does not
    manifest.write_text(json.dumps(m))
    (registry.path("v1") / "extra.bin").write_bytes(b"surprise")
    assert cli("registry", "--root", root, "verify") == 1
    err = capsys.readouterr().err
    assert f"{onnx}: sha256 does not match" in err
    assert f"{manifest}: sha256 does not match the one registered" in err
    assert "extra.bin: not listed in manifest.json" in err
    assert "3 of 3 version(s) failed" in err
    assert cli("registry", "--root", root, "verify", "v2") == 1
    assert "model.onnx" in capsys.readouterr().err
    # a tampered version is never promoted: exit 2, registry unchanged
    before = snapshot(registry.root)
    assert cli("registry", "--root", root, "promote", "v2") == 2
    assert "refusing version 'v2'" in capsys.readouterr().err
    assert snapshot(registry.root) == before
    assert read_champion(registry.root) == "v1"


def test_scorer_refuses_tampered_champion(registry):
    from fraudlite.streaming.reload import ModelReloader, load_model

    registry.promote("v1")
    reloader = ModelReloader(registry.root, "v1", load=lambda p: load_model(p))
    registry.promote("v2")
    assert reloader.check() is not None and reloader.take().version == "v2"
    onnx = registry.path("v3") / "model.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(onnx.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError):
        registry.set_champion("v3")  # the registry refuses it ...
    registry.set_champion("v3", verify=False)  # ... and if the pointer is forced, the scorer refuses it
    assert reloader.check() is None
    assert reloader.current_version == "v2"
    with pytest.raises(IntegrityError, match="model.onnx"):
        load_model(registry.path("v3"))


_READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from fraudlite.modeldir import ModelDir
    from fraudlite.pipeline.registry import read_champion
    root, seconds = Path(sys.argv[1]), float(sys.argv[2])
    print("ready", flush=True)
    seen, errors, n = {}, [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = read_champion(root)
        try:
            md = ModelDir.load(root / "versions" / str(v))  # re-hashes every file
            if md.version != v:
                errors.append(f"pointer {v} but manifest {md.version}")
        except Exception as e:
            errors.append(f"{v}: {e!r}")
        seen[str(v)] = seen.get(str(v), 0) + 1
        n += 1
    print(json.dumps({"n": n, "seen": seen, "errors": errors[:5]}), flush=True)
    """
)


def test_concurrent_readers_never_see_a_half_promotion(registry):
    registry.promote("v1")
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(registry.root), "4"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for r in readers:
        assert r.stdout.readline().strip() == "ready"
    switches = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        registry.promote("v2" if switches % 3 == 0 else "v3")
        registry.rollback()
        switches += 2
    results = [json.loads(r.communicate(timeout=30)[0].strip().splitlines()[-1]) for r in readers]
    for res in results:
        assert res["errors"] == [], res["errors"]
        assert set(res["seen"]) <= {"v1", "v2", "v3"}
    assert sum(len(res["seen"]) for res in results) > 3, "readers should have seen the champion change"
    assert switches > 20
    assert all(isinstance(e, dict) for e in registry.history())  # no torn history line


_WRITER = textwrap.dedent(
    """
    import sys
    from fraudlite.pipeline.registry import Registry
    reg = Registry(sys.argv[1])
    changed = 0
    for i in range(int(sys.argv[2])):
        entry = reg.promote(sys.argv[3 + i % (len(sys.argv) - 3)], reason=f"writer {sys.argv[3]} #{i}")
        changed += entry["decision"] == "promoted"
    print(changed)
    """
)


def test_concurrent_writers_are_serialized(registry):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(registry.root), "15", *names],
            stdout=subprocess.PIPE,
            text=True,
        )
        for names in (("v1", "v2"), ("v3", "v1"))
    ]
    changed = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    lines = (registry.root / "history.jsonl").read_text().splitlines()
    assert len(lines) == sum(changed) >= 15  # one line per real change (re-promoting the champion is a no-op)
    history = [json.loads(line) for line in lines]
    # every record's "champion" is the one the previous record installed: no lost update
    for prev, cur in zip(history, history[1:], strict=False):
        assert cur["champion"] == prev["new_champion"]
    assert read_champion(registry.root) == history[-1]["new_champion"]


def test_compare_and_set_and_busy_lock(registry):
    registry.promote("v1")
    results: list[str] = []
    barrier = threading.Barrier(2)

    def contender(v: str) -> None:
        barrier.wait()
        try:
            registry.set_champion(v, expected="v1")
            results.append(v)
        except ChampionChangedError:
            results.append("lost")

    threads = [threading.Thread(target=contender, args=(v,)) for v in ("v2", "v3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[0] == "lost" and len([r for r in results if r != "lost"]) == 1
    with file_lock(registry.root / ".lock"):
        with pytest.raises(RegistryBusyError, match="locked by another process"):
            with file_lock(registry.root / ".lock", blocking=False):
                pass


def test_add_refuses_a_tampered_source(tmp_path):
    reg = Registry(tmp_path / "reg", create=True)
    md = make_model(tmp_path / "src", "vx")
    (md.path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(IntegrityError, match="model.onnx"):
        reg.add(md)
    assert reg.version_names() == []
    assert not any(p.name.startswith(".vx") for p in reg.versions_dir.iterdir())


def test_champion_since_uses_history(registry):
    registry.promote("v1", time="2026-03-01T00:00:00+00:00")
    assert registry.champion_since() == pytest.approx(1772323200.0)
    os.utime(registry.root / "champion", (1, 1))
    registry.promote("v2")
    assert time.time() - registry.champion_since() < 60
