"""Model registry on a directory: immutable versions, an atomically replaced champion pointer, a history.

Layout (the streaming scorer's ``serve --registry DIR`` reads it; extend, don't break)::

    DIR/versions/<version>/   complete model directories (fraudlite.modeldir), immutable once written
    DIR/champion              text file: the champion's version name, replaced atomically (temp + os.replace)
    DIR/history.jsonl         one JSON line per decision (time, challenger, champion, metrics of both,
                              decision, reason, new_champion)
    DIR/registered.jsonl      one JSON line per version added: its manifest's sha256 (verify checks it)
    DIR/.lock                 fcntl.flock'ed by every writer (add / promote / rollback / history)

Readers take no lock: a version directory appears by one rename of a complete, verified directory, and
the champion pointer by one ``os.replace``, so a reader sees the old champion or the new one, never half
of either. Writers serialize on ``DIR/.lock``; ``set_champion(..., expected=...)`` is a compare-and-set so
two retrain runs that evaluated against the same champion cannot both replace it.

The files and the lock are in ``registry_files``, the reading of the history in ``registry_history``,
re-hashing a version in ``registry_verify``; this module ties them into ``Registry`` and keeps every
name importable from here. It imports neither torch nor pandas (the serving process uses it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fraudlite.errors import IntegrityError, ModelDirError
from fraudlite.modeldir import KINDS, MANIFEST, ModelDir, sha256_file, verify_files, write_model_dir
from fraudlite.pipeline.registry_files import (
    CHAMPION_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    REGISTERED_FILE,
    VERSION_NAME,
    VERSIONS_DIR,
    ChampionChangedError,
    RegistryBusyError,
    RegistryError,
    UnknownVersionError,
    append_jsonl,
    file_lock,
    now_iso,
    read_champion,
    read_jsonl,
    validate_version_name,
    write_champion,
)
from fraudlite.pipeline.registry_history import (
    became_champion_at,
    headline,
    previous_champion,
    version_status,
)
from fraudlite.pipeline.registry_verify import verify_version

__all__ = [
    "Registry",
    "RegistryError",
    "UnknownVersionError",
    "RegistryBusyError",
    "ChampionChangedError",
    "read_champion",
    "validate_version_name",
    "VERSIONS_DIR",
    "CHAMPION_FILE",
    "HISTORY_FILE",
    "STORED_KINDS",
]

logger = logging.getLogger(__name__)

STORED_KINDS = ("serve",)
"""What a version stores by default: what serving needs (``fraudlite.modeldir``, the three kinds)."""


class Registry:
    """A model registry rooted at a directory (see the module docstring for the layout).

    Args:
        root: the registry directory.
        create: create the layout if missing; otherwise a directory without ``versions/`` is an error.

    Raises:
        RegistryError: ``root`` is not a registry and ``create`` is False.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = False) -> None:
        self.root = Path(root)
        if not (self.root / VERSIONS_DIR).is_dir():
            if not create:
                what = "does not exist" if not self.root.exists() else f"has no {VERSIONS_DIR}/ directory"
                raise RegistryError(f"{self.root}: not a model registry ({what})")
            (self.root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        self._lock_state = threading.local()

    # --- paths and reads (lock-free) ------------------------------------------------------------------

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    def version_names(self) -> list[str]:
        """Every version in the registry, oldest first (names sort by creation time)."""
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and VERSION_NAME.fullmatch(p.name)]
        return sorted(names, key=lambda n: (self._created(n), n))

    def _created(self, version: str) -> str:
        try:
            return str(json.loads((self.versions_dir / version / MANIFEST).read_text()).get("created", ""))
        except (OSError, ValueError):
            return ""

    def path(self, version: str) -> Path:
        """Directory of ``version``.

        Raises:
            UnknownVersionError: no such version (the message lists the known ones).
        """
        validate_version_name(version)
        p = self.versions_dir / version
        if not p.is_dir():
            known = self.version_names()
            listing = ", ".join(known[-5:]) if known else "none"
            raise UnknownVersionError(
                f"{self.root}: unknown version {version!r} (known: {listing}{' ...' if len(known) > 5 else ''})"
            )
        return p

    def load(self, version: str, verify: bool = True) -> ModelDir:
        """The version's model directory, re-hashed unless ``verify`` is False."""
        return ModelDir.load(self.path(version), verify=verify)

    def champion(self) -> str | None:
        return read_champion(self.root)

    def champion_model(self, verify: bool = True) -> ModelDir | None:
        """The champion's ModelDir (verified), or None when there is no champion."""
        version = self.champion()
        return None if version is None else self.load(version, verify=verify)

    def history(self) -> list[dict]:
        """Every decision recorded, oldest first (a torn last line from a crash is skipped)."""
        return read_jsonl(self.root / HISTORY_FILE)

    def champion_since(self) -> float | None:
        """Epoch seconds at which the current champion became champion (history, else the pointer's mtime)."""
        champion = self.champion()
        if champion is None:
            return None
        since = became_champion_at(self.history(), champion)
        if since is not None:
            return since
        try:
            return (self.root / CHAMPION_FILE).stat().st_mtime
        except FileNotFoundError:
            return None

    def status(self, version: str, history: list[dict] | None = None, champion: str | None = None) -> str:
        """``champion``, ``rejected``, ``retired`` (was champion), or ``registered``."""
        champion = self.champion() if champion is None else champion
        if version == champion:
            return "champion"
        return version_status(version, self.history() if history is None else history, champion)

    def describe(self, version: str, history: list[dict] | None = None, champion: str | None = None) -> dict:
        """A summary of one version (no re-hashing): window, metrics, lineage, status."""
        champion = self.champion() if champion is None else champion
        history = self.history() if history is None else history
        md = self.load(version, verify=False)
        m = md.manifest
        metrics = m.get("metrics") or {}
        return {
            "version": version,
            "champion": version == champion,
            "status": self.status(version, history, champion),
            "created": m.get("created"),
            "model_type": m.get("model_type"),
            "parent_version": m.get("parent_version"),
            "data_window": m.get("data_window"),
            "threshold": m.get("threshold"),
            "metrics": {
                "validation": headline(metrics.get("validation")),
                "recent_window": headline(metrics.get("recent_window")),
            },
            "compression": m.get("compression"),
            "bytes": md.bytes_by_role(),
            "bytes_by_kind": md.bytes_by_kind(),
            "path": str(md.path),
        }

    def list(self) -> list[dict]:
        """``describe`` of every version, oldest first."""
        champion, history = self.champion(), self.history()
        return [self.describe(v, history, champion) for v in self.version_names()]

    # --- verification ---------------------------------------------------------------------------------

    def verify(self, version: str | None = None) -> dict[str, list[str]]:
        """Re-hash every file of one version (or all); returns ``{version: [problems]}`` (empty = OK).

        Problems name the file: changed/truncated/missing files, files not in the manifest, a manifest
        that differs from the one registered, a bad signature, a champion pointer to a missing version.
        """
        versions = [version] if version is not None else self.version_names()
        registered = {
            e.get("version"): e.get("manifest_sha256") for e in read_jsonl(self.root / REGISTERED_FILE)
        }
        report: dict[str, list[str]] = {}
        for v in versions:
            report[v] = verify_version(self.path(v), registered.get(v))
        if version is None:
            champion = self.champion()
            if champion is not None and champion not in report:
                report.setdefault(champion, []).append(
                    f"{self.root / CHAMPION_FILE}: points to version {champion!r}, which does not exist"
                )
        return report

    # --- writes (under the lock) ----------------------------------------------------------------------

    @contextmanager
    def lock(self, blocking: bool = True) -> Iterator[None]:
        """The writers' lock (re-entrant within one thread of this object)."""
        depth = getattr(self._lock_state, "depth", 0)
        if depth:
            self._lock_state.depth = depth + 1
            try:
                yield
            finally:
                self._lock_state.depth -= 1
            return
        with file_lock(self.root / LOCK_FILE, blocking=blocking, what="registry"):
            self._lock_state.depth = 1
            try:
                yield
            finally:
                self._lock_state.depth = 0

    def add(
        self,
        source: ModelDir | str | os.PathLike,
        manifest_updates: dict | None = None,
        kinds: Iterable[str] = STORED_KINDS,
    ) -> ModelDir:
        """Copy a (verified) model directory into ``versions/<its version>`` atomically.

        Only the files of ``kinds`` are stored: by default what serves (the manifest, the spec and the
        model in its stored form); reports, plots and training files stay beside the source unless
        ``kinds`` asks for them (``fraudlite registry add --keep doc,train``).

        Args:
            source: a model directory (its files of ``kinds`` re-hashed before copying).
            manifest_updates: fields merged into the copy's manifest (``parent_version``, metrics...);
                the files table and signature are recomputed. ``version`` may rename the copy.
            kinds: which kinds of file to store (``fraudlite.modeldir.KINDS``); ``serve`` always.

        Returns:
            The registered, verified ModelDir.

        Raises:
            RegistryError: the version already exists (versions are immutable), or an unknown kind.
            IntegrityError / ModelDirError: the source is not a valid model directory.
        """
        kinds = {"serve", *kinds}
        if kinds - set(KINDS):
            raise RegistryError(
                f"unknown kind(s) of file {sorted(kinds - set(KINDS))}; kinds are {', '.join(KINDS)}"
            )
        src = source if isinstance(source, ModelDir) else ModelDir.load(source)
        verify_files(src.path, src.manifest, kinds)
        manifest = {
            k: v for k, v in src.manifest.items() if k not in ("files", "contents", "format", "signature")
        }
        manifest.update(manifest_updates or {})
        manifest["registered"] = now_iso()
        version = validate_version_name(str(manifest["version"]))
        roles = {name: entry["role"] for name, entry in src.entries().items() if entry["kind"] in kinds}

        def copy(tmp: Path) -> dict[str, str]:
            for name in roles:
                dst = tmp / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(src.path / name, "rb") as fin, open(dst, "wb") as fout:
                    while chunk := fin.read(1 << 20):
                        fout.write(chunk)
            return roles

        with self.lock():
            if (self.versions_dir / version).exists():
                raise RegistryError(
                    f"{self.root}: version {version!r} already exists (versions are immutable)"
                )
            md = write_model_dir(self.versions_dir / version, copy, manifest, overwrite=False)
            for p in md.path.rglob("*"):
                if p.is_file():
                    p.chmod(0o444)
            append_jsonl(
                self.root / REGISTERED_FILE,
                {
                    "time": manifest["registered"],
                    "version": version,
                    "manifest_sha256": sha256_file(md.path / MANIFEST),
                },
            )
        logger.info("registry: added version=%s root=%s", version, self.root)
        return md

    def set_champion(
        self, version: str, *, expected: str | None | object = ..., verify: bool = True
    ) -> str | None:
        """Point ``champion`` at ``version`` atomically; returns the previous champion.

        Args:
            expected: if given, the champion must still be this (None = no champion) or
                ChampionChangedError is raised and nothing changes (compare-and-set).
            verify: re-hash the version first and refuse it if any file does not match.
        """
        with self.lock():
            if verify:
                problems = verify_version(self.path(version), self._registered_sha(version))
                if problems:
                    raise IntegrityError(f"refusing version {version!r}: " + "; ".join(problems))
            else:
                self.path(version)
            previous = self.champion()
            if expected is not ... and previous != expected:
                raise ChampionChangedError(
                    f"{self.root}: the champion changed from {expected!r} to {previous!r} meanwhile"
                )
            write_champion(self.root, version)
        return previous

    def _registered_sha(self, version: str) -> str | None:
        for entry in reversed(read_jsonl(self.root / REGISTERED_FILE)):
            if entry.get("version") == version:
                return entry.get("manifest_sha256")
        return None

    def record(self, entry: dict) -> dict:
        """Append one decision to ``history.jsonl`` (``time`` added if absent); returns the entry."""
        entry = {"time": now_iso(), **entry}
        with self.lock():
            append_jsonl(self.root / HISTORY_FILE, entry)
        return entry

    def _recorded_metrics(self, version: str | None) -> dict | None:
        """The headline metrics a version's manifest recorded on its comparison window (if any)."""
        if version is None:
            return None
        try:
            manifest = self.load(version, verify=False).manifest
        except (RegistryError, ModelDirError):
            return None
        return headline((manifest.get("metrics") or {}).get("recent_window"))

    def promote(self, version: str, reason: str = "manual promote", **extra) -> dict:
        """Make ``version`` the champion (verified first) and record the decision; returns the record.

        Promoting the current champion changes nothing and records nothing (``decision: unchanged``).
        """
        with self.lock():
            if self.champion() == version:
                self.path(version)
                return {
                    "challenger": version,
                    "champion": version,
                    "decision": "unchanged",
                    "new_champion": version,
                }
            previous = self.set_champion(version)
            entry = {
                "challenger": version,
                "champion": previous,
                "decision": "promoted",
                "reason": reason,
                "new_champion": version,
                "metrics": {
                    "challenger": self._recorded_metrics(version),
                    "champion": self._recorded_metrics(previous),
                },
            }
            entry.update(extra)
            entry = self.record(entry)
        logger.info("registry: promoted version=%s previous=%s reason=%s", version, previous, reason)
        return entry

    def rollback_target(self) -> tuple[str, str]:
        """(current champion, the champion before it) from the history of champion changes.

        Raises:
            RegistryError: no champion, or no earlier champion to go back to.
        """
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.root}: no champion, nothing to roll back")
        previous = previous_champion(self.history(), current)
        if previous is None:
            raise RegistryError(f"{self.root}: champion {current!r} has no earlier champion to roll back to")
        return current, previous

    def rollback(self, reason: str = "manual rollback") -> dict:
        """Make the previous champion the champion again (verified first); returns the record."""
        with self.lock():
            current, target = self.rollback_target()
            self.set_champion(target, expected=current)
            entry = self.record(
                {
                    "challenger": target,
                    "champion": current,
                    "decision": "rollback",
                    "reason": reason,
                    "new_champion": target,
                    "metrics": {
                        "challenger": self._recorded_metrics(target),
                        "champion": self._recorded_metrics(current),
                    },
                }
            )
        logger.info("registry: rolled back from=%s to=%s", current, target)
        return entry
