"""`make bench`: run every benchmark section and write benchmarks/RESULTS.md.

Each section is a module in this folder with ``run(workdir: Path) -> str`` returning markdown. Sections
measure ratios within one run (A vs B on the same machine and data): absolute times on shared 2-core
machines are noise. ``--only NAME`` runs some sections and keeps the others' last results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTIONS = [
    "bench_foundation",
    "bench_compression",
    "bench_shipping",
    "bench_state",
    "bench_streaming",
    "bench_latency",
    "bench_retrain",
    "bench_reliability",
    "bench_explain",
    "bench_wide",
    "bench_extras",
]
EXTRA = [
    "bench_soak",  # `make soak`, ten minutes
    "bench_broker",  # the test broker over time, 8 minutes
    "bench_compression_seeds",  # ~33 min
    "bench_compression_seeds_at_ort",  # ~24 min
    "bench_scale",  # training on 1M / 5M / 20M rows, an hour or more
]  # long: their sections stay in RESULTS.md, `make bench` never runs them
MARK = "<!-- section: {} -->"


def _existing_sections() -> dict[str, str]:
    if not RESULTS.exists():
        return {}
    parts = re.split(r"<!-- section: (\w+) -->\n", RESULTS.read_text())
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="section names to run (default: all that exist)")
    parser.add_argument(
        "--workdir",
        help="keep the run's files here (default: a temporary directory): a later run given the same one "
        "reuses the models earlier sections wrote (bench_streaming serves bench_shipping's)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    available = [s for s in SECTIONS if (HERE / f"{s}.py").exists()]
    chosen = args.only or available
    with (
        contextlib.nullcontext(args.workdir)
        if args.workdir
        else tempfile.TemporaryDirectory(prefix="fraudlite-bench-")
    ) as tmp:
        for name in chosen:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            module = importlib.import_module(name)
            write_section(name, module.run(Path(tmp) / name))
            print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def write_section(name: str, markdown: str) -> None:
    """Replace one section of RESULTS.md, keeping every other as the file has it now (so two benches run side
    by side do not overwrite each other's section)."""
    results = _existing_sections()
    results[name] = markdown.rstrip() + "\n\n"
    _write(results)


def _write(results: dict[str, str]) -> None:
    head = (
        "# Benchmark results\n\n"
        f"Written by `make bench` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}). Reproduce one section with "
        "`.venv/bin/python benchmarks/run.py --only SECTION`.\n\n"
    )
    body = "".join(MARK.format(name) + "\n" + results[name] for name in SECTIONS + EXTRA if name in results)
    RESULTS.write_text(head + body)


if __name__ == "__main__":
    raise SystemExit(main())
