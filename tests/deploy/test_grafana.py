"""deploy/grafana: provisioning files and the dashboard's structure (uid, schemaVersion, variables,
datasource, layout, the panels the issue asks for)."""

from __future__ import annotations

import re

from deploy_lib import (
    GRAFANA_PROVISIONING,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    load_yaml,
    variable_queries,
)

#: Panels the monitoring issue lists -> a regex that one panel title must match.
REQUIRED_PANELS = {
    "throughput by decision": r"^Throughput by decision$",
    "end-to-end latency p50/p95/p99": r"^End-to-end latency$",
    "per-stage time": r"^Time per batch by stage",
    "batch size": r"^Batch size$",
    "consumer lag per partition": r"^Consumer lag per partition$",
    "DLQ by reason": r"^DLQ by reason$",
    "alert rate": r"^Alert rate$",
    "score distribution over time": r"^Score distribution over time$",
    "model version": r"^Model served$",
    "model size": r"^Model size by file role$",
    "state entries": r"^Online state entries$",
    "state bytes": r"^Online state bytes$",
    "process RSS": r"^Process RSS$",
    "process CPU": r"^Process CPU$",
    "retrain runs": r"^Retrain runs by outcome$",
    "champion age": r"^Champion age$",
}


def test_dashboard_identity():
    d = load_dashboard()
    assert d["uid"] == "fraudlite-scoring"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"])
    assert d["schemaVersion"] >= 39
    assert d["title"] and "fraudlite" in d["tags"]
    assert "id" not in d or d["id"] is None, "a provisioned dashboard must not carry a database id"


def test_dashboard_templated_on_datasource_instance_topic():
    d = load_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("instance", "topic"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["multi"] and v["allValue"] == ".*", name
        assert v["datasource"]["uid"] == "${datasource}", name
    assert {(n, label) for n, _, label in variable_queries(d)} == {
        ("instance", "instance"),
        ("topic", "topic"),
    }
    # every scorer query is filtered by the instance variable; lag queries also by topic
    for q in dashboard_queries(d):
        if "fraudlite_champion" in q.expr or "fraudlite_retrain" in q.expr or q.expr.startswith("fraudlite:"):
            continue
        assert 'instance=~"$instance"' in q.expr, q.where
        if "fraudlite_consumer_lag_messages" in q.expr:
            assert 'topic=~"$topic"' in q.expr, q.where


def test_dashboard_panels_use_the_datasource_variable():
    for panel in iter_panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]
            assert t["expr"].strip(), panel["title"]


def test_dashboard_panel_ids_unique_and_layout_fits():
    panels = list(iter_panels(load_dashboard()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_has_the_required_panels():
    titles = [p["title"] for p in iter_panels(load_dashboard())]
    for what, pattern in REQUIRED_PANELS.items():
        assert any(re.search(pattern, t) for t in titles), f"no panel for {what}"
    assert len(set(titles)) == len(titles), "panel titles must be unique"


def test_latency_panel_shows_p50_p95_p99():
    (panel,) = [p for p in iter_panels(load_dashboard()) if p["title"] == "End-to-end latency"]
    exprs = [t["expr"] for t in panel["targets"]]
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q}, ") for e in exprs), q
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_score_heatmap_reads_histogram_buckets():
    (panel,) = [p for p in iter_panels(load_dashboard()) if p["title"] == "Score distribution over time"]
    assert panel["type"] == "heatmap"
    (t,) = panel["targets"]
    assert t["format"] == "heatmap" and "fraudlite_score_bucket" in t["expr"] and "by (le)" in t["expr"]


def test_provisioning_files():
    ds = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert ds["apiVersion"] == 1
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090" and prom["isDefault"]
    assert prom["jsonData"]["timeInterval"] == "15s"
    dash = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "fraudlite.yml")
    assert dash["apiVersion"] == 1
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
