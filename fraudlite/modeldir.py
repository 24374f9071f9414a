"""The model directory: everything needed to serve a model without torch, and what documents and trains it.

Three kinds of file (``KINDS``; a file's kind follows from its role, ``ROLE_KINDS``):

- ``serve``: what ``serve``, ``score`` and ``evaluate`` open: the feature spec and the model in its stored
  form (``model.onnx`` for a trained model, the compact artifact ``model.flc`` for a compressed one);
- ``doc``: reports and plots, kept beside the model and never opened to serve; a missing one never stops
  serving;
- ``train``: what retraining or recompressing needs (the fp32 weights of a trained MLP).

Layout (format 2; extend, don't break)::

    manifest.json        version, created, model type, data window, thresholds, headline metrics, the
                         compression summary and runtime choice, ``files: {name: {sha256, bytes, role}}``
                         of the serve files and ``contents: {name, sha256, bytes}`` of the index below
    contents.json        ``files: {name: {sha256, bytes, role, kind}}`` of the doc and train files
    model.onnx           role ``onnx``: input ``features`` float32 [N, F] (raw features; normalization is
                         inside the graph), output ``score`` float32 [N] (fraud probability)
    model.flc            role ``compact``: the compact artifact (``fraudlite.compression.compact``)
    feature_spec.json    role ``spec``: FeatureSpec (+ normalization stats for a trained model)
    ...                  ``weights`` (safetensors, train), ``report`` (metrics.json, doc), reports, plots

So serving reads the manifest and the serve files only, each re-hashed, and the manifest stays small; the
manifest holds the index's sha256 and the index every other file's, so every file is still checksummed
(a doc or train file is re-hashed when it is opened). Format 1 directories (one ``files`` table of every
file) still load: their kinds follow from their roles.

Directories are written to a temporary sibling and renamed into place, so a reader never sees half of one.
Loading re-hashes every file it opens and refuses one that does not match, naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fraudlite.errors import IntegrityError, ModelDirError
from fraudlite.features.spec import FeatureSpec

__all__ = [
    "MANIFEST",
    "CONTENTS",
    "FORMAT",
    "FORMATS",
    "KINDS",
    "ROLE_KINDS",
    "kind_of",
    "ModelDir",
    "write_model_dir",
    "sha256_file",
    "verify_files",
    "SIGNING_KEY_ENV",
]

MANIFEST = "manifest.json"
CONTENTS = "contents.json"
FORMAT = "fraudlite-model/2"
FORMATS = ("fraudlite-model/1", FORMAT)
ONNX_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
SIGNING_KEY_ENV = "FRAUDLITE_SIGNING_KEY"
KINDS = ("serve", "doc", "train")
ROLE_KINDS = {
    "onnx": "serve",
    "compact": "serve",
    "spec": "serve",
    "weights": "train",
    "state": "train",
}
"""Roles not listed here are documentation."""


def kind_of(role: str) -> str:
    """The kind (``serve``, ``doc``, ``train``) of a file with ``role``."""
    return ROLE_KINDS.get(role, "doc")


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


def _check_name(root: Path, name: str) -> Path:
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise IntegrityError(f"{root / MANIFEST}: file entry {name!r} points outside the model directory")
    return root / name


def _check_file(path: Path, entry: dict, listed_in: str) -> None:
    if not path.is_file():
        raise IntegrityError(f"{path}: missing (listed in {listed_in})")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise IntegrityError(f"{path}: {size} bytes, {listed_in} says {entry.get('bytes')} (truncated?)")
    if sha256_file(path) != entry.get("sha256"):
        raise IntegrityError(f"{path}: sha256 does not match {listed_in} (file changed or tampered)")


def _check_signature(root: Path, manifest: dict) -> None:
    key = _signing_key()
    if key is not None:
        signature = manifest.get("signature")
        if not signature or not hmac.compare_digest(signature, _signature(manifest, key)):
            raise IntegrityError(
                f"{root / MANIFEST}: HMAC signature missing or invalid ({SIGNING_KEY_ENV} is set)"
            )


def _read_contents(root: Path, manifest: dict) -> dict[str, dict]:
    """The doc/train entries of ``contents.json`` (verified against the manifest), {} when there is none."""
    ref = manifest.get("contents")
    if not ref:
        return {}
    path = _check_name(root, str(ref.get("name", CONTENTS)))
    _check_file(path, ref, MANIFEST)
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelDirError(f"{path}: unreadable contents index ({e})") from e
    return {name: {**entry, "listed_in": path.name} for name, entry in files.items()}


def _manifest_entries(root: Path, manifest: dict) -> dict[str, dict]:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelDirError(f"{root / MANIFEST}: no 'files' table")
    return {
        name: {**entry, "kind": entry.get("kind") or kind_of(str(entry.get("role"))), "listed_in": MANIFEST}
        for name, entry in files.items()
    }


def verify_files(root: Path, manifest: dict, kinds: Iterable[str] = KINDS) -> None:
    """Re-hash every file of ``kinds`` the manifest (and its contents index) lists; raise IntegrityError
    naming the first that does not match."""
    kinds = set(kinds)
    entries = _manifest_entries(root, manifest)
    if kinds - {"serve"}:
        entries.update(_read_contents(root, manifest))
    for name, entry in entries.items():
        path = _check_name(root, name)
        if entry["kind"] in kinds:
            _check_file(path, entry, entry["listed_in"])
    _check_signature(root, manifest)


@dataclass(frozen=True)
class ModelDir:
    """A loaded model directory whose manifest and serve files were verified (doc and train files are
    re-hashed when :meth:`file` opens them)."""

    path: Path
    manifest: dict
    _contents: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> ModelDir:
        """Read ``manifest.json`` and (by default) check the serve files' size and sha256.

        Raises:
            ModelDirError: not a model directory / unreadable manifest.
            IntegrityError: a serve file is missing, truncated or changed.
        """
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ModelDirError(f"{root}: not a model directory (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{manifest_path}: unreadable manifest ({e})") from e
        if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
            raise ModelDirError(
                f"{manifest_path}: not a fraudlite model manifest (format {manifest.get('format')!r}; "
                f"this fraudlite reads {', '.join(FORMATS)})"
                if isinstance(manifest, dict)
                else f"{manifest_path}: not a fraudlite model manifest"
            )
        if verify:
            verify_files(root, manifest, kinds=("serve",))
        return cls(root, manifest)

    def entries(self) -> dict[str, dict]:
        """Every file: ``{name: {sha256, bytes, role, kind}}`` (reads the contents index once)."""
        return {name: {k: v for k, v in e.items() if k != "listed_in"} for name, e in self._all().items()}

    def _all(self) -> dict[str, dict]:
        entries = _manifest_entries(self.path, self.manifest)
        if "contents" in self.manifest:
            if not self._contents:
                self._contents.update(_read_contents(self.path, self.manifest))
            entries.update(self._contents)
        return entries

    def _entry(self, role: str) -> tuple[str, dict] | None:
        for entries in (lambda: _manifest_entries(self.path, self.manifest), self._all):
            for name, entry in entries().items():
                if entry.get("role") == role:
                    return name, entry
        return None

    def file(self, role: str) -> Path:
        """Path of the (first) file with ``role``, re-hashed first when it is not a serve file (those were
        checked at load); ModelDirError if there is none, IntegrityError if it does not match."""
        found = self._entry(role)
        if found is None:
            raise ModelDirError(f"{self.path}: no file with role {role!r}")
        name, entry = found
        path = _check_name(self.path, name)
        if entry["kind"] != "serve":
            _check_file(path, entry, entry["listed_in"])
        return path

    def has(self, role: str) -> bool:
        return self._entry(role) is not None

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

    def bytes_by_role(self, kinds: Iterable[str] = KINDS) -> dict[str, int]:
        """Bytes per role of the files of ``kinds`` (all by default)."""
        kinds = set(kinds)
        entries = _manifest_entries(self.path, self.manifest) if kinds == {"serve"} else self._all()
        out: dict[str, int] = {}
        for entry in entries.values():
            if entry["kind"] in kinds:
                out[entry["role"]] = out.get(entry["role"], 0) + int(entry["bytes"])
        return out

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per kind; ``serve`` includes the manifest itself (what serving reads), ``doc`` the index."""
        out = {kind: 0 for kind in KINDS}
        for entry in self._all().values():
            out[entry["kind"]] += int(entry["bytes"])
        out["serve"] += (self.path / MANIFEST).stat().st_size
        if "contents" in self.manifest:
            out["doc"] += int(self.manifest["contents"]["bytes"])
        return out

    def serve_bytes(self) -> int:
        """Bytes serving reads: the manifest and the serve files."""
        return (self.path / MANIFEST).stat().st_size + sum(self.bytes_by_role(("serve",)).values())


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
        files: dict[str, dict] = {}
        contents: dict[str, dict] = {}
        for name, role in roles.items():
            p = tmp / name
            entry = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "role": role}
            kind = kind_of(role)
            if kind == "serve":
                files[name] = entry
            else:
                contents[name] = {**entry, "kind": kind}
        full = {"format": FORMAT, "version": new_version(), "created": datetime.now(UTC).isoformat()}
        full.update({k: v for k, v in manifest.items() if k not in ("files", "contents", "format")})
        full["files"] = files
        if contents:
            (tmp / CONTENTS).write_text(json.dumps({"files": contents}, indent=1) + "\n")
            path = tmp / CONTENTS
            full["contents"] = {"name": CONTENTS, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        key = _signing_key()
        if key is not None:
            full["signature"] = _signature(full, key)
        (tmp / MANIFEST).write_text(json.dumps(full, separators=(",", ":")) + "\n")  # small: serving reads it
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
