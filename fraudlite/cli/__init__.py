"""fraudlite.cli: the ``fraudlite`` command — argument parsing, handlers and printing, the demos.

The top layer: it may import every other package; nothing in fraudlite imports it. ``main`` is the console
entry point (``fraudlite = "fraudlite.cli:main"``).
"""

from fraudlite.cli.entry import build_parser, main

__all__ = ["main", "build_parser"]
