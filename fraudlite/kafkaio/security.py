"""Kafka client security settings: read from a properties file (``--kafka-config``) or the environment
(``FRAUDLITE_KAFKA_<FIELD>``), validated once, passed to every client.

Secrets are fields with ``repr=False`` and are never logged: ``KafkaSecurity.describe()`` masks them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from fraudlite.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "KafkaSecurity",
    "kafka_security",
    "kafka_security_from_env",
    "kafka_security_from_file",
]

ENV_PREFIX = "FRAUDLITE_KAFKA_"

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")


@dataclass(frozen=True)
class KafkaSecurity:
    """Kafka client security settings, passed through to kafka-python. Secrets never appear in repr/logs."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.security_protocol not in _SECURITY_PROTOCOLS:
            raise ConfigError(
                f"{ENV_PREFIX}SECURITY_PROTOCOL: must be one of {', '.join(_SECURITY_PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.sasl_mechanism not in _SASL_MECHANISMS:
            raise ConfigError(
                f"{ENV_PREFIX}SASL_MECHANISM: {self.security_protocol} needs one of {', '.join(_SASL_MECHANISMS)}"
            )
        if sasl and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"{ENV_PREFIX}SASL_USERNAME and {ENV_PREFIX}SASL_PASSWORD are required for {self.sasl_mechanism}"
                )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: no such file: {path}")

    def client_kwargs(self) -> dict:
        """Keyword arguments for KafkaConsumer/KafkaProducer/KafkaAdminClient (secrets included)."""
        kw: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                kw["sasl_plain_username"] = self.sasl_username
                kw["sasl_plain_password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            kw["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
                if getattr(self, name) is not None:
                    kw[name] = getattr(self, name)
        return kw

    def describe(self) -> str:
        """A loggable one-liner: protocol, mechanism and user; passwords shown as ``***`` when set."""
        parts = [f"security_protocol={self.security_protocol}"]
        if self.sasl_mechanism:
            parts.append(f"sasl_mechanism={self.sasl_mechanism}")
        if self.sasl_username:
            parts.append(f"sasl_username={self.sasl_username}")
        if self.sasl_password is not None:
            parts.append("sasl_password=***")
        if self.ssl_password is not None:
            parts.append("ssl_password=***")
        return " ".join(parts)


# Keys accepted in a properties file (Kafka client style) and their KafkaSecurity field.
_FILE_KEYS = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.cafile": "ssl_cafile",
    "ssl.certfile": "ssl_certfile",
    "ssl.keyfile": "ssl_keyfile",
    "ssl.password": "ssl_password",
    "ssl.check.hostname": "ssl_check_hostname",
}


def _coerce(name: str, value: str) -> object:
    if name == "ssl_check_hostname":
        low = value.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"ssl_check_hostname must be true or false, got {value!r}")
        return low in ("true", "1", "yes")
    if name in ("security_protocol", "sasl_mechanism"):
        return value.strip().upper()
    return value


def _file_values(path: str | os.PathLike) -> dict[str, object]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--kafka-config {path}: cannot read ({e.__class__.__name__})") from None
    values: dict[str, object] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in _FILE_KEYS:
            key = re.split(r"[\s:]", key, maxsplit=1)[0]  # never the value of a `key: value` line
            raise ConfigError(
                f"--kafka-config {path}:{lineno}: unknown key {key!r} (key=value lines; known: "
                f"{', '.join(_FILE_KEYS)})"
            )
        values[_FILE_KEYS[key]] = _coerce(_FILE_KEYS[key], value.strip())
    return values


def _env_values(environ: Mapping[str, str] | None) -> dict[str, object]:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(KafkaSecurity):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw)
    return values


def kafka_security(
    path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> KafkaSecurity:
    """Kafka security settings: a properties file (``--kafka-config``), then ``FRAUDLITE_KAFKA_<FIELD>``
    variables on top (e.g. ``FRAUDLITE_KAFKA_SASL_PASSWORD``), validated once together.

    The file holds ``key=value`` lines (``security.protocol``, ``sasl.mechanism``, ``sasl.username``,
    ``sasl.password``, ``ssl.cafile``, ``ssl.certfile``, ``ssl.keyfile``, ``ssl.password``,
    ``ssl.check.hostname``; ``#`` comments).

    Raises:
        ConfigError: unreadable file, unknown key (named; values are never shown) or invalid combination.
    """
    values = _file_values(path) if path else {}
    values.update(_env_values(environ))
    return _merge(KafkaSecurity(), values)


def kafka_security_from_file(path: str | os.PathLike, base: KafkaSecurity | None = None) -> KafkaSecurity:
    """``kafka_security`` from a properties file only, over ``base``."""
    return _merge(base or KafkaSecurity(), _file_values(path))


def kafka_security_from_env(
    environ: Mapping[str, str] | None = None, base: KafkaSecurity | None = None
) -> KafkaSecurity:
    """``kafka_security`` from the environment only, over ``base``."""
    return _merge(base or KafkaSecurity(), _env_values(environ))


def _merge(base: KafkaSecurity, values: Mapping[str, object]) -> KafkaSecurity:
    current = {f.name: getattr(base, f.name) for f in fields(KafkaSecurity)}
    current.update(values)
    return KafkaSecurity(**current)
