"""End to end: the shipped dashboard and rules against a real Prometheus scraping a real scorer and a real
retrain scheduler, with traffic flowing on the embedded broker.

One stack per module (about two minutes):

* a transactions file ending today and a registry whose champion the product's own
  ``fraudlite retrain --once --alert-budget`` trained on it (so it carries calibration, a training
  reference and an alert budget), plus a second model from ``fraudlite train`` as the shadow;
* ``fraudlite serve --registry`` (as deployed) with ``--shadow-model`` and the labels topic (late labels
  joined to decisions), and ``fraudlite retrain --schedule "* * * * *"`` (so a scheduled run completes
  within a minute or two and the "last success" panels get data);
* ``fraudlite replay`` at a steady rate with its late labels, plus a trickle of invalid messages;
* ``prometheus`` on a free port scraping both as jobs ``fraudlite-scorer`` / ``fraudlite-retrain`` every
  second and evaluating ``deploy/prometheus/alerts.yml`` every second, with every ``for:`` removed so an
  alert's condition shows as firing at once (the expressions are the shipped ones, untouched).

Checks: every metric name the dashboard and the rules use is in a live ``/metrics`` scrape; the k8s
readiness probe and the compose healthcheck pass against the live scorer; every dashboard query and
variable returns data through Prometheus's HTTP API (the model-health rows included: drift, realized
quality from late labels, the shadow, reason codes, the alert budget); the model-watch series are live
(a PSI gauge for every feature, non-zero label outcomes, shadow and explained counts, the budget); every
rule evaluates without error; poison messages make FraudliteDLQRateHigh fire; stopping the scorer makes
FraudliteScorerDown fire.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from deploy_lib import (
    ALERTS_YML,
    COMPOSE_YML,
    PROMETHEUS_SYNTHETIC,
    RETRAIN_JOB,
    RETRAIN_METRICS,
    SCORER_JOB,
    base_metric_name,
    dashboard_queries,
    free_port,
    k8s_object,
    load_yaml,
    metric_names,
    parse_exposition,
    resolve_recording,
    rule_queries,
    to_promql,
    variable_queries,
    which,
)
from live_support import PoisonProducer, Proc, fraudlite, http_get, run_checked, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE_INTERVAL = "15s"  # $__rate_interval for a 1 s scrape interval
REPLAY_RATE = 100  # tx/s: the 27k-row file lasts ~4.5 minutes, longer than the module
ALERT_BUDGET_PER_1K = 5.0  # the champion's and the shadow's: ~0.5 alerts/s at REPLAY_RATE
SETUP_TIMEOUT_S = 90


# --- the stack ----------------------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, Proc] = {}
        self.poison: PoisonProducer | None = None
        self.shadow: Path | None = None
        self.scorer_port = free_port()
        self.retrain_port = free_port()
        self.prom_port = free_port()

    @property
    def scorer_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.scorer_port}/metrics"

    @property
    def retrain_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.retrain_port}/metrics"

    def start(self, name: str, cmd: list[str]) -> Proc:
        self.procs[name] = Proc(name, cmd, self.tmp)
        return self.procs[name]

    def close(self) -> None:
        if self.poison is not None:
            self.poison.stop()
        for p in reversed(list(self.procs.values())):
            p.stop()

    # Prometheus HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        body = json.loads(http_get(url, timeout=10))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def firing(self, alertname: str) -> list[dict]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]


def _e2e_rules(path: Path) -> Path:
    """alerts.yml with every ``for`` removed and every group evaluated each second; expressions untouched."""
    doc = load_yaml(ALERTS_YML)
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule.pop("for", None)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory) -> Iterator[Stack]:
    prometheus_bin = which("prometheus")
    tmp = tmp_path_factory.mktemp("e2e")
    s = Stack(tmp)
    try:
        # Data ending today (the scheduler's runs use today's date) and a first champion.
        days = 45
        start = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat()
        data = tmp / "transactions.parquet"
        run_checked(
            fraudlite("-q", "generate", "--out", str(data), "--customers", "300", "--terminals", "600",
                      "--days", str(days), "--start-date", start, "--seed", "7"),
            "fraudlite generate",
        )  # fmt: skip
        # A recipe without stages and a loose AP budget: every run registers a model quickly, whatever the
        # compression search would make of this small dataset (model quality is not what is tested here).
        recipe = tmp / "recipe.toml"
        recipe.write_text('[export]\nprecision = "fp32"\nstorage = "fp32"\n')
        registry = tmp / "registry"
        retrain_args = ["--registry", str(registry), "--data", str(data), "--train-days", "21", "--max-epochs", "2",
                        "--recipe", str(recipe), "--max-ap-drop", "0.99",
                        "--alert-budget", str(ALERT_BUDGET_PER_1K)]  # fmt: skip
        first = json.loads(
            run_checked(fraudlite("-q", "retrain", *retrain_args, "--once"), "fraudlite retrain --once")
        )
        assert first["decision"] == "promoted", f"no first champion: {first['reason']}"
        # The shadow: another model on another window and seed (same feature spec), never registered.
        today = datetime.now(UTC).date()
        s.shadow = tmp / "shadow"
        run_checked(
            fraudlite("-q", "train", "--data", str(data), "--train-start", (today - timedelta(days=35)).isoformat(),
                      "--train-end", (today - timedelta(days=8)).isoformat(), "--max-epochs", "2", "--seed", "11",
                      "--alert-budget", str(ALERT_BUDGET_PER_1K), "--out", str(s.shadow)),
            "fraudlite train (shadow)",
        )  # fmt: skip

        suffix = os.urandom(3).hex()
        topics = {
            name: f"e2e-{name}-{suffix}" for name in ("tx", "decisions", "alerts", "dlq", "labels", "shadow")
        }
        s.topics = topics
        scorer = s.start(
            "scorer",
            fraudlite("serve", "--registry", str(registry), "--bootstrap-servers", broker.bootstrap,
                      "--input-topic", topics["tx"], "--output-topic", topics["decisions"],
                      "--alerts-topic", topics["alerts"], "--dlq-topic", topics["dlq"],
                      "--labels-topic", topics["labels"], "--group-id", f"e2e-{suffix}", "--partitions", "4",
                      "--shadow-model", str(s.shadow), "--shadow-topic", topics["shadow"],
                      "--metrics-host", "127.0.0.1", "--metrics-port", str(s.scorer_port),
                      "--reload-interval", "1"),
        )  # fmt: skip
        retrain = s.start(
            "retrain",
            fraudlite("retrain", *retrain_args, "--schedule", "* * * * *",
                      "--metrics-host", "127.0.0.1", "--metrics-port", str(s.retrain_port)),
        )  # fmt: skip
        wait_for(
            lambda: b"\nfraudlite_scorer_ready 1.0" in http_get(s.scorer_metrics_url),
            SETUP_TIMEOUT_S,
            "the scorer to be ready",
            [scorer],
        )
        wait_for(
            lambda: http_get(s.retrain_metrics_url), SETUP_TIMEOUT_S, "retrain scheduler metrics", [retrain]
        )
        s.start(
            "replay",
            fraudlite("replay", "--data", str(data), "--bootstrap-servers", broker.bootstrap,
                      "--topic", topics["tx"], "--rate", str(REPLAY_RATE),
                      "--labels-topic", topics["labels"], "--label-delay-days", "7"),
        )  # fmt: skip
        s.poison = PoisonProducer(broker.bootstrap, topics["tx"], rate=0.5)  # ~0.3%: below the DLQ alert
        s.poison.start()

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(_e2e_rules(tmp / "alerts.e2e.yml"))],
            "scrape_configs": [
                {"job_name": SCORER_JOB, "static_configs": [{"targets": [f"127.0.0.1:{s.scorer_port}"]}]},
                {"job_name": RETRAIN_JOB, "static_configs": [{"targets": [f"127.0.0.1:{s.retrain_port}"]}]},
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        prom = s.start(
            "prometheus",
            [prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{s.prom_port}", "--log.level=warn"],
        )  # fmt: skip
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{s.prom_port}/-/ready"), SETUP_TIMEOUT_S, "Prometheus", [prom]
        )
        yield s
    finally:
        s.close()


def _procs(stack: Stack, *names: str) -> list[Proc]:
    return [stack.procs[n] for n in names if n in stack.procs]


# --- metric names --------------------------------------------------------------------------------------


def used_metric_names() -> dict[str, set[str]]:
    """metric name -> where it is used (dashboard panels, variables, rules), recording rules resolved."""
    used: dict[str, set[str]] = {}
    queries = [(q.where, q.expr) for q in dashboard_queries() + rule_queries()]
    queries += [(f"variable ${name}", sel) for name, sel, _ in variable_queries()]
    for where, expr in queries:
        for name in resolve_recording(metric_names(to_promql(expr))):
            used.setdefault(name, set()).add(where)
    return used


def exported_names(url: str) -> set[str]:
    samples, histograms = parse_exposition(http_get(url).decode())
    return {base_metric_name(s, histograms) for s in samples} | histograms | samples


def test_every_metric_used_is_exported_by_a_running_process(stack):
    """Dashboard + rules use only names a live scorer or retrain scheduler exports (or Prometheus adds).

    Some series appear only once the scorer has worked a little (consumer lag is published every few
    seconds after an assignment; feature drift once its window holds 2,000 rows, ~20 s of replay at
    REPLAY_RATE after the scorer is ready), so the scrapes are repeated for a while before reporting
    what is missing.
    """
    used = used_metric_names()
    deadline = time.monotonic() + 120
    while True:
        scorer = exported_names(stack.scorer_metrics_url)
        retrain = exported_names(stack.retrain_metrics_url)
        missing = {n: sorted(w) for n, w in used.items() if n not in scorer | retrain | PROMETHEUS_SYNTHETIC}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"used but exported by neither the scorer nor the retrain scheduler: {missing}"
    # the retrain names the dashboard relies on are the scheduler's (not only the scorer's)
    assert RETRAIN_METRICS <= retrain, f"the scheduler does not export {sorted(RETRAIN_METRICS - retrain)}"
    assert RETRAIN_METRICS <= set(used), "every retrain metric is shown or alerted on"
    scorer_only = {n for n in used if n.startswith("fraudlite_") and n not in RETRAIN_METRICS}
    assert scorer_only <= scorer


def test_every_exported_scorer_metric_is_used():
    """The reverse direction, as a report: scorer metrics neither charted nor alerted on."""
    from prometheus_client import CollectorRegistry

    from fraudlite.streaming.metrics import ScorerMetrics

    registry = CollectorRegistry()
    ScorerMetrics(registry, process=False)
    exported = {m.name for m in registry.collect()}
    used = used_metric_names()
    used_bases = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}
    unused = {n for n in exported if re.sub(r"_total$", "", n) not in used_bases}
    # Deliberately not on the dashboard: per-partition restore time is in the scorer's log.
    assert unused <= {"fraudlite_state_restore_seconds"}, sorted(unused)


# --- probes --------------------------------------------------------------------------------------------


def _with_port(command: list[str], port: int) -> list[str]:
    return [
        sys.executable if c == "python" else c.replace("127.0.0.1:9108", f"127.0.0.1:{port}") for c in command
    ]


def test_k8s_readiness_probe_passes_on_a_ready_scorer(stack):
    container = k8s_object("Deployment", "fraudlite-scorer")["spec"]["template"]["spec"]["containers"][0]
    cmd = _with_port(container["readinessProbe"]["exec"]["command"], stack.scorer_port)
    assert subprocess.run(cmd, timeout=10).returncode == 0


def test_k8s_readiness_probe_fails_without_a_scorer():
    container = k8s_object("Deployment", "fraudlite-scorer")["spec"]["template"]["spec"]["containers"][0]
    cmd = _with_port(container["readinessProbe"]["exec"]["command"], free_port())
    assert subprocess.run(cmd, timeout=10, capture_output=True).returncode != 0


def test_compose_healthcheck_passes_on_a_ready_scorer(stack):
    test = load_yaml(COMPOSE_YML)["x-serve"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert subprocess.run(_with_port(test[1:], stack.scorer_port), timeout=10).returncode == 0


# --- Prometheus ----------------------------------------------------------------------------------------


def test_prometheus_scrapes_scorer_and_scheduler(stack):
    def both_up():
        result = stack.query("up")
        return {r["metric"]["job"] for r in result if r["value"][1] == "1"} >= {SCORER_JOB, RETRAIN_JOB}

    wait_for(both_up, 30, "both targets up", _procs(stack, "prometheus"))


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_every_rule_evaluates(stack):
    def evaluated():
        rules = [r for g in stack.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for(evaluated, 30, "every rule evaluated", _procs(stack, "prometheus"))
    shipped = {r.get("alert") or r["record"] for g in load_yaml(ALERTS_YML)["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == shipped
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok" or r.get("lastError")}
    assert not bad, bad
    # the recording rules produce series from live data
    for record in (
        "fraudlite:transactions_scored:rate5m",
        "fraudlite:alert_ratio:rate15m",
        "fraudlite:alert_ratio:rate1d",
    ):
        wait_for(lambda r=record: stack.query(r), 30, f"recording rule {record}")
    # Healthy traffic: once Prometheus has a few samples (a rate needs two; without `for:` an alert fires
    # on its first evaluation), none of the scorer's failure alerts fires.
    quiet = {"FraudliteDLQRateHigh", "FraudliteScorerDown", "FraudliteKafkaUnreachable",
             "FraudliteNoTransactionsScored", "FraudliteModelReloadFailed", "FraudliteScorerMemoryHigh"}  # fmt: skip

    def firing_quiet() -> set[str]:
        return {
            a["labels"]["alertname"] for a in stack.api("alerts")["alerts"] if a["state"] == "firing"
        } & quiet

    wait_for(lambda: not firing_quiet(), 20, "healthy traffic to fire no failure alert")
    time.sleep(3)  # three more evaluations
    assert not firing_quiet()


def test_every_dashboard_query_returns_data(stack):
    """Each panel query returns at least one finite sample; retrain panels once a scheduled run completed."""
    queries = {q.where: to_promql(q.expr, rate_interval=RATE_INTERVAL) for q in dashboard_queries()}
    pending = dict(queries)

    def all_have_data():
        for where, expr in list(pending.items()):
            if _finite(stack.query(expr)):
                del pending[where]
        return not pending

    try:
        # the first scheduled retrain fires at the next minute and takes ~30 s (more with compression)
        wait_for(
            all_have_data, 300, "data for every dashboard query", _procs(stack, "scorer", "prometheus"), 2
        )
    except pytest.fail.Exception:
        raise AssertionError(
            "dashboard queries without data:\n"
            + "\n".join(f"  {w}: {e}" for w, e in pending.items())
            + "\n"
            + "\n".join(p.tail(15) for p in stack.procs.values())
        ) from None
    throughput = stack.query(queries["Scored [A]"])
    assert float(throughput[0]["value"][1]) > 0, "traffic is being scored"
    completed = stack.query('sum(fraudlite_retrain_runs_total{outcome=~"promoted|rejected"})')
    assert float(completed[0]["value"][1]) >= 1, "a scheduled retrain run completed"


def test_model_watch_series_are_live(stack):
    """What the model-health panels show is real: a PSI gauge for every model input, label outcomes joined
    from the late labels, the shadow scoring (another version), reason codes given, the champion's budget."""
    from fraudlite.modeldir import ModelDir

    shadow = ModelDir.load(stack.shadow)
    names = set(shadow.spec.names)  # the champion's spec too: a shadow with another spec is refused

    def positive(expr: str) -> bool:
        return any(float(r["value"][1]) > 0 for r in stack.query(expr))

    checks = {
        # over a few minutes: a hot swap (the scheduler promotes every minute) clears the gauges until the
        # new model's window holds enough rows again
        "a PSI gauge for every feature": lambda: (
            {r["metric"]["feature"] for r in stack.query("last_over_time(fraudlite_feature_drift_psi[5m])")}
            == names
        ),
        "labelled alerts": lambda: positive(
            'sum(fraudlite_label_outcomes_total{outcome=~"true_positive|false_positive"})'
        ),
        "labelled non-alerts": lambda: positive(
            'sum(fraudlite_label_outcomes_total{outcome="true_negative"})'
        ),
        "shadow label outcomes": lambda: positive("sum(fraudlite_shadow_label_outcomes_total)"),
        "shadow-scored transactions": lambda: positive("sum(fraudlite_shadow_scored_total)"),
        "explained transactions": lambda: positive("sum(fraudlite_explained_total)"),
        "the alert budget": lambda: any(
            float(r["value"][1]) == ALERT_BUDGET_PER_1K for r in stack.query("fraudlite_alert_budget_per_1k")
        ),
    }
    pending = dict(checks)

    def all_live():
        for what, check in list(pending.items()):
            if check():
                del pending[what]
        return not pending

    try:
        wait_for(all_live, 120, "the model-watch series", _procs(stack, "scorer", "prometheus"), 2)
    except pytest.fail.Exception:
        raise AssertionError(
            f"not live: {sorted(pending)}\n" + "\n".join(p.tail(15) for p in stack.procs.values())
        ) from None
    (info,) = stack.query("fraudlite_shadow_model_info")
    assert info["metric"]["version"] == shadow.version
    served = {r["metric"]["version"] for r in stack.query("fraudlite_model_info")}
    assert shadow.version not in served, "the shadow is not the served model"
    outcomes = {r["metric"]["model_version"] for r in stack.query("fraudlite_label_outcomes_total")}
    assert outcomes and shadow.version not in outcomes, "served outcomes are counted for the served versions"


def test_dashboard_variables_have_values(stack):
    for name, selector, label in variable_queries():
        series = stack.api("series", **{"match[]": to_promql(selector)})
        values = {s[label] for s in series if label in s}
        assert values, f"variable ${name}: no values for {label} in {selector}"
    series = stack.api("series", **{"match[]": "fraudlite_consumer_lag_messages"})
    assert {s["topic"] for s in series} == {stack.topics["tx"]}


def test_dlq_alert_fires_on_poison_messages(stack):
    assert stack.poison is not None and stack.poison.is_alive()
    assert not stack.firing("FraudliteDLQRateHigh")
    stack.poison.rate = 60.0  # ~30% of the input
    alerts = wait_for(
        lambda: stack.firing("FraudliteDLQRateHigh"),
        60,
        "FraudliteDLQRateHigh to fire",
        _procs(stack, "scorer"),
    )
    (alert,) = alerts
    assert alert["labels"]["severity"] == "warning"
    assert "of input messages go to the DLQ" in alert["annotations"]["summary"]
    reasons = {
        r["metric"]["reason"] for r in stack.query("sum by (reason) (fraudlite_dlq_messages_total) > 0")
    }
    assert {"bad_json", "missing_field", "not_object"} <= reasons
    stack.poison.rate = 0.5


def test_scorer_down_alert_fires_when_the_scorer_stops(stack):
    scorer = stack.procs["scorer"]
    scorer.stop()
    assert scorer.popen.returncode == 0, scorer.tail()  # graceful SIGTERM shutdown
    alerts = wait_for(lambda: stack.firing("FraudliteScorerDown"), 30, "FraudliteScorerDown to fire")
    assert alerts[0]["labels"]["job"] == SCORER_JOB and alerts[0]["labels"]["severity"] == "critical"
