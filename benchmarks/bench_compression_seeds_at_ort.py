"""The run-to-run spread of the size comparison at equal accuracy: `fraudlite compress` with the built-in
recipe and `--max-ap-drop` = the validation AP ORT dynamic int8 loses, once per seed, from the trained
model of `bench_compression` (whose own run of this is seed 0).

Not part of `make bench` (10-17 minutes per seed here, more when the tighter budget rejects candidates;
24 minutes for the default seeds); run it with
`.venv/bin/python benchmarks/run.py --only bench_compression_seeds_at_ort` (FRAUDLITE_BENCH_SEEDS,
default "3 6").
"""

from __future__ import annotations

from pathlib import Path

from bench_compression_seeds import seed_spread


def run(workdir: Path) -> str:
    return seed_spread(workdir, "3 6", at_ort=True)
