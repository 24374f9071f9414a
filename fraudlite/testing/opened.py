"""What loading a model for serving reads: every file opened inside the model directory, measured in a
fresh process with an audit hook on ``open`` (audit hooks cannot be removed, hence the child process).

Shared by the tests and the benchmarks: ``serve`` on a compressed directory must open a fraction of the
bytes it opens for the fp32 model it came from, and never a report, plot or training file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["files_opened_by_serve", "bytes_opened_by_serve"]

_CODE = """
import json, os, sys
root = os.path.realpath(sys.argv[1])
opened = set()

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(root + os.sep):
            opened.add(os.path.relpath(path, root))

sys.addaudithook(hook)
from fraudlite.streaming.reload import load_model
load_model(root)
print(json.dumps(sorted(opened)))
"""


def files_opened_by_serve(model_dir: str | os.PathLike) -> dict[str, int]:
    """``{file name: bytes}`` of every file inside ``model_dir`` that ``serve``'s model loading
    (``fraudlite.streaming.reload.load_model``) opens, measured in a fresh interpreter."""
    root = Path(model_dir).resolve()
    out = subprocess.run(
        [sys.executable, "-c", _CODE, str(root)], check=True, capture_output=True, text=True, timeout=120
    )
    names = json.loads(out.stdout.strip().splitlines()[-1])
    return {name: (root / name).stat().st_size for name in names}


def bytes_opened_by_serve(model_dir: str | os.PathLike) -> int:
    """Total bytes of :func:`files_opened_by_serve`."""
    return sum(files_opened_by_serve(model_dir).values())
