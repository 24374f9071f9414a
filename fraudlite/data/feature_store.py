"""The on-disk feature store the out-of-core path writes (``data.out_of_core``) and training reads.

A directory:

* ``features.npy``: float32 ``(rows, n_features)``, rows in input order, columns in ``FeatureSpec.names``:
  row ``i`` is exactly ``compute_features(spec, tx)[i]`` of the whole input held in memory;
* ``label.npy`` (int8, when the input has labels), ``day.npy`` (int32 UTC epoch day) and ``customer.npy``
  (int64: a 64-bit hash of the customer id, for per-card metrics), one value per row;
* ``store.json``, written last: format, rows, the spec and its names, the input files.

Plain ``.npy`` files (``np.load(path, mmap_mode="r")`` opens them), but :meth:`FeatureStore.blocks` reads
them with ordinary reads, block by block: a memory map's touched pages would count in the reader's RSS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudlite.errors import DataError
from fraudlite.features.spec import FeatureSpec

__all__ = ["FORMAT", "FeatureStore", "Block", "NpyWriter", "COLUMNS"]

FORMAT = "fraudlite-features/1"
META = "store.json"
FEATURES = "features.npy"
COLUMNS = {"label": np.int8, "day": np.int32, "customer": np.int64}


class NpyWriter:
    """Append rows to a ``.npy`` file whose final shape is known up front."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), shape
        self.rows = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._f, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:]:
            raise DataError(
                f"{self.path.name}: block of shape {block.shape}, expected rows of {self.shape[1:]}"
            )
        self._f.write(block.data)
        self.rows += len(block)

    def close(self) -> None:
        self._f.close()
        if self.rows != self.shape[0]:
            raise DataError(f"{self.path.name}: wrote {self.rows} rows, expected {self.shape[0]}")


def _open_npy(path: Path):
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return f, shape, dtype, f.tell()


@dataclass(frozen=True)
class Block:
    """Rows ``start .. start + len(day) - 1`` of a store: features (or None) and the per-row columns."""

    start: int
    X: np.ndarray | None
    label: np.ndarray | None
    day: np.ndarray
    customer: np.ndarray


@dataclass(frozen=True)
class FeatureStore:
    """An opened store (see module docstring)."""

    path: Path
    rows: int
    spec: FeatureSpec
    has_label: bool
    sources: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return self.spec.names

    @property
    def n_features(self) -> int:
        return self.spec.n_features

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        p = Path(path)
        try:
            meta = json.loads((p / META).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not a feature store ({e})") from e
        if meta.get("format") != FORMAT:
            raise DataError(f"{p}: feature store format {meta.get('format')!r}, expected {FORMAT}")
        spec = FeatureSpec.from_dict(meta["spec"])
        return cls(p, int(meta["rows"]), spec, bool(meta["has_label"]), tuple(meta.get("sources", ())))

    @staticmethod
    def write_meta(
        path: Path, rows: int, spec: FeatureSpec, has_label: bool, sources: list[str], **more
    ) -> None:
        meta = {
            "format": FORMAT,
            "rows": rows,
            "spec": spec.to_dict(),
            "has_label": has_label,
            "sources": sources,
        }
        (path / META).write_text(json.dumps({**meta, **more}, indent=1) + "\n")

    def column(self, name: str) -> np.ndarray:
        """A whole per-row column (``label``, ``day``, ``customer``): 1, 4 or 8 bytes a row."""
        return np.load(self.path / f"{name}.npy")

    def blocks(self, block_rows: int = 65_536, features: bool = True) -> Iterator[Block]:
        """Every row in input order, ``block_rows`` at a time (features only with ``features``)."""
        files = {}
        try:
            names = ["day", "customer", *(["label"] if self.has_label else [])]
            for name in names:
                files[name] = _open_npy(self.path / f"{name}.npy")[0]
            if features:
                f, shape, _, _ = _open_npy(self.path / FEATURES)
                files["X"] = f
                if shape != (self.rows, self.n_features):
                    raise DataError(
                        f"{self.path}: features of shape {shape}, expected {(self.rows, self.n_features)}"
                    )
            for start in range(0, self.rows, block_rows):
                n = min(block_rows, self.rows - start)
                part = {k: np.fromfile(files[k], dtype=COLUMNS[k], count=n) for k in names}
                X = None
                if features:
                    X = np.fromfile(files["X"], dtype=np.float32, count=n * self.n_features)
                    X = X.reshape(n, self.n_features)
                if any(len(v) != n for v in part.values()) or (X is not None and len(X) != n):
                    raise DataError(f"{self.path}: truncated store at row {start}")
                yield Block(start, X, part.get("label"), part["day"], part["customer"])
        finally:
            for f in files.values():
                f.close()
