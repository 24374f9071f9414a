"""``compress``: shrink a trained MLP within an average-precision budget."""

from __future__ import annotations

import argparse

from fraudlite.cli_commands.common import add_data_args, parse_columns

__all__ = ["add_compression"]


def _compress(args: argparse.Namespace) -> int:
    from fraudlite.compression.pipeline import compress_command

    return compress_command(
        model=args.model,
        data=args.data,
        columns=parse_columns(args.columns),
        out=args.out,
        recipe=args.recipe,
        max_ap_drop=args.max_ap_drop,
    )


def add_compression(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a trained MLP within an AP budget (distill, prune, share weights, encode, export)",
        description="Runs the recipe's stages with an accuracy-bounded search on the model's validation "
        "window and writes a model directory with the runnable ONNX (role onnx), the entropy-coded compact "
        "artifact (role compact) and report.json / report.md / pareto.png.",
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
    p.set_defaults(func=_compress)
