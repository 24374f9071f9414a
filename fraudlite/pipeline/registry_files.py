"""The registry's files on disk: names, errors, the writers' lock, the champion pointer, JSONL journals.

Everything here is the crash-safety layer of ``fraudlite.pipeline.registry`` (see its docstring for the
layout): the pointer is replaced by one ``os.replace`` and journals grow by one fsync'ed ``O_APPEND``
write, so a reader never sees half a write. Imports neither torch nor pandas (the serving process reads
the pointer through ``read_champion``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from fraudlite.errors import UserError

__all__ = [
    "RegistryError",
    "UnknownVersionError",
    "RegistryBusyError",
    "ChampionChangedError",
    "VERSIONS_DIR",
    "CHAMPION_FILE",
    "HISTORY_FILE",
    "REGISTERED_FILE",
    "LOCK_FILE",
    "VERSION_NAME",
    "validate_version_name",
    "read_champion",
    "write_champion",
    "file_lock",
    "append_jsonl",
    "read_jsonl",
    "now_iso",
]

# The registry's logger: log records keep the name they had before this module was split out.
logger = logging.getLogger("fraudlite.pipeline.registry")

VERSIONS_DIR = "versions"
CHAMPION_FILE = "champion"
HISTORY_FILE = "history.jsonl"
REGISTERED_FILE = "registered.jsonl"
LOCK_FILE = ".lock"
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(UserError):
    """A registry operation the user asked for cannot be done (no registry, nothing to roll back...)."""


class UnknownVersionError(RegistryError, LookupError):
    """A version name that is not in the registry."""


class RegistryBusyError(RegistryError, RuntimeError):
    """Another process holds the lock (a running retrain, a collector...)."""


class ChampionChangedError(RegistryError, RuntimeError):
    """The champion changed between a decision and its write (compare-and-set failed)."""


def validate_version_name(version: str) -> str:
    """A version name is one safe path component: letters, digits, ``._-``, not starting with a dot."""
    if not isinstance(version, str) or not VERSION_NAME.fullmatch(version):
        raise RegistryError(
            f"invalid version name {version!r}: use letters, digits, '.', '_' or '-' (not starting with '.')"
        )
    return version


def read_champion(root: str | os.PathLike) -> str | None:
    """The champion's version name, or None when there is none yet (lock-free, cheap)."""
    try:
        text = (Path(root) / CHAMPION_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def write_champion(root: Path, version: str) -> None:
    """Replace ``root/champion`` atomically (temp file, fsync, ``os.replace``, fsync of the directory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{CHAMPION_FILE}.tmp-", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / CHAMPION_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, *, blocking: bool = True, what: str = "registry") -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``path`` (created if missing); the holder's pid is written into it.

    Raises:
        RegistryBusyError: ``blocking=False`` and another open file description holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            raise RegistryBusyError(
                f"{path}: {what} is locked by another process{f' (pid {holder})' if holder else ''}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def append_jsonl(path: Path, entry: dict) -> None:
    """Append one JSON line with a single fsync'ed ``O_APPEND`` write."""
    line = (json.dumps(entry, sort_keys=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON object line of ``path`` (none if missing); a torn line from a crash is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            logger.warning("registry: %s line %d is not JSON (torn write?), skipped", path, i)
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
