"""The ``fraudlite`` command groups: each module adds its subcommands' flags and the one-call handlers.

A group module pairs a command's flags with the handler that reads them, so a flag is defined and used in
one file. Handlers import their work lazily so ``fraudlite --help`` and ``serve`` stay light.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fraudlite.cli_commands.compression import add_compression
from fraudlite.cli_commands.foundation import add_foundation
from fraudlite.cli_commands.lifecycle import add_lifecycle
from fraudlite.cli_commands.streaming import add_streaming

__all__ = ["COMMAND_GROUPS"]

# In the order ``fraudlite --help`` lists them.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_foundation,
    add_compression,
    add_streaming,
    add_lifecycle,
]
