"""The serving process imports neither torch nor pandas (docs/ARCHITECTURE.md, "Conventions"), checked in a fresh
interpreter: the ``serve`` entry point as the CLI reaches it, and the whole streaming serving path."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "pandas", "sklearn", "matplotlib")

CODE = f"""
import json, sys
HEAVY = {HEAVY!r}
from fraudlite.cli import build_parser
args = build_parser().parse_args(["serve", "--model", "m", "--bootstrap-servers", "127.0.0.1:9092"])
from fraudlite.streaming.config import build_serve_config
from fraudlite.streaming.scorer import Scorer
from fraudlite.streaming.serve import make_scorer, run_serve
import fraudlite.streaming, fraudlite.kafkaio.broker
from fraudlite.kafkaio import clients, security, wire
from fraudlite.streaming import metrics, outputs, reload, serve, state_store, sync, terminal_feed
from fraudlite.streaming import label_outcomes, shadow
from fraudlite.monitoring import outcomes
from fraudlite.features import online
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def test_serve_entry_point_imports_no_torch_or_pandas():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [], f"the serving path imported {heavy}"


def test_serve_help_is_light():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fraudlite", "serve", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and "--bootstrap-servers" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY)
