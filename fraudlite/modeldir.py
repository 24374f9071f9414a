"""The model directory: everything needed to serve a model without torch.

Layout (extend, don't break)::

    manifest.json        version, created, model type, data window, threshold, metrics, compression
                         stages, and ``files: {name: {sha256, bytes, role}}`` for every other file
    model.onnx           role ``onnx``: input ``features`` float32 [N, F] (raw features; normalization is
                         inside the graph), output ``score`` float32 [N] (fraud probability)
    feature_spec.json    role ``spec``: FeatureSpec + normalization stats
    ...                  ``weights`` (safetensors), ``report`` (metrics.json), ``compact``, ...

Directories are written to a temporary sibling and renamed into place, so a reader never sees half of one.
Loading re-hashes every file and refuses one that does not match, naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fraudlite.errors import IntegrityError, ModelDirError
from fraudlite.features.spec import FeatureSpec

__all__ = [
    "MANIFEST",
    "FORMAT",
    "ModelDir",
    "write_model_dir",
    "sha256_file",
    "verify_files",
    "SIGNING_KEY_ENV",
]

MANIFEST = "manifest.json"
FORMAT = "fraudlite-model/1"
ONNX_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
SIGNING_KEY_ENV = "FRAUDLITE_SIGNING_KEY"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _signature(manifest: dict, key: bytes) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _signing_key() -> bytes | None:
    key = os.environ.get(SIGNING_KEY_ENV)
    return key.encode() if key else None


def verify_files(root: Path, manifest: dict) -> None:
    """Re-hash every file the manifest lists; raise IntegrityError naming the first that does not match."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelDirError(f"{root / MANIFEST}: no 'files' table")
    for name, entry in files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IntegrityError(f"{root / MANIFEST}: file entry {name!r} points outside the model directory")
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise IntegrityError(f"{path}: {size} bytes, manifest says {entry.get('bytes')} (truncated?)")
        if sha256_file(path) != entry.get("sha256"):
            raise IntegrityError(f"{path}: sha256 does not match {MANIFEST} (file changed or tampered)")
    key = _signing_key()
    if key is not None:
        signature = manifest.get("signature")
        if not signature or not hmac.compare_digest(signature, _signature(manifest, key)):
            raise IntegrityError(
                f"{root / MANIFEST}: HMAC signature missing or invalid ({SIGNING_KEY_ENV} is set)"
            )


@dataclass(frozen=True)
class ModelDir:
    """A loaded (and verified) model directory."""

    path: Path
    manifest: dict

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> ModelDir:
        """Read ``manifest.json`` and (by default) check every file's size and sha256.

        Raises:
            ModelDirError: not a model directory / unreadable manifest.
            IntegrityError: a listed file is missing, truncated or changed.
        """
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ModelDirError(f"{root}: not a model directory (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{manifest_path}: unreadable manifest ({e})") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelDirError(f"{manifest_path}: not a {FORMAT} manifest")
        if verify:
            verify_files(root, manifest)
        return cls(root, manifest)

    def file(self, role: str) -> Path:
        """Path of the (first) file with ``role``; ModelDirError if there is none."""
        for name, entry in self.manifest["files"].items():
            if entry.get("role") == role:
                return self.path / name
        raise ModelDirError(f"{self.path}: no file with role {role!r}")

    def has(self, role: str) -> bool:
        return any(e.get("role") == role for e in self.manifest["files"].values())

    @property
    def onnx_path(self) -> Path:
        return self.file("onnx")

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(json.loads(self.file("spec").read_text())["spec"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def alert_threshold(self) -> float:
        return float(self.manifest.get("alert_threshold", self.manifest["threshold"]))

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def bytes_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.manifest["files"].values():
            out[entry["role"]] = out.get(entry["role"], 0) + int(entry["bytes"])
        return out


def new_version() -> str:
    """A sortable, unique-enough version id: UTC time + random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def write_model_dir(
    out: str | os.PathLike,
    write_files: Callable[[Path], dict[str, str]],
    manifest: dict,
    overwrite: bool = True,
) -> ModelDir:
    """Create a model directory atomically.

    Args:
        out: final directory path.
        write_files: called with a fresh temporary directory; writes the files there and returns
            ``{file name: role}``.
        manifest: manifest fields (``files``, ``format``, ``created`` and, if absent, ``version`` are set
            here).
        overwrite: replace an existing directory at ``out`` (atomically swapped), else ModelDirError.

    Returns:
        The written, verified ModelDir. On any exception nothing is left at ``out`` (or the old one stays).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ModelDirError(f"{out}: already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        roles = write_files(tmp)
        files = {}
        for name, role in roles.items():
            p = tmp / name
            files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "role": role}
        full = {"format": FORMAT, "version": new_version(), "created": datetime.now(UTC).isoformat()}
        full.update(manifest)
        full["files"] = files
        key = _signing_key()
        if key is not None:
            full["signature"] = _signature(full, key)
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelDir.load(out)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.urandom(3).hex()}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
