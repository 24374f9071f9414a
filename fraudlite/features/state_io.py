"""Helpers shared by the online state classes: row arrays that grow, and the msgpack snapshot envelope.

A snapshot is a msgpack map with ``kind``, ``format`` (``FORMAT``) and the ``spec`` it was built for,
plus the state's raw arrays (machine byte order; no pickle).
"""

from __future__ import annotations

import msgspec
import numpy as np

from fraudlite.errors import DataError
from fraudlite.features.spec import FeatureSpec

__all__ = ["FORMAT", "grow", "decode_snapshot"]

FORMAT = 1


def grow(a: np.ndarray, capacity: int) -> np.ndarray:
    """A copy of ``a`` with ``capacity`` rows (the new rows are zero)."""
    out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


def decode_snapshot(data: bytes, kind: str, spec: FeatureSpec) -> dict:
    """msgpack -> dict, checking kind, format and spec."""
    try:
        d = msgspec.msgpack.decode(data)
        ok = isinstance(d, dict) and d.get("kind") == kind and d.get("format") == FORMAT
        same_spec = ok and FeatureSpec.from_dict(d["spec"]) == spec
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"corrupt {kind}: {e}") from None
    if not ok:
        raise DataError(f"not a {kind} (or written by another version)")
    if not same_spec:
        raise DataError(f"{kind} was written for another feature spec")
    return d
