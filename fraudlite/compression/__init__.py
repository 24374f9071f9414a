"""fraudlite.compression: distillation, pruning, weight sharing, quantization, the entropy-coded compact
artifact (what ships) and its serving (``served.open_model``), ONNX export of stages, recipes, the
accuracy-bounded search and the report.

Entry point: :func:`compress_model_dir` (``fraudlite compress``). Names are imported lazily (PEP 562)
so that ``fraudlite.compression.compact`` — numpy only — can decode an artifact in a process without
torch or pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CompressedMLP",
    "encode_compact",
    "decode_compact",
    "compressed_to_onnx",
    "Recipe",
    "default_recipe",
    "load_recipe",
    "parse_recipe",
    "run_search",
    "SearchError",
    "compress_model_dir",
]

_WHERE = {
    "CompressedMLP": "fraudlite.compression.state",
    "encode_compact": "fraudlite.compression.compact",
    "decode_compact": "fraudlite.compression.compact",
    "compressed_to_onnx": "fraudlite.compression.export",
    "Recipe": "fraudlite.compression.recipe",
    "default_recipe": "fraudlite.compression.recipe",
    "load_recipe": "fraudlite.compression.recipe",
    "parse_recipe": "fraudlite.compression.recipe",
    "run_search": "fraudlite.compression.search",
    "SearchError": "fraudlite.compression.search",
    "compress_model_dir": "fraudlite.compression.compress",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fraudlite.compression' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
