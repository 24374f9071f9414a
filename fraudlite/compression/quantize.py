"""int8 for ONNX Runtime: static QDQ with calibration, dynamic quantization, and torch's dynamic
quantization (the tools a user would reach for, measured side by side with ours).

Static QDQ (``quantize_static_onnx``) quantizes weights (per-channel or per-tensor, symmetric int8)
and activations (per-tensor uint8) with ranges calibrated on training rows: ``minmax``,
``percentile`` (99.999th) or ``entropy`` (KL). Dynamic (``quantize_dynamic_onnx``) quantizes weights
offline and activations per batch at run time. Both take an fp32 graph with the standardization kept
explicit (``export.compressed_to_onnx(..., storage="fp32", fold_standardization=False)``): folding
``1/std`` into the weights would widen per-column ranges and cost int8 precision.

On models this small int8 graphs measured 0.29-0.65x the fp32 rows/s (see the module docs of ``export``)
and were never chosen; the served compressed model is the compact artifact's exact weights
(:mod:`fraudlite.compression.served`), so these are measured beside it in the benchmarks.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fraudlite.compression.finetune import sample_rows
from fraudlite.errors import ConfigError

__all__ = [
    "CALIBRATION_METHODS",
    "quantize_static_onnx",
    "quantize_dynamic_onnx",
    "torch_dynamic_quantize",
    "torch_module_bytes",
]


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class _Reader:
    """onnxruntime CalibrationDataReader over a float32 matrix, in batches."""

    def __init__(self, X: np.ndarray, batch: int = 512) -> None:
        self._batches = iter(
            [
                {"features": np.ascontiguousarray(X[i : i + batch], dtype=np.float32)}
                for i in range(0, len(X), batch)
            ]
        )

    def get_next(self):
        return next(self._batches, None)

    def rewind(self) -> None:  # some calibrators call it; one pass is all we offer
        pass


@contextmanager
def _ort_files(fp32_onnx: bytes) -> Iterator[tuple[Path, Path]]:
    """``(src, dst)`` paths in a temporary directory, ``src`` holding ``fp32_onnx``, for one
    onnxruntime.quantization call. That package warns through the root logger about pre-processing;
    the warnings stay out of our output meanwhile (our graphs have static shapes, nothing to pre-process)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="fraudlite-quant-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32_onnx)
            yield src, dst
    finally:
        root.setLevel(previous)


def quantize_static_onnx(
    fp32_onnx: bytes,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    rows: int = 2048,
    seed: int = 0,
) -> bytes:
    """Static int8 QDQ quantization with ``onnxruntime.quantization``.

    Args:
        fp32_onnx: a float32 scoring graph.
        calibration: raw training features [N, F]; ``rows`` of them (seeded sample) calibrate.
        method: ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        per_channel: per-output-channel weight scales (else one per tensor).
        rows: calibration rows.
        seed: sampling seed.

    Returns:
        The quantized model's bytes.

    Raises:
        ConfigError: on an unknown method.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    sample = sample_rows(calibration, rows, seed)
    with _ort_files(fp32_onnx) as (src, dst):
        quantize_static(
            str(src),
            str(dst),
            _Reader(sample),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"CalibMovingAverage": False},
        )
        return dst.read_bytes()


def quantize_dynamic_onnx(fp32_onnx: bytes, *, per_channel: bool = False) -> bytes:
    """ORT ``quantize_dynamic`` (int8 weights, activations quantized per batch at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _ort_files(fp32_onnx) as (src, dst):
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
        return dst.read_bytes()


def torch_dynamic_quantize(model):
    """``torch.ao.quantization.quantize_dynamic`` of the Linear layers to int8 (a copy, eval mode)."""
    import copy
    import warnings

    import torch

    with warnings.catch_warnings():  # torch deprecates torch.ao for torchao; it is still what users reach for
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def torch_module_bytes(module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: what that tool's user would store (measured in
    memory only; fraudlite never writes pickles)."""
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()
