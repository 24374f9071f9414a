"""The error hierarchy: one root, subclasses that also inherit the matching builtin.

The CLI turns any ``UserError`` into one line on stderr and exit status 2; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "FraudliteError",
    "UserError",
    "DataError",
    "ConfigError",
    "ModelDirError",
    "IntegrityError",
]


class FraudliteError(Exception):
    """Root of every error fraudlite raises on purpose."""


class UserError(FraudliteError):
    """Something the user can fix: a bad file, column, flag or setting (exit status 2)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as given (missing column, unparsable value, empty window...)."""


class ConfigError(UserError, ValueError):
    """An invalid setting: a flag, a recipe entry, a dataclass field."""


class ModelDirError(UserError, FileNotFoundError):
    """A path that is not a usable model directory."""


class IntegrityError(ModelDirError):
    """A model file whose checksum (or signature) does not match its manifest."""
