"""Helpers shared by the deploy/ tests: file locations, YAML loading, PromQL extraction from the dashboard
and the alert rules, Grafana variable substitution, metric-name extraction, external tools.

Pure functions over the shipped files; the tests decide what to assert.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "fraudlite.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE_YML = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
README = DEPLOY / "README.md"

SCORER_JOB = "fraudlite-scorer"
RETRAIN_JOB = "fraudlite-retrain"

#: Metrics the retrain scheduler (`fraudlite retrain --schedule`, issue 5) exports.
RETRAIN_METRICS = frozenset(
    {
        "fraudlite_retrain_runs_total",
        "fraudlite_retrain_last_success_timestamp_seconds",
        "fraudlite_retrain_last_duration_seconds",
        "fraudlite_champion_info",
        "fraudlite_champion_age_seconds",
    }
)

#: Series Prometheus itself attaches to every target (not exported by our processes).
PROMETHEUS_SYNTHETIC = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
)

#: The dashboard's interval variables -> their default (what we substitute to get plain PromQL).
DASHBOARD_INTERVALS = {"label_window": "6h"}

#: Grafana's built-in variables -> what we substitute to get plain PromQL.
GRAFANA_BUILTINS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def which(tool: str) -> str:
    """Absolute path of ``tool`` or skip the test, naming the package that provides it."""
    path = shutil.which(tool)
    if path is None:
        hints = {
            "promtool": "Debian package `prometheus` (apt-get install -y prometheus)",
            "prometheus": "Debian package `prometheus` (apt-get install -y prometheus)",
        }
        pytest.skip(f"{tool} not installed: {hints.get(tool, tool)}")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing text output (never raises on a non-zero status)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def k8s_manifest_files(include_optional: bool = True) -> list[Path]:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    if include_optional:
        files += sorted((K8S / "optional").glob("*.yaml"))
    return files


def k8s_objects(include_optional: bool = True) -> list[tuple[Path, dict]]:
    return [(p, d) for p in k8s_manifest_files(include_optional) for d in load_yaml_docs(p)]


def k8s_object(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


# --- fraudlite command lines ---


def parse_fraudlite(argv: list[str]) -> None:
    """Parse ``argv`` (without the program name) with fraudlite's own parser; fail on any error."""
    from fraudlite.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert argv[0] in sub.choices, f"`fraudlite {argv[0]}` is not a fraudlite command"
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # argparse reports a bad flag by exiting with 2
        raise AssertionError(f"fraudlite rejects {shlex.join(argv)!r} (exit {e.code})") from None


# --- dashboard and rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression shipped in the dashboard or the rules."""

    source: str  # "dashboard" | "rules"
    where: str  # panel title + refId, or rule name
    expr: str  # as written (Grafana variables still in)


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))


def iter_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict | None = None) -> list[Query]:
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(Query("dashboard", f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S
)


def variable_queries(dashboard: dict | None = None) -> list[tuple[str, str, str]]:
    """``(variable name, series selector, label)`` for every ``label_values`` query variable."""
    dashboard = dashboard or load_dashboard()
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        assert m, f"variable {var['name']}: expected label_values(selector, label), got {query!r}"
        out.append((var["name"], m["selector"], m["label"]))
    return out


def rule_groups(path: Path = ALERTS_YML) -> list[dict]:
    return load_yaml(path)["groups"]


def rules(path: Path = ALERTS_YML) -> list[dict]:
    return [r for g in rule_groups(path) for r in g["rules"]]


def rule_queries(path: Path = ALERTS_YML) -> list[Query]:
    return [Query("rules", r.get("alert") or r["record"], r["expr"]) for r in rules(path)]


def recording_rules(path: Path = ALERTS_YML) -> dict[str, str]:
    return {r["record"]: r["expr"] for r in rules(path) if "record" in r}


def to_promql(expr: str, values: dict[str, str] | None = None, rate_interval: str | None = None) -> str:
    """Substitute Grafana variables: built-ins from GRAFANA_BUILTINS (``rate_interval`` overrides
    ``$__rate_interval``), ``$name``/``${name}`` from ``values`` (default: regex match-all for every
    dashboard variable, "prometheus" for the datasource)."""
    values = {
        "instance": ".*",
        "topic": ".*",
        "datasource": "prometheus",
        **DASHBOARD_INTERVALS,
        **(values or {}),
    }
    builtins = {**GRAFANA_BUILTINS, **({"$__rate_interval": rate_interval} if rate_interval else {})}
    for key, sub in builtins.items():
        expr = expr.replace(key, sub)

    def repl(m: re.Match) -> str:
        name = m["braced"] or m["plain"]
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    expr = re.sub(r"\$\{(?P<braced>\w+)\}|\$(?P<plain>[a-zA-Z_]\w*)", repl, expr)
    assert "$" not in expr, expr
    return expr


_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
     "inf", "nan", "atan2"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, keywords, label names excluded).

    A tokenizer, not a parser: drops string literals, label matchers, range/subquery brackets, grouping
    label lists and numbers, then keeps identifiers that are not followed by ``(``.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:.])(\d+(ms|[smhdwy]))+(?![\w:])", " ", s)  # durations (offset 5m, @ ...)
    s = re.sub(r"(?<![\w:.])\d+(\.\d*)?([eE][+-]?\d+)?|(?<![\w:])\.\d+([eE][+-]?\d+)?|0x[0-9a-fA-F]+", " ", s)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        name = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def resolve_recording(names: set[str], recorded: dict[str, str] | None = None) -> set[str]:
    """Replace recording-rule outputs by the metric names their expressions use (recursively)."""
    recorded = recording_rules() if recorded is None else recorded
    out: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in recorded:
            todo.extend(metric_names(recorded[name]))
        else:
            out.add(name)
    return out


def base_metric_name(series_name: str, histogram_families: set[str]) -> str:
    """``x_bucket``/``x_sum``/``x_count`` -> ``x`` when ``x`` is a histogram family."""
    for suffix in ("_bucket", "_sum", "_count"):
        if series_name.endswith(suffix) and series_name[: -len(suffix)] in histogram_families:
            return series_name[: -len(suffix)]
    return series_name


def parse_exposition(text: str) -> tuple[set[str], set[str]]:
    """(every sample name, histogram family names) in a Prometheus text exposition."""
    samples: set[str] = set()
    histograms: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(None, 3)
            if kind.strip() == "histogram":
                histograms.add(family)
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return samples, histograms


def write_rules_file(path: Path, queries: list[Query]) -> Path:
    """A Prometheus rules file recording each query (for ``promtool check rules`` to parse them)."""
    recs = [{"record": f"dashboard:query_{i}", "expr": to_promql(q.expr)} for i, q in enumerate(queries)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recs}]}, sort_keys=False))
    return path


def promtool_check_rules(tmp_path: Path, queries: list[Query]) -> subprocess.CompletedProcess:
    promtool = which("promtool")
    f = write_rules_file(tmp_path / "queries.rules.yml", queries)
    return run([promtool, "check", "rules", str(f)])
