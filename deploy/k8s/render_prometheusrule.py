"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml (the one source of the rules).

Run after editing alerts.yml:  .venv/bin/python deploy/k8s/render_prometheusrule.py
(tests/deploy checks that the two files carry the same groups).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUT = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/render_prometheusrule.py: edit alerts.yml,
# then re-run the script. The Prometheus Operator loads these rules; if your Prometheus selects rules by
# label (ruleSelector), add that label below.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    """The PrometheusRule manifest text for the current alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "fraudlite",
            "namespace": "fraudlite",
            "labels": {"app.kubernetes.io/name": "fraudlite", "app.kubernetes.io/part-of": "fraudlite"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
