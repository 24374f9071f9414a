"""Flags and parsing shared by several command groups."""

from __future__ import annotations

import argparse
import logging

from fraudlite.errors import ConfigError

__all__ = ["parse_columns", "add_data_args", "quiet_kafka"]


def parse_columns(text: str | None) -> dict[str, str]:
    """``tx_id=id,timestamp=ts`` -> {"tx_id": "id", "timestamp": "ts"}."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        logical, sep, source = part.partition("=")
        if not sep or not logical.strip() or not source.strip():
            raise ConfigError(f"--columns: expected LOGICAL=SOURCE pairs separated by commas, got {part!r}")
        mapping[logical.strip()] = source.strip()
    return mapping


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="transactions file (.csv or .parquet)")
    p.add_argument(
        "--columns",
        help="map logical columns to the file's: tx_id=SRC,timestamp=SRC,customer_id=SRC,terminal_id=SRC,"
        "amount=SRC,label=SRC and the names of a model's extra columns (unmapped names are taken as they are)",
    )


def quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every connection at INFO; keep its chatter for --verbose."""
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)
