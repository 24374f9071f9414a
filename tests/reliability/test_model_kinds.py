"""The three kinds of file of a model directory (serve, doc, train) and what loading does with each:

* a damaged serve file of a compressed model (the compact artifact, the spec) is refused by name, exit 2;
* a missing or changed documentation file never stops serving, but is refused when it is opened;
* format-1 directories (one files table of every file; compressed ones ship model.onnx) still load and
  score as before.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fraudlite.cli import main
from fraudlite.compression.served import ONNX_FILE_FORM, open_model
from fraudlite.errors import IntegrityError, ModelDirError
from fraudlite.modeldir import CONTENTS, MANIFEST, ModelDir, verify_files
from fraudlite.streaming.reload import load_model
from fraudlite.testing.streaming import write_model


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    md = write_model(tmp_path_factory.mktemp("kinds") / "c", seed=3, compressed=True)
    return md


def _with_doc(md: ModelDir, out) -> ModelDir:
    """A copy of ``md`` with a documentation file listed in its contents index."""
    from fraudlite.modeldir import write_model_dir

    def write(tmp):
        for name in md.manifest["files"]:
            shutil.copy(md.path / name, tmp / name)
        (tmp / "report.md").write_text("# report\n")
        return {
            **{n: e["role"] for n, e in md.manifest["files"].items()},
            "report.md": "compression_report_md",
        }

    fields = {k: v for k, v in md.manifest.items() if k not in ("files", "contents")}
    return write_model_dir(out, write, fields)


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    path.chmod(0o644)
    if how == "tampered":
        data = bytearray(data)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["tampered", "truncated"])
@pytest.mark.parametrize("name", ["model.flc", "feature_spec.json"])
def test_damaged_serve_file_of_a_compressed_model_is_refused_by_name(compressed, tmp_path, capsys, name, how):
    broken = tmp_path / "broken"
    shutil.copytree(compressed.path, broken)
    _damage(broken / name, how)
    with pytest.raises(IntegrityError) as err:
        load_model(broken)
    assert str(broken / name) in str(err.value)
    assert main(["serve", "--model", str(broken), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    printed = capsys.readouterr().err
    assert str(broken / name) in printed and "Traceback" not in printed


def test_a_compact_artifact_that_does_not_decode_is_refused_by_name(compressed, tmp_path):
    """A consistent manifest over a corrupt artifact (as a buggy writer would make) still fails by name."""
    broken = tmp_path / "broken"
    shutil.copytree(compressed.path, broken)
    flc = broken / "model.flc"
    flc.chmod(0o644)
    flc.write_bytes(b"FLc\x02" + b"\xff" * 8)
    manifest = json.loads((broken / MANIFEST).read_text())
    from fraudlite.modeldir import sha256_file

    manifest["files"]["model.flc"].update(sha256=sha256_file(flc), bytes=flc.stat().st_size)
    (broken / MANIFEST).chmod(0o644)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=str(flc)):
        open_model(broken)


def test_documentation_never_stops_serving(compressed, tmp_path):
    md = _with_doc(compressed, tmp_path / "with-doc")
    assert md.bytes_by_kind()["doc"] > 0
    (md.path / "report.md").chmod(0o644)
    (md.path / "report.md").write_text("changed\n")
    X = np.zeros((3, md.spec.n_features), np.float32)
    assert load_model(md.path).scorer.score(X).shape == (3,)  # serving does not look at it
    with pytest.raises(IntegrityError, match="report.md"):  # opening it does
        ModelDir.load(md.path).file("compression_report_md")
    with pytest.raises(IntegrityError, match="report.md"):
        verify_files(md.path, md.manifest)
    (md.path / "report.md").unlink()
    (md.path / CONTENTS).chmod(0o644)
    (md.path / CONTENTS).unlink()  # even the index of the other files
    assert load_model(md.path).scorer.score(X).shape == (3,)


def _as_format_1(md: ModelDir, out):
    """``md`` rewritten as fraudlite wrote it before the three kinds: one files table, no index."""
    shutil.copytree(md.path, out)
    manifest = dict(md.manifest, format="fraudlite-model/1")
    manifest["files"] = {n: {k: e[k] for k in ("sha256", "bytes", "role")} for n, e in md.entries().items()}
    manifest.pop("contents", None)
    (out / CONTENTS).unlink(missing_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def test_format_1_directories_still_load(compressed, tmp_path):
    fp32 = write_model(tmp_path / "fp32", seed=3)
    old = _as_format_1(_with_doc(fp32, tmp_path / "fp32-doc"), tmp_path / "old")
    md = ModelDir.load(old)
    assert md.bytes_by_kind()["doc"] > 0 and md.file("compression_report_md").read_text() == "# report\n"
    X = np.random.default_rng(0).normal(size=(16, md.spec.n_features)).astype(np.float32) * 50
    assert np.array_equal(open_model(old).score(X), open_model(fp32.path).score(X))
    assert open_model(old).runtime["form"] == ONNX_FILE_FORM
    # a format-1 compressed directory shipped model.onnx beside model.flc: it serves that file, as before
    old_c = _as_format_1(compressed, tmp_path / "old-c")
    shutil.copy(fp32.path / "model.onnx", old_c / "model.onnx")
    manifest = json.loads((old_c / MANIFEST).read_text())
    manifest["files"]["model.onnx"] = fp32.manifest["files"]["model.onnx"]
    (old_c / MANIFEST).write_text(json.dumps(manifest))
    assert open_model(old_c).runtime["form"] == ONNX_FILE_FORM


def test_an_unknown_format_is_refused_in_one_line(tmp_path):
    md = write_model(tmp_path / "m", seed=3)
    manifest = json.loads((md.path / MANIFEST).read_text())
    manifest["format"] = "fraudlite-model/9"
    (md.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="fraudlite-model/9"):
        ModelDir.load(md.path)


def _with_runtime(md: ModelDir, out, **changes):
    """A copy of ``md`` whose manifest's runtime record has ``changes`` (the manifest is not hashed)."""
    shutil.copytree(md.path, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["runtime"].update(changes)
    (out / MANIFEST).chmod(0o644)
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out, manifest


def test_on_another_machine_the_forms_are_timed_again_at_load(compressed, tmp_path):
    moved, manifest = _with_runtime(compressed, tmp_path / "moved", machine="another machine")
    here, there = open_model(compressed.path), open_model(moved)
    assert "rechecked" not in here.runtime and there.runtime["rechecked"] is True
    assert there.runtime["recorded_form"] == manifest["runtime"]["form"]
    assert set(there.runtime["rows_per_s"]) >= {"ort-dense", "numpy-dense", "numpy-sparse"}
    X = np.random.default_rng(2).normal(size=(32, here.spec.n_features)).astype(np.float32) * 50
    assert np.max(np.abs(here.score(X) - there.score(X))) <= 1e-6


def test_a_numpy_form_serves_without_onnxruntime_in_the_process(compressed, tmp_path):
    import subprocess
    import sys

    numpy_form, _ = _with_runtime(compressed, tmp_path / "numpy-form", form="numpy-dense")
    code = (
        "import sys\n"
        "from fraudlite.streaming.reload import load_model\n"
        f"model = load_model({str(numpy_form)!r})\n"
        "assert model.form == 'numpy-dense', model.form\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
