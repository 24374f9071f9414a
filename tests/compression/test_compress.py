"""`fraudlite compress` end to end on small generated data, the search's stop-and-explain, and bad input
(exit 2, one clear message, nothing left behind)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fraudlite.cli import main
from fraudlite.compression.compact import decode_compact
from fraudlite.compression.compress import COMPACT_FILE, STATE_FILE, check_max_ap_drop, compress_model_dir
from fraudlite.compression.recipe import parse_recipe
from fraudlite.compression.search import SearchError
from fraudlite.compression.state import CompressedMLP
from fraudlite.errors import ConfigError
from fraudlite.modeldir import ModelDir
from fraudlite.runtime.forms import FORMS

FAST_RECIPE = """
[[stage]]
name = "distill"
hidden = [8, 4]
kd_teacher = "source"
epochs = 3
patience = 2

[[stage]]
name = "prune"
sparsity = 0.5
prune_epochs = 1
steps = 2
finetune_epochs = 1

[[stage]]
name = "cluster"
restarts = 2
k = 8
finetune_epochs = 1

[search]
budget = "greedy"
"prune.sparsity" = [0.9, 0.5]

[export]
precision = "fp32"

[data]
max_train_rows = 20000

[teacher]
members = 2
max_epochs = 2
"""


@pytest.fixture(scope="module")
def small(train_small):
    """A small generated file and an MLP trained on it (3 epochs)."""
    return train_small("compress", max_epochs=3)


@pytest.fixture(scope="module")
def frame(small):
    from fraudlite.data.transactions import load_transactions

    return load_transactions(small[0], require_label=True)


@pytest.fixture(scope="module")
def compressed(small, frame, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "compressed"
    lines: list[str] = []
    md = compress_model_dir(
        small[1], frame, out, parse_recipe(FAST_RECIPE), max_ap_drop=0.5, progress=lines.append,
        keep_training_files=True,
    )  # fmt: skip
    return md, lines


def test_writes_a_complete_servable_model_dir(compressed, small, frame) -> None:
    from fraudlite.compression.served import open_model
    from fraudlite.data.transactions import parse_day, window_mask
    from fraudlite.models.evaluation import evaluate_scores, evaluate_window, score_frame

    md, _ = compressed
    kinds = {e["role"]: e["kind"] for e in md.entries().values()}
    assert kinds == {
        "compact": "serve", "spec": "serve", "state": "train", "weights": "train", "report": "doc",
        "compression_report": "doc", "compression_report_md": "doc", "pareto": "doc",
    }  # fmt: skip
    assert set(md.manifest["files"]) == {COMPACT_FILE, "feature_spec.json"}  # the manifest lists what serves
    source = ModelDir.load(small[1])
    assert md.manifest["parent_version"] == source.version
    assert md.manifest["data_window"] == source.manifest["data_window"]
    comp = md.manifest["compression"]
    assert comp["stages"] == ["distill", "prune", "cluster"]
    assert comp["ap_drop"] <= 0.5 and comp["compact_ratio"] > 1
    assert set(md.manifest["runtime"]) == {"form", "machine", "rows_per_s"}  # the choice and its numbers
    assert md.manifest["runtime"]["form"] in FORMS
    assert 0 < md.threshold <= md.alert_threshold < 1
    # what serving reads: a fraction of the source's, and the AP compression reported is the served one's
    assert md.serve_bytes() * 3 < source.serve_bytes()
    served = open_model(md.path)
    w = source.manifest["data_window"]
    valid = window_mask(frame, parse_day(w["valid_start"], "s"), parse_day(w["valid_end"], "e"), "valid")
    scores = score_frame(served, frame)
    reported = md.manifest["metrics"]["validation"]["average_precision"]
    assert evaluate_scores(frame, scores, valid)["average_precision"] == pytest.approx(reported, abs=1e-9)
    assert served.runtime["form"] == md.manifest["runtime"]["form"]
    fair = evaluate_window(served, frame, parse_day(w["valid_start"], "s"), parse_day(w["valid_end"], "e"))
    assert 0 <= fair["average_precision"] <= 1


def test_the_served_model_is_the_compact_artifact_decoded(compressed, frame) -> None:
    """Decoded weights == the compressed weights (the state file kept by --keep-training-files), and the
    served scores equal theirs to 1e-6 whichever runnable form serves."""
    from fraudlite.compression.served import FORMS, open_model

    md, _ = compressed
    state = CompressedMLP.load(md.file("state"))
    back = decode_compact(md.file("compact").read_bytes())
    assert back.equals(CompressedMLP(state.layers, state.mean, state.std, state.masks, state.codebooks,
                                     state.quant, []))  # fmt: skip
    assert md.file("compact").name == COMPACT_FILE and md.file("state").name == STATE_FILE
    served = open_model(md.path)
    assert served.state.equals(back)
    X = np.random.default_rng(0).normal(size=(500, back.n_features)).astype(np.float32) * 3
    assert np.max(np.abs(served.score_raw(X) - state.predict_proba(X))) <= 1e-6
    for name, form in FORMS.items():
        scores = form(back.layers, back.mean, back.std, back.masks).score(X)
        assert np.max(np.abs(scores - state.predict_proba(X))) <= 1e-6, name


def test_report_files_and_progress(compressed) -> None:
    md, lines = compressed
    report = json.loads(md.file("compression_report").read_text())
    assert [r["stage"] for r in report["stages"]] == [
        "source",
        "distill",
        "prune",
        "cluster",
        f"served ({md.manifest['runtime']['form']})",
    ]
    for row in report["stages"]:
        for key in ("n_params", "compact_bytes", "runnable_bytes", "average_precision", "roc_auc",
                    "card_precision_at_100", "rows_per_s_b1", "rows_per_s_b256"):  # fmt: skip
            assert row[key] is not None, key
    assert [t["setting"] for t in report["trials"] if t["stage"] == "prune"][0] == {"sparsity": 0.9}
    assert report["runtime"]["form"] == md.manifest["runtime"]["form"]
    assert set(report["runtime"]["rows_per_s"]) >= {"ort-dense", "numpy-dense", "numpy-sparse"}
    assert report["memory"]["served_rss_bytes"] > 0
    md_text = md.file("compression_report_md").read_text()
    assert "| stage |" in md_text and "compact artifact" in md_text
    assert md.file("pareto").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("stage 1/3 distill" in line for line in lines)
    assert any("eta" in line for line in lines)


def test_search_stops_and_explains_when_nothing_fits(small, frame, tmp_path) -> None:
    recipe = parse_recipe(
        '[[stage]]\nname = "prune"\nsparsity = 0.99\nschedule = "one_shot"\nprune_epochs = 0\nfinetune_epochs = 0\n'
        '[search]\n"prune.sparsity" = [0.99, 0.98]\n'
    )
    out = tmp_path / "never"
    with pytest.raises(SearchError) as exc:
        compress_model_dir(small[1], frame, out, recipe, max_ap_drop=0.0)
    message = str(exc.value)
    assert "stage 1 ('prune')" in message and "raise --max-ap-drop" in message
    assert len(exc.value.trials) == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [-0.1, 1.0, 5, float("nan"), float("inf"), "x"])
def test_impossible_max_ap_drop(value) -> None:
    with pytest.raises(ConfigError, match="max-ap-drop"):
        check_max_ap_drop(value)


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["compress", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("recipe", "max_drop", "needle"),
    [
        ('[[stage]]\nname = "quantum"\n', "0.005", "unknown stage 'quantum'"),
        (
            '[[stage]]\nname = "prune"\nsparsity_target = 0.5\n',
            "0.005",
            "unknown setting(s) 'sparsity_target'",
        ),
        (None, "-0.01", "--max-ap-drop"),
        (None, "1.5", "--max-ap-drop"),
        (None, "nan", "--max-ap-drop"),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_nothing(small, tmp_path, capsys, recipe, max_drop, needle) -> None:
    args = [
        "--model",
        str(small[1]),
        "--data",
        str(small[0]),
        "--out",
        str(tmp_path / "out"),
        "--max-ap-drop",
        max_drop,
    ]
    if recipe is not None:
        (tmp_path / "r.toml").write_text(recipe)
        args += ["--recipe", str(tmp_path / "r.toml")]
    code, err = _cli(capsys, *args)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["r.toml"] if recipe else [])


def test_cli_rejects_what_is_not_a_model_dir(small, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, err = _cli(capsys, "--model", str(tmp_path), "--data", str(small[0]), "--out", str(out))
    assert code == 2 and "not a model directory" in err
    from fraudlite.cli.foundation_commands import train

    logreg = tmp_path / "logreg"
    train(str(small[0]), {}, "2026-01-31", "2026-02-28", str(logreg), model_type="logreg")
    code, err = _cli(capsys, "--model", str(logreg), "--data", str(small[0]), "--out", str(out))
    assert code == 2 and "needs an MLP model directory" in err
    code, err = _cli(capsys, "--model", str(small[1]), "--data", str(small[0]), "--out", str(out),
                     "--recipe", str(tmp_path / "missing.toml"))  # fmt: skip
    assert code == 2 and "no such file" in err
    assert not out.exists()


def test_cli_prints_the_stage_table(small, tmp_path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[stage]]\nname = "cluster"\nk = 32\nfinetune_epochs = 0\n[export]\nprecision = "fp32"\n'
        "[data]\nmax_train_rows = 5000\n"
    )
    out = tmp_path / "out"
    code = main(["compress", "--model", str(small[1]), "--data", str(small[0]), "--out", str(out),
                 "--recipe", str(recipe), "--max-ap-drop", "0.5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "| stage |" in printed and "| cluster |" in printed and "smaller than the source ONNX" in printed
    md = ModelDir.load(out)
    assert md.has("compact") and not md.has("onnx")
    assert md.bytes_by_kind()["train"] == 0  # training files only with --keep-training-files


def test_optional_stage_is_skipped_and_reported(small, frame, tmp_path) -> None:
    recipe = parse_recipe(
        '[[stage]]\nname = "prune"\noptional = true\nsparsity = 0.99\nschedule = "one_shot"\nprune_epochs = 0\n'
        'finetune_epochs = 0\n[[stage]]\nname = "cluster"\nk = 256\nfinetune_epochs = 0\nhalf_precision = false\n'
        '[export]\nprecision = "fp32"\n[data]\nmax_train_rows = 5000\n'
    )
    md = compress_model_dir(small[1], frame, tmp_path / "out", recipe, max_ap_drop=0.05, measure_memory=False)
    comp = md.manifest["compression"]
    assert comp["skipped_stages"] == ["prune"]
    assert comp["stages"] == ["cluster"]
    report = json.loads(md.file("compression_report").read_text())
    assert report["skipped_stages"][0]["smallest_ap_drop"] > 0.05
    assert "skipped" in md.file("compression_report_md").read_text()


def test_restarts_keep_the_run_that_agrees_best_with_the_teacher(compressed) -> None:
    md, lines = compressed
    report = json.loads(md.file("compression_report").read_text())
    cluster = [t for t in report["trials"] if t["stage"] == "cluster"]
    assert cluster and all(len(t["restart_agreements"]) == 2 for t in cluster)
    assert all(t["top_agreement"] == max(t["restart_agreements"]) for t in cluster)
    assert all("restart_agreements" not in t for t in report["trials"] if t["stage"] != "cluster")
    assert any("restart 2/2 seed 1" in line and "top-1% agreement" in line for line in lines)
    rows = {r["stage"]: r for r in report["stages"]}
    assert rows["source"]["top_agreement"] == report["teacher"]["source_agreement"] <= 1.0
    assert rows["cluster"]["top_agreement"] == cluster[-1]["top_agreement"]
    assert "top-1% agree" in md.file("compression_report_md").read_text()


def test_the_teacher_ensemble_teaches_the_stages(compressed) -> None:
    md, lines = compressed
    report = json.loads(md.file("compression_report").read_text())
    teacher = report["teacher"]
    assert teacher["members"] == 2 and 0 < teacher["average_precision"] <= 1
    # the distillation stage measured its teacher: the ensemble, not the source
    distill = next(s for s in report["stage_records"] if s["name"] == "distill")
    assert distill["valid_ap_before"] == pytest.approx(teacher["average_precision"], abs=1e-9)
    assert distill["valid_ap_before"] != pytest.approx(
        report["summary"]["source_average_precision"], abs=1e-9
    )
    assert any("teacher member 2/2: valid AP" in line for line in lines)
    assert "teacher" in md.file("compression_report_md").read_text()


def test_serve_opens_a_fifth_of_the_fp32_bytes_and_never_a_report(compressed, small) -> None:
    """Counted in a fresh process with an audit hook: every file ``serve``'s model loading opens."""
    from fraudlite.testing.opened import files_opened_by_serve

    md, _ = compressed
    opened = files_opened_by_serve(md.path)
    assert set(opened) == {"manifest.json", COMPACT_FILE, "feature_spec.json"}
    fp32 = files_opened_by_serve(small[1])
    assert set(fp32) == {"manifest.json", "model.onnx", "feature_spec.json"}
    assert sum(opened.values()) * 5 <= sum(fp32.values()), (opened, fp32)
    assert sum(opened.values()) == md.serve_bytes()


def test_registry_stores_what_serves(compressed, tmp_path) -> None:
    from fraudlite.compression.served import open_model
    from fraudlite.pipeline.registry import Registry

    md, _ = compressed
    everything = sum(p.stat().st_size for p in md.path.iterdir())  # what a version stored before
    reg = Registry(tmp_path / "reg", create=True)
    version = reg.add(md)
    stored = sum(p.stat().st_size for p in version.path.iterdir())
    assert stored * 10 <= everything, (stored, everything)
    assert sorted(p.name for p in version.path.iterdir()) == [
        "feature_spec.json",
        "manifest.json",
        COMPACT_FILE,
    ]
    assert reg.describe(version.version)["bytes_by_kind"] == {"serve": stored, "doc": 0, "train": 0}
    assert reg.verify(version.version) == {version.version: []}
    X = np.random.default_rng(1).normal(size=(64, md.spec.n_features)).astype(np.float32)
    assert np.array_equal(open_model(version.path).score(X), open_model(md.path).score(X))
    kept = Registry(tmp_path / "reg2", create=True).add(md, kinds=("serve", "doc", "train"))
    assert kept.bytes_by_role() == md.bytes_by_role()  # asked for, everything is stored
