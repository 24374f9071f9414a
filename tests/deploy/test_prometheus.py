"""deploy/prometheus and every PromQL expression we ship: promtool check config / check rules / test rules,
dashboard queries parse, rules are documented and unit-tested, the Kubernetes PrometheusRule matches."""

from __future__ import annotations

import re
import runpy

import pytest
import yaml
from deploy_lib import (
    ALERTS_TEST_YML,
    ALERTS_YML,
    DEPLOY,
    K8S,
    PROMETHEUS_YML,
    README,
    RETRAIN_JOB,
    SCORER_JOB,
    Query,
    dashboard_queries,
    k8s_object,
    load_yaml,
    metric_names,
    promtool_check_rules,
    rule_queries,
    rules,
    run,
    to_promql,
    variable_queries,
    which,
)


def test_promtool_check_config():
    r = run([which("promtool"), "check", "config", str(PROMETHEUS_YML)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_check_rules():
    r = run([which("promtool"), "check", "rules", str(ALERTS_YML)])
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(rules())
    assert f"SUCCESS: {n} rules found" in r.stdout, r.stdout


def test_promtool_test_rules():
    """alerts_test.yml: every alert fires on its situation and stays quiet on the healthy one."""
    r = run([which("promtool"), "test", "rules", str(ALERTS_TEST_YML)], cwd=ALERTS_TEST_YML.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_firing_unit_test():
    tested = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST_YML)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts - tested == set(), (
        f"alerts without a firing case in alerts_test.yml: {sorted(alerts - tested)}"
    )


def test_dashboard_queries_parse(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 30
    r = promtool_check_rules(tmp_path, queries)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_variable_selectors_parse(tmp_path):
    selectors = [Query("dashboard", f"${name}", sel) for name, sel, _ in variable_queries()]
    assert {q.where for q in selectors} == {"$instance", "$topic"}
    r = promtool_check_rules(tmp_path, selectors)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rejects_a_broken_query(tmp_path):
    """The parse check above is real: a malformed expression fails it."""
    r = promtool_check_rules(tmp_path, [Query("dashboard", "broken", "sum(rate(fraudlite_alerts_total[5m])")])
    assert r.returncode != 0


def test_metric_name_extraction():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(fraudlite_end_to_end_latency_seconds_bucket{instance=~".*"}[1m])))'
    ) == {"fraudlite_end_to_end_latency_seconds_bucket"}
    assert metric_names(
        "(sum(rate(a_total[5m])) or vector(0)) == 0 and on () b:c:rate5m > 1e-3 unless max(c) by (le) offset 5m"
    ) == {"a_total", "b:c:rate5m", "c"}
    assert metric_names("time() - max(x_seconds > 0)") == {"x_seconds"}
    assert metric_names('process_resident_memory_bytes{job="fraudlite-scorer"} > 0.8 * 536870912') == {
        "process_resident_memory_bytes"
    }


def test_to_promql_substitutes_grafana_variables():
    assert to_promql('rate(x{instance=~"$instance",topic=~"${topic}"}[$__rate_interval])') == (
        'rate(x{instance=~".*",topic=~".*"}[1m])'
    )
    with pytest.raises(KeyError):
        to_promql('x{a=~"$nope"}')


def test_rules_are_labelled_and_documented():
    readme = README.read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.+?)\s*$", readme, flags=re.M)}
    for rule in rules():
        if "alert" not in rule:
            assert rule["record"].startswith("fraudlite:"), rule["record"]
            continue
        name = rule["alert"]
        assert name.startswith("Fraudlite"), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert ann["runbook"] == f"deploy/README.md#{name.lower()}", name
        assert name.lower() in anchors, f"deploy/README.md has no section for {name}"


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_rules_select_the_scrape_jobs():
    """Rules and dashboard select on the job names the scrape config (and the PodMonitors) define."""
    cfg = load_yaml(PROMETHEUS_YML)
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    assert {SCORER_JOB, RETRAIN_JOB} <= jobs
    for q in rule_queries() + dashboard_queries():
        for job in re.findall(r'job="([^"]+)"', q.expr):
            assert job in (SCORER_JOB, RETRAIN_JOB), f"{q.where}: unknown job {job!r}"
    for kind, name, job in (
        ("PodMonitor", "fraudlite-scorer", SCORER_JOB),
        ("PodMonitor", "fraudlite-retrain", RETRAIN_JOB),
    ):
        endpoints = k8s_object(kind, name)["spec"]["podMetricsEndpoints"]
        relabel = [r for e in endpoints for r in e.get("relabelings", []) if r.get("targetLabel") == "job"]
        assert relabel and relabel[0]["replacement"] == job, f"{kind}/{name} must set job={job}"


def test_compose_scrape_targets_exist():
    """Every static target in prometheus.yml is a compose service on the port its command serves metrics on."""
    compose = load_yaml(DEPLOY / "compose" / "docker-compose.yml")
    services = compose["services"]
    for job in load_yaml(PROMETHEUS_YML)["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                if host == "localhost":
                    continue
                assert host in services, f"{job['job_name']}: {host} is not a compose service"
                cmd = [str(c) for c in services[host]["command"]]
                assert cmd[cmd.index("--metrics-port") + 1] == port, f"{host} serves metrics on another port"
                assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0", f"{host} must listen on 0.0.0.0"


def test_memory_alert_matches_the_container_limits():
    """FraudliteScorerMemoryHigh fires at 80% of the limit that k8s and compose give the scorer."""
    (rule,) = [r for r in rules() if r.get("alert") == "FraudliteScorerMemoryHigh"]
    m = re.search(r">\s*0\.8\s*\*\s*(\d+)", rule["expr"])
    assert m, rule["expr"]
    limit = int(m.group(1))
    assert limit == 512 * 1024 * 1024
    container = k8s_object("Deployment", "fraudlite-scorer")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "512Mi"
    compose = load_yaml(DEPLOY / "compose" / "docker-compose.yml")
    for name in ("scorer-1", "scorer-2"):
        assert compose["services"][name]["mem_limit"] == "512m"


def test_k8s_prometheusrule_carries_alerts_yml():
    """deploy/k8s/prometheusrule.yaml is generated from alerts.yml and up to date."""
    rendered = runpy.run_path(str(K8S / "render_prometheusrule.py"))["render"]()
    shipped = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert shipped == rendered, (
        "deploy/k8s/prometheusrule.yaml is stale: run deploy/k8s/render_prometheusrule.py"
    )
    doc = yaml.safe_load(shipped)
    assert doc["spec"]["groups"] == load_yaml(ALERTS_YML)["groups"]


def test_k8s_prometheusrule_groups_pass_promtool(tmp_path):
    doc = k8s_object("PrometheusRule", "fraudlite")
    f = tmp_path / "k8s.rules.yml"
    f.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    r = run([which("promtool"), "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr
