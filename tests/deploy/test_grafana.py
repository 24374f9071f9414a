"""deploy/grafana: provisioning files and the dashboard's structure (uid, schemaVersion, variables,
datasource, layout, the panels the issue asks for)."""

from __future__ import annotations

import re

from deploy_lib import (
    DASHBOARD_INTERVALS,
    GRAFANA_PROVISIONING,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    load_yaml,
    rules,
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
    # issue 19: model health
    "feature drift PSI per feature": r"^Feature drift \(PSI\) by feature$",
    "feature drift top-k": r"^Most drifted features$",
    "score PSI": r"^Score drift \(PSI\)$",
    "realized precision and recall": r"^Realized alert precision and recall$",
    "unmatched labels": r"^Unmatched labels$",
    "shadow disagreement rate": r"^Shadow disagreement rate$",
    "shadow score delta": r"^Shadow score delta$",
    "shadow vs served realized precision": r"^Realized precision: shadow vs served$",
    "explained rows/s": r"^Explained transactions$",
    "explain stage time": r"^Explain stage time$",
    "alert rate vs budget": r"^Alerts per 1,000 transactions vs budget$",
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
    window = variables["label_window"]
    assert window["type"] == "interval" and window["current"]["value"] == DASHBOARD_INTERVALS["label_window"]
    assert DASHBOARD_INTERVALS["label_window"] in window["query"].split(",")
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


def _panel(title: str) -> dict:
    (panel,) = [p for p in iter_panels(load_dashboard()) if p["title"] == title]
    return panel


def _rule(alert: str) -> dict:
    (rule,) = [r for r in rules() if r.get("alert") == alert]
    return rule


def _threshold_line(panel: dict) -> float:
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", panel["title"]
    (step,) = [s for s in defaults["thresholds"]["steps"] if s["value"] is not None]
    return float(step["value"])


def test_drift_panels_draw_the_alert_threshold():
    """The dashed line on the drift panels is the threshold the drift alerts fire at."""
    for title, alert in (
        ("Feature drift (PSI) by feature", "FraudliteFeatureDrift"),
        ("Score drift (PSI)", "FraudliteScoreDrift"),
    ):
        m = re.search(r"\)\s*>\s*([0-9.]+)\s*$", _rule(alert)["expr"].strip())
        assert m, alert
        assert _threshold_line(_panel(title)) == float(m.group(1)), title
    (t,) = _panel("Most drifted features")["targets"]
    assert t["expr"].startswith("topk(") and t["instant"], "top-k of the current PSI"


def test_shadow_panel_draws_the_disagreement_threshold():
    m = re.search(r">\s*([0-9.]+)\s*\n\s*and on \(\)", _rule("FraudliteShadowDisagreementHigh")["expr"])
    assert m
    assert _threshold_line(_panel("Shadow disagreement rate")) == float(m.group(1))


def test_budget_panel_shows_the_alerting_multiple():
    """The budget panel plots the budget and the multiple of it that FraudliteAlertBudgetExceeded fires at."""
    m = re.search(
        r">\s*([0-9.]+)\s*\*\s*max\(fraudlite_alert_budget_per_1k",
        _rule("FraudliteAlertBudgetExceeded")["expr"],
    )
    assert m
    exprs = [t["expr"] for t in _panel("Alerts per 1,000 transactions vs budget")["targets"]]
    assert any(e.startswith(f"{m.group(1)} * max(fraudlite_alert_budget_per_1k") for e in exprs), exprs
    assert "fraudlite:alerts_per_1k:rate1h" in exprs, "the series the alert compares"


def test_realized_quality_panels_use_the_label_window():
    """Late labels are sparse: precision and recall are taken over the label window, per model version."""
    for title in ("Realized alert precision and recall", "Realized precision: shadow vs served"):
        for t in _panel(title)["targets"]:
            assert "[$label_window]" in t["expr"] and "by (model_version)" in t["expr"], (title, t["refId"])
    shadow = _panel("Realized precision: shadow vs served")["targets"]
    assert {"fraudlite_label_outcomes_total", "fraudlite_shadow_label_outcomes_total"} <= {
        name for t in shadow for name in re.findall(r"fraudlite_\w+_total", t["expr"])
    }


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
