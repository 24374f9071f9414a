"""``compress``: shrink a trained MLP within an average-precision budget."""

from __future__ import annotations

import argparse
import json

from fraudlite.cli.common import add_data_args, parse_columns

__all__ = ["add_compression", "compress_command"]


def compress_command(
    model: str,
    data: str,
    columns: dict[str, str],
    out: str,
    recipe: str | None = None,
    max_ap_drop: float = 0.005,
    keep_training_files: bool = False,
) -> int:
    """Validate cheap inputs first, compress, print the per-stage table."""
    from fraudlite.compression import report as reporting
    from fraudlite.compression.compress import check_max_ap_drop, compress_model_dir, load_source
    from fraudlite.compression.recipe import default_recipe, load_recipe
    from fraudlite.data.transactions import load_transactions

    check_max_ap_drop(max_ap_drop)
    parsed = load_recipe(recipe) if recipe else default_recipe()
    md = load_source(model)
    df = load_transactions(data, columns, require_label=True, extras=md.spec.extra_columns)
    written = compress_model_dir(md, df, out, parsed, max_ap_drop, keep_training_files=keep_training_files)
    report = json.loads((written.path / reporting.REPORT_JSON).read_text())
    s = report["summary"]
    print(reporting.stage_table(report["stages"]))
    print(
        f"\nships {written.serve_bytes():,} B to serve vs {md.serve_bytes():,} B for the source (compact artifact "
        f"{s['compact_bytes']:,} B, {s['compact_ratio']:.1f}x smaller than the source ONNX); serves as "
        f"{s['served_form']} ({report['runtime']['why']}): {s['speedup_b256']:.2f}x rows/s at batch 256, "
        f"{s['speedup_b1']:.2f}x at batch 1; validation AP drop {s['ap_drop']:+.4f} (max {max_ap_drop})"
        f"\nwrote {written.path} (version {written.version})"
    )
    return 0


def _compress(args: argparse.Namespace) -> int:
    return compress_command(
        model=args.model,
        data=args.data,
        columns=parse_columns(args.columns),
        out=args.out,
        recipe=args.recipe,
        max_ap_drop=args.max_ap_drop,
        keep_training_files=args.keep_training_files,
    )


def add_compression(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a trained MLP within an AP budget (distill, prune, share weights, encode, export)",
        description="Runs the recipe's stages with an accuracy-bounded search on the model's validation "
        "window and writes a model directory that ships the entropy-coded compact artifact (model.flc: serve "
        "decodes it bit-exactly and runs the runnable form measured fastest here) with its feature spec and a "
        "small manifest; report.json / report.md / pareto.png document it beside (never opened to serve).",
    )
    p.add_argument("--model", required=True, help="trained MLP model directory (with weights)")
    add_data_args(p)
    p.add_argument("--out", required=True, help="compressed model directory to write (atomically)")
    p.add_argument("--recipe", help="recipe TOML: [[stage]] tables in order, [search], [export], [data], [teacher] "
                   "(default: the built-in recipe)")  # fmt: skip
    p.add_argument(
        "--max-ap-drop",
        type=float,
        default=0.005,
        help="largest validation average-precision loss allowed, absolute (default 0.005); to match another "
        "model's accuracy, give the AP it loses (a tighter budget keeps more weights)",
    )
    p.add_argument(
        "--keep-training-files",
        action="store_true",
        help="also write the compression state and the compressed network's fp32 weights (kind train: for "
        "fine-tuning or compressing again; serving never opens them, the registry does not store them)",
    )
    p.set_defaults(func=_compress)
