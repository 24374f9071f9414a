"""Training-side faults (issue 7): corrupted inputs, a crash mid-train / mid-compress (exception and
``kill -9``), a disk that fills up -- output and registry directories are never half-written.

"Never half-written" is checked the same way everywhere (``_assert_untouched``): the output path does not
exist (or, when it existed, still holds the old, verifying model), and no temporary sibling is left
behind (every writer writes a hidden temporary and renames it into place).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraudlite.cli import main
from fraudlite.modeldir import ModelDir

FAST_RECIPE = """
[[stage]]
name = "cluster"
k = 16
finetune_epochs = 1

[export]
precision = "fp32"

[data]
max_train_rows = 5000
"""
WINDOW = ["--train-start", "2026-01-31", "--train-end", "2026-02-28"]


@pytest.fixture(scope="module")
def small(train_small):
    """A small generated Parquet file and an MLP trained on it (2 epochs)."""
    return train_small("training-faults", max_epochs=2)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _assert_untouched(parent: Path, before: list[str], out: Path, old_version: str | None = None) -> None:
    after = _listing(parent)
    assert after == before, f"left behind: {sorted(set(after) - set(before))}"
    if old_version is None:
        assert not out.exists()
    else:
        assert ModelDir.load(out).version == old_version, "the previous output is intact"


# -- corrupted inputs ---------------------------------------------------------------------------------------


def _corrupt_inputs(small_data: Path, root: Path) -> dict[str, Path]:
    import pandas as pd

    csv = root / "good.csv"
    pd.read_parquet(small_data).head(3000).to_csv(csv, index=False)
    text = csv.read_bytes()
    out = {}
    out["garbage.csv"] = root / "garbage.csv"
    out["garbage.csv"].write_bytes(os.urandom(20_000))
    out["truncated.csv"] = root / "truncated.csv"
    out["truncated.csv"].write_bytes(text[: len(text) // 2 - 7])
    out["header_only.csv"] = root / "header_only.csv"
    out["header_only.csv"].write_bytes(text.split(b"\n", 1)[0] + b"\n")
    out["binary_in_csv.csv"] = root / "binary_in_csv.csv"
    lines = text.split(b"\n")
    lines[100] = b"\x00\xff\xfe" + lines[100][3:]
    out["binary_in_csv.csv"].write_bytes(b"\n".join(lines))
    out["bad_values.csv"] = root / "bad_values.csv"
    lines = text.split(b"\n")
    lines[50] = lines[50].replace(b",", b",NOT-A-NUMBER,", 1)
    out["bad_values.csv"].write_bytes(b"\n".join(lines))
    raw = small_data.read_bytes()
    out["truncated.parquet"] = root / "truncated.parquet"
    out["truncated.parquet"].write_bytes(raw[: len(raw) // 2])
    out["garbage.parquet"] = root / "garbage.parquet"
    out["garbage.parquet"].write_bytes(b"PAR1" + os.urandom(5000) + b"PAR1")
    out["flipped.parquet"] = root / "flipped.parquet"
    flipped = bytearray(raw)
    for i in range(len(flipped) // 3, len(flipped) // 3 + 64):
        flipped[i] ^= 0x5A
    out["flipped.parquet"].write_bytes(bytes(flipped))
    out["empty.parquet"] = root / "empty.parquet"
    out["empty.parquet"].write_bytes(b"")
    return out


def test_corrupted_inputs_exit_2_naming_the_file_and_write_nothing(small, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    inputs = _corrupt_inputs(small[0], tmp_path / "in")
    outdir = tmp_path / "out"
    outdir.mkdir()
    for name, path in inputs.items():
        out = outdir / f"model-{name}"
        code = main(["train", "--data", str(path), *WINDOW, "--max-epochs", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert str(path) in err or ("column" in err and "row" in err), (name, err)  # names the file or cell
        assert _listing(outdir) == [], (name, _listing(outdir))


# -- crash mid-train / while writing ----------------------------------------------------------------------


class _DiskFull:
    """Writes under ``root`` fail with ENOSPC once ``budget`` bytes were written (Python file objects),
    and ``os.fsync`` fails with ENOSPC for any file (native writers such as safetensors or onnx are
    caught there)."""

    def __init__(self, monkeypatch, root: Path, budget: int, fsync: bool) -> None:
        self.root, self.left = str(root), budget
        real_open = io.open

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            path = os.fspath(file) if isinstance(file, str | bytes | os.PathLike) else None
            if path is not None and any(c in mode for c in "wax+") and str(path).startswith(self.root):
                return _Limited(f, self)
            return f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr("builtins.open", fake_open)
        if fsync:

            def full(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "fsync", full)


class _Limited:
    def __init__(self, f, disk: _DiskFull) -> None:
        self._f, self._disk = f, disk

    def write(self, data):
        n = len(data)
        if n > self._disk.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(self._f, "name", None))
        self._disk.left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


@pytest.mark.parametrize(
    "fault", ["exception-mid-train", "disk-full-write", "disk-full-fsync", "crash-at-rename"]
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_train_faults_leave_no_half_written_model(small, tmp_path, monkeypatch, capsys, fault, existing):
    import shutil

    import fraudlite.models.loop as train_module

    parent = tmp_path / "models"
    parent.mkdir()
    out = parent / "m"
    old = None
    if existing:
        shutil.copytree(small[1], out)
        old = ModelDir.load(out).version
    before = _listing(parent)
    if fault == "exception-mid-train":
        real = train_module.run_training

        def crash_after_first_epoch(*args, progress=None, **kwargs):
            def progress_then_crash(line):
                raise RuntimeError("killed mid-train (epoch 1 done)")

            return real(*args, progress=progress_then_crash, **kwargs)

        monkeypatch.setattr(train_module, "run_training", crash_after_first_epoch)
    elif fault == "disk-full-write":
        _DiskFull(monkeypatch, parent, budget=4096, fsync=False)
    elif fault == "disk-full-fsync":
        _DiskFull(monkeypatch, parent, budget=1 << 40, fsync=True)
    else:
        real_rename = os.rename
        fired = []

        def rename(src, dst):  # interrupted once, at the rename that puts the new model in place
            if str(dst) == str(out) and not fired:
                fired.append(src)
                raise KeyboardInterrupt("killed at the final rename")
            return real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    argv = ["train", "--data", str(small[0]), *WINDOW, "--max-epochs", "2", "--out", str(out)]
    if fault == "exception-mid-train":
        with pytest.raises(RuntimeError, match="mid-train"):
            main(argv)
    elif fault == "crash-at-rename":
        assert main(argv) == 130
    else:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and "nothing was written" in err and "Traceback" not in err
    monkeypatch.undo()
    _assert_untouched(parent, before, out, old)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fraudlite", *args], stdout=f, stderr=subprocess.STDOUT
        )


def _kill_when(
    proc: subprocess.Popen, log: Path, needle: str, delay_s: float, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"finished before the kill:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(delay_s)
    if proc.poll() is None:  # else it finished first: the output must then be complete
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _no_partial(parent: Path, out: Path) -> None:
    """After a kill -9 the output is either absent or complete (it verifies); a hidden temporary may
    remain (the process had no chance to remove it), never anything half-written under the name."""
    if out.exists():
        ModelDir.load(out)
    assert all(p.name == out.name or p.name.startswith(f".{out.name}.") for p in parent.iterdir()), _listing(
        parent
    )


@pytest.mark.parametrize("delay_s", [0.0, 0.7, 1.5])
def test_kill_9_mid_train(small, tmp_path, delay_s):
    parent = tmp_path / "models"
    parent.mkdir()
    out = parent / "m"
    log = tmp_path / "train.log"
    proc = _spawn(
        ["-v", "train", "--data", str(small[0]), *WINDOW, "--max-epochs", "40", "--out", str(out)], log
    )
    _kill_when(proc, log, "epoch", delay_s=delay_s)
    _no_partial(parent, out)


# -- compression --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["exception-mid-compress", "disk-full-fsync"])
def test_compress_faults_leave_no_half_written_model(small, tmp_path, monkeypatch, capsys, fault):
    import fraudlite.compression.cluster as cluster

    recipe = tmp_path / "r.toml"
    recipe.write_text(FAST_RECIPE)
    parent = tmp_path / "out"
    parent.mkdir()
    out = parent / "compressed"
    source_version = ModelDir.load(small[1]).version
    if fault == "exception-mid-compress":

        def crash(*a, **k):
            raise RuntimeError("killed mid-compress")

        monkeypatch.setattr(cluster, "cluster_stage", crash)
    else:
        _DiskFull(monkeypatch, parent, budget=1 << 40, fsync=True)
    argv = ["compress", "--model", str(small[1]), "--data", str(small[0]), "--out", str(out),
            "--recipe", str(recipe), "--max-ap-drop", "0.5"]  # fmt: skip
    if fault == "exception-mid-compress":
        with pytest.raises(RuntimeError, match="mid-compress"):
            main(argv)
    else:
        assert main(argv) == 1
        assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    _assert_untouched(parent, [], out)
    assert ModelDir.load(small[1]).version == source_version, "the source model is untouched and verifies"


def test_kill_9_mid_compress(small, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(FAST_RECIPE.replace("finetune_epochs = 1", "finetune_epochs = 30"))
    parent = tmp_path / "out"
    parent.mkdir()
    out = parent / "compressed"
    log = tmp_path / "compress.log"
    proc = _spawn(["compress", "--model", str(small[1]), "--data", str(small[0]), "--out", str(out),
                   "--recipe", str(recipe), "--max-ap-drop", "0.5"], log)  # fmt: skip
    _kill_when(proc, log, "cluster", delay_s=1.0)
    _no_partial(parent, out)
    ModelDir.load(small[1])


# -- registry -----------------------------------------------------------------------------------------------


def test_registry_disk_full_on_add_and_promote(small, tmp_path, monkeypatch):
    from fraudlite.errors import IntegrityError
    from fraudlite.pipeline.registry import Registry

    reg = Registry(tmp_path / "reg", create=True)
    v1 = reg.add(small[1], {"version": "v1"})
    reg.promote("v1")
    state = {p.name: p.read_bytes() for p in reg.root.iterdir() if p.is_file()}
    versions = reg.version_names()

    _DiskFull(monkeypatch, reg.root, budget=8192, fsync=False)
    with pytest.raises(OSError) as err:
        reg.add(small[1], {"version": "v2"})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert reg.version_names() == versions
    assert _listing(reg.versions_dir) == ["v1"]
    assert {p.name: p.read_bytes() for p in reg.root.iterdir() if p.is_file()} == state

    v2 = reg.add(small[1], {"version": "v2"})
    state = {p.name: p.read_bytes() for p in reg.root.iterdir() if p.is_file()}
    _DiskFull(monkeypatch, reg.root, budget=1 << 40, fsync=True)
    with pytest.raises(OSError):
        reg.promote("v2")
    monkeypatch.undo()
    assert reg.champion() == "v1", "the champion pointer is the old one, never a torn one"
    assert {p.name: p.read_bytes() for p in reg.root.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in state.items() if k != ".lock"
    }
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".champion.tmp")]
    assert reg.verify() == {"v1": [], "v2": []}
    assert v1.version == "v1" and v2.version == "v2"
    with pytest.raises(IntegrityError):
        (reg.versions_dir / "v2" / "model.onnx").chmod(0o644)
        (reg.versions_dir / "v2" / "model.onnx").write_bytes(b"x")
        reg.promote("v2")
    assert reg.champion() == "v1"


def test_generate_disk_full_leaves_no_file(tmp_path, monkeypatch, capsys):
    _DiskFull(monkeypatch, tmp_path, budget=10_000, fsync=False)
    code = main(["generate", "--out", str(tmp_path / "tx.csv"), "--customers", "50", "--terminals", "50",
                 "--days", "20"])  # fmt: skip
    monkeypatch.undo()
    assert code == 1 and "No space left on device" in capsys.readouterr().err
    assert _listing(tmp_path) == []
