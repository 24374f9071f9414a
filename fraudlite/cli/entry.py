"""Command line: argument parsing only; each command calls one function.

This module builds the top-level parser and runs a command; each command group's flags live in one
module of ``fraudlite.cli`` (``foundation``, ``compression``, ``streaming``, ``lifecycle``) beside the
handlers they call (``*_commands``, ``demo*``).

User errors (``fraudlite.errors.UserError``) print one line and exit with status 2; heavy imports happen
inside the command handlers so ``fraudlite --help`` and the serving commands stay light.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from fraudlite.cli.compression import add_compression
from fraudlite.cli.foundation import add_foundation
from fraudlite.cli.lifecycle import add_lifecycle
from fraudlite.cli.streaming import add_streaming
from fraudlite.errors import UserError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("fraudlite")

# In the order ``fraudlite --help`` lists them.
COMMAND_GROUPS = (add_foundation, add_compression, add_streaming, add_lifecycle)


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; keep its message to one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fraudlite",
        description="Fraud detection with compressed models: simulate, train, compress, serve from Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# disk full, quota exceeded, read-only file system
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"fraudlite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fraudlite {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # The machine, not the user or a bug: one clear line (outputs are written atomically, so
        # nothing half-written is left behind). Other OS errors keep their traceback.
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"fraudlite {args.command}: error: {e.strerror or e}{where}; nothing was written", file=sys.stderr
        )
        return 1
