"""Dockerfile lint (no Docker engine here, so the images are not built): pinned base images, a non-root
user, the serving image installs the base package only, and .dockerignore keeps the context small
without hiding what the Dockerfiles copy."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_lib import DOCKER, REPO, parse_fraudlite

SERVE = DOCKER / "serve.Dockerfile"
TRAIN = DOCKER / "train.Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments) lines; continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.I)
            assert m, f"{path.name}: cannot read FROM {args!r}"
            stages.append(Stage(m.group(1), m.group(2)))
        elif instr == "ARG" and not stages:
            continue
        else:
            assert stages, f"{path.name}: {instr} before FROM"
            stages[-1].instructions.append((instr, " ".join(args.split())))
    return stages


def runs(stage: Stage) -> str:
    return "\n".join(a for i, a in stage.instructions if i == "RUN")


def pip_installs(stage: Stage) -> list[str]:
    """Every requirement passed to a ``pip install`` in the stage."""
    out = []
    for cmd in re.split(r"&&|;|\n", runs(stage)):
        words = shlex.split(cmd.replace('${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}', ""))
        if "pip" in " ".join(words[:2]) and "install" in words:
            args = words[words.index("install") + 1 :]
            out += [w for w in args if not w.startswith("-")]
    return out


@pytest.mark.parametrize("path", [SERVE, TRAIN], ids=lambda p: p.name)
def test_base_images_pinned(path):
    stages = parse_dockerfile(path)
    for stage in stages:
        if stage.base in {s.name for s in stages if s.name}:
            continue
        image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and "$" not in stage.base, f"{path.name}: unpinned base {stage.base}"
        assert image == "python", f"{path.name}: unexpected base {stage.base}"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"{path.name}: pin python 3.11 slim by patch tag"


@pytest.mark.parametrize("path", [SERVE, TRAIN], ids=lambda p: p.name)
def test_runs_as_non_root(path):
    final = parse_dockerfile(path)[-1]
    users = [a for i, a in final.instructions if i == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: USER {users[-1]}"
    assert user.isdigit(), f"{path.name}: numeric USER lets Kubernetes verify runAsNonRoot"
    assert re.search(rf"useradd\b[^\n]*--uid {user}\b", runs(final)), (
        f"{path.name}: uid {user} is not created"
    )


def test_serving_image_installs_base_package_only():
    installs = [r for s in parse_dockerfile(SERVE) for r in pip_installs(s)]
    assert installs == ["."], f"serve.Dockerfile must `pip install .` and nothing else, got {installs}"
    text = SERVE.read_text(encoding="utf-8")
    for banned in ("[train]", "[dev]", "[broker]", "torch", "pandas", "pytest", "ruff", "hypothesis"):
        assert banned not in "\n".join(runs(s) for s in parse_dockerfile(SERVE)), banned
    assert "requirements" not in text


def test_base_install_has_no_heavy_or_dev_dependencies():
    """What `pip install .` brings: pyproject's base dependencies, none of them training or dev tools."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    heavy = {"torch", "pandas", "scikit-learn", "pyarrow", "matplotlib", "pytest", "ruff", "hypothesis"}
    assert base & heavy == set()


def test_training_image_installs_train_extra():
    installs = [r for s in parse_dockerfile(TRAIN) for r in pip_installs(s)]
    assert installs == [".[train]"], installs
    assert "[dev]" not in TRAIN.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", [SERVE, TRAIN], ids=lambda p: p.name)
def test_entrypoint_and_cmd_are_fraudlite_commands(path):
    final = parse_dockerfile(path)[-1]
    instr = dict(final.instructions)
    import json

    assert json.loads(instr["ENTRYPOINT"]) == ["fraudlite"]
    cmd = json.loads(instr["CMD"])
    if cmd[-1] != "--help":
        parse_fraudlite(cmd)


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        parts = rel.split("/")
        # a pattern matching a parent directory matches everything below it
        if any(re.fullmatch(regex, "/".join(parts[:k])) for k in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_copy():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (SERVE, TRAIN):
        for stage in parse_dockerfile(path):
            for instr, args in stage.instructions:
                if instr != "COPY" or args.startswith("--from"):
                    continue
                for src in args.split()[:-1]:
                    assert (REPO / src).exists(), f"{path.name}: COPY {src} does not exist"
                    assert not _ignored(src, patterns), (
                        f"{path.name}: COPY {src} is excluded by .dockerignore"
                    )
                    if (REPO / src).is_dir():
                        for f in (REPO / src).rglob("*.py"):
                            assert not _ignored(str(f.relative_to(REPO)), patterns), f
    for junk in (".venv/bin/python", ".git/HEAD", "tests/deploy/test_dockerfiles.py", "benchmarks/run.py",
                 "demo-out/x", "data/x.parquet", "fraudlite/__pycache__/cli.cpython-311.pyc"):  # fmt: skip
        assert _ignored(junk, patterns), f".dockerignore lets {junk} into the build context"
