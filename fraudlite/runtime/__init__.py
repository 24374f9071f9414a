"""Every runnable form of a small MLP scorer, and ONNX Runtime sessions for scoring.

- :mod:`~fraudlite.runtime.session`: ``session_options``, ``OnnxScorer`` (an ONNX model -> scores).
- :mod:`~fraudlite.runtime.onnx_graph`: ``mlp_graph``, ONNX bytes of an MLP without the ``onnx`` package.
- :mod:`~fraudlite.runtime.forms`: ``OrtDense``, ``NumpyDense``, ``NumpySparse`` built from numpy layers.
- :mod:`~fraudlite.runtime.folded`: ``NumpyFolded``, ``OrtFolded``: the standardization folded into layer 0.
- :mod:`~fraudlite.runtime.choice`: ``measure_forms``, ``choose_form``: pick a form by timing it here.

Names resolve lazily (PEP 562) so that ``import fraudlite.runtime`` and a numpy form do not import
onnxruntime; ``from fraudlite.runtime import OnnxScorer`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fraudlite.runtime.choice import choose_form, machine_fingerprint, measure_forms
    from fraudlite.runtime.folded import NumpyFolded, OrtFolded
    from fraudlite.runtime.forms import Form, NumpyDense, NumpySparse, OrtDense, build_forms
    from fraudlite.runtime.onnx_graph import fold_standardization, mlp_graph
    from fraudlite.runtime.session import OnnxScorer, session_options

__all__ = [
    "session_options",
    "OnnxScorer",
    "mlp_graph",
    "fold_standardization",
    "Form",
    "OrtDense",
    "NumpyDense",
    "NumpySparse",
    "NumpyFolded",
    "OrtFolded",
    "build_forms",
    "measure_forms",
    "choose_form",
    "machine_fingerprint",
]

_SUBMODULE = {
    "session_options": "session",
    "OnnxScorer": "session",
    "mlp_graph": "onnx_graph",
    "fold_standardization": "onnx_graph",
    "Form": "forms",
    "OrtDense": "forms",
    "NumpyDense": "forms",
    "NumpySparse": "forms",
    "NumpyFolded": "folded",
    "OrtFolded": "folded",
    "build_forms": "forms",
    "measure_forms": "choice",
    "choose_form": "choice",
    "machine_fingerprint": "choice",
}


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
