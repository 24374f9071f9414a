"""The architecture's rules (docs/ARCHITECTURE.md, "Layers"), checked on the source with ``ast``.

Every import counts, including those inside functions: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fraudlite"

# Lowest first. A unit (a subpackage, or a top-level module) imports only itself and lower layers;
# units of one layer never import each other.
LAYERS: list[set[str]] = [
    {"errors"},
    {"runtime"},
    {"features", "monitoring"},
    {"modeldir"},
    {"data"},
    {"models"},
    {"compression", "kafkaio"},
    {"pipeline"},
    {"streaming"},
    {"cli"},
    {"testing", "__main__"},
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The fraudlite module a dotted name lives in (``a.b.func`` -> ``a.b``)."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@cache
def _imports() -> dict[str, set[str]]:
    """module -> the fraudlite modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found.update(
                t for n in names if n.startswith("fraudlite") and (t := _resolve(n)) not in (None, module)
            )
        graph[module] = found
    return graph


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else "fraudlite"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} - {"fraudlite"}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and docs/ARCHITECTURE.md)"


def test_units_import_only_lower_layers():
    bad = []
    for module, targets in _imports().items():
        unit = _unit(module)
        if unit == "fraudlite":
            continue
        for target in targets:
            other = _unit(target)
            if other != unit and (other == "fraudlite" or RANK[other] >= RANK[unit]):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_between_files():
    assert _cycles(_imports()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_getattr_outside_package_inits():
    bad = [
        str(path.relative_to(ROOT))
        for path in _modules().values()
        if path.name != "__init__.py"
        and any(
            isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
            for n in ast.parse(path.read_text()).body
        )
    ]
    assert bad == []


def test_no_file_over_500_lines():
    """Every Python file of the project: the package, the tests, the benchmarks."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    paths = {ROOT / name for name in tracked.stdout.split()} | set(_modules().values())
    long = {
        str(p.relative_to(ROOT)): n
        for p in paths
        if p.is_file() and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_error_hangs_from_the_root():
    """A class that derives from a built-in exception also derives from ``FraudliteError`` (or a subclass)."""
    ours = {"FraudliteError"}
    classes = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.append(
                    (
                        path,
                        node,
                        {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases},
                    )
                )
    changed = True
    while changed:  # close over subclasses defined anywhere
        changed = False
        for _, node, bases in classes:
            if node.name not in ours and bases & ours:
                ours.add(node.name)
                changed = True
    builtin = {n for n in dir(__builtins__ if isinstance(__builtins__, dict) else __builtins__)}
    bad = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path, node, bases in classes
        if node.name not in ours and any(b.endswith(("Error", "Exception")) and b in builtin for b in bases)
    ]
    assert bad == []


def _identifiers(path: Path) -> set[str]:
    names = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            names.add(n.attr)
        elif isinstance(n, ast.alias):
            names.add(n.name.rpartition(".")[2])
    return names


def test_kafkaio_never_sees_serve_config():
    users = [
        str(p.relative_to(ROOT))
        for p in (PACKAGE / "kafkaio").glob("*.py")
        if "ServeConfig" in _identifiers(p)
    ]
    assert users == []


# The background notes the project grew from live outside the repository; docs/ARCHITECTURE.md replaced
# them. Spelled in parts so that this file is not itself a reference to them.
OUTSIDE = ["DES" + "IGN.md", "../" + "shared"]


@pytest.mark.parametrize("outside", OUTSIDE)
def test_no_file_points_outside_the_repository(outside):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    this = Path(__file__).relative_to(ROOT).as_posix()
    hits = []
    for name in tracked.split():
        path = ROOT / name
        if name == this or not path.is_file() or path.suffix in (".png", ".onnx", ".parquet"):
            continue
        if outside in path.read_text(errors="ignore"):
            hits.append(name)
    assert hits == []


def test_citations_of_the_architecture_name_its_sections():
    """``docs/ARCHITECTURE.md, "Section"`` in any project file names a heading of that document."""
    doc = ROOT / "docs" / "ARCHITECTURE.md"
    headings = {line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cited = {}
    for name in tracked.split():
        path = ROOT / name
        if path.suffix in (".py", ".md", ".toml") and path.is_file() and path != Path(__file__).resolve():
            for section in re.findall(r'ARCHITECTURE\.md, "([^"]+)"', path.read_text()):
                cited.setdefault(section, name)
    assert cited, "no citation found: the pattern is wrong"
    assert {s: f for s, f in cited.items() if s not in headings} == {}
