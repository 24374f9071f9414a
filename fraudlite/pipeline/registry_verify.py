"""Re-hashing one registered version directory against its manifest (``fraudlite registry verify``).

Kept apart from ``Registry`` because it only reads one directory: it reports every problem, naming the
file, rather than stopping at the first (a promote refuses a version with any).
"""

from __future__ import annotations

import os
from pathlib import Path

from fraudlite.errors import IntegrityError, ModelDirError
from fraudlite.modeldir import MANIFEST, SIGNING_KEY_ENV, ModelDir, sha256_file, verify_files

__all__ = ["verify_version"]


def verify_version(path: Path, manifest_sha256: str | None) -> list[str]:
    """Problems of the version directory ``path`` (empty = OK).

    Args:
        path: the version directory.
        manifest_sha256: the manifest's sha256 recorded when the version was added (None: not checked).

    Returns:
        One message per problem: a changed/truncated/missing file, a file not in the manifest, a manifest
        that differs from the registered one, an entry pointing outside the directory, a bad signature.
    """
    problems: list[str] = []
    manifest_path = path / MANIFEST
    try:
        md = ModelDir.load(path, verify=False)
        files = md.entries()
    except ModelDirError as e:  # IntegrityError too: a changed contents index
        return [str(e)]
    manifest = md.manifest
    if manifest_sha256 is not None and sha256_file(manifest_path) != manifest_sha256:
        problems.append(f"{manifest_path}: sha256 does not match the one registered (manifest changed)")
    for name, entry in files.items():
        p = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{manifest_path}: file entry {name!r} points outside the version directory")
        elif not p.is_file():
            problems.append(f"{p}: missing (listed in {MANIFEST})")
        elif p.stat().st_size != entry.get("bytes"):
            problems.append(
                f"{p}: {p.stat().st_size} bytes, manifest says {entry.get('bytes')} (file changed or truncated)"
            )
        elif sha256_file(p) != entry.get("sha256"):
            problems.append(f"{p}: sha256 does not match {MANIFEST} (file changed or tampered)")
    index = (manifest.get("contents") or {}).get("name")
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and rel not in (MANIFEST, index) and rel not in files:
            problems.append(f"{p}: not listed in {MANIFEST} (unexpected file)")
    if not problems and os.environ.get(SIGNING_KEY_ENV):
        try:
            verify_files(path, manifest)
        except IntegrityError as e:
            problems.append(str(e))
    return problems
