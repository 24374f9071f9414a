"""deploy/compose and deploy/k8s: valid against the Compose specification and the Kubernetes schemas
(offline validators), custom resources against tests/deploy/schemas, and consistent with each other and
with the fraudlite command line."""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from deploy_lib import (
    COMPOSE_YML,
    GRAFANA_PROVISIONING,
    K8S,
    PROMETHEUS_YML,
    k8s_manifest_files,
    k8s_object,
    k8s_objects,
    load_yaml,
    parse_fraudlite,
    run,
)

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule",
}
#: Oldest Kubernetes we support (CronJob timeZone is GA since 1.27) and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", None)


# --- fraudlite command lines -------------------------------------------------------------------------


def fraudlite_lines(script: str) -> list[list[str]]:
    """Every ``fraudlite ...`` command in a shell script: continuations joined, compose's ``$$x`` -> ``X``,
    cut at the first pipe or command separator."""
    script = script.replace("\\\n", " ")
    out = []
    for line in script.splitlines():
        line = re.sub(r'"?\$\$\(?[^ "]*\)?"?', "X", line.strip())
        if line.startswith("fraudlite "):
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            tokens = list(lex)
            for i, tok in enumerate(tokens):
                if tok in ("|", "||", "&&", ";", "&"):
                    tokens = tokens[:i]
                    break
            out.append(tokens[1:])
    return out


# --- compose -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_YML)


def _check_jsonschema(path: Path, *args: str):
    pytest.importorskip("check_jsonschema", reason="pip package check-jsonschema (dev extra) not installed")
    return run([sys.executable, "-m", "check_jsonschema", *args, str(path)])


def test_compose_valid_against_compose_spec():
    r = _check_jsonschema(COMPOSE_YML, "--builtin-schema", "vendor.compose-spec")
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_validator_catches_a_typo(tmp_path, compose):
    bad = copy.deepcopy(compose)
    bad["services"]["scorer-1"]["comand"] = bad["services"]["scorer-1"].pop("command")
    f = tmp_path / "docker-compose.yml"
    f.write_text(yaml.safe_dump(bad))
    r = _check_jsonschema(f, "--builtin-schema", "vendor.compose-spec")
    assert r.returncode != 0 and "comand" in r.stdout + r.stderr


def test_compose_images_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
        if "build" not in svc:  # third-party images: a full version, not a moving minor tag
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin {image!r} to an exact version"


def test_compose_two_scorer_replicas(compose):
    services = compose["services"]
    scorers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "serve"}
    assert sorted(scorers) == ["scorer-1", "scorer-2"]
    tx_ids, host_ports = set(), set()
    for name, svc in scorers.items():
        cmd = [str(c) for c in svc["command"]]
        assert cmd[cmd.index("--registry") + 1] == "/registry"
        assert cmd[cmd.index("--group-id") + 1] == "fraudlite-scorer"
        assert "registry:/registry:ro" in svc["volumes"], f"{name} must mount the registry read-only"
        assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["seed"]["condition"] == "service_completed_successfully"
        tx_ids.add(cmd[cmd.index("--transactional-id") + 1])
        host_ports.add(svc["ports"][0].split(":")[0])
        assert svc["image"].startswith("fraudlite-serve:")
        assert svc["build"]["dockerfile"] == "deploy/docker/serve.Dockerfile"
    assert len(tx_ids) == 2 and len(host_ports) == 2


def test_compose_partitions_agree(compose):
    """Topic creation, the broker default and the scorers use one partition count."""
    partitions = compose["x-partitions"]
    services = compose["services"]
    assert services["kafka-init"]["environment"]["PARTITIONS"] == partitions
    assert str(services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == partitions
    for name in ("scorer-1", "scorer-2"):
        cmd = [str(c) for c in services[name]["command"]]
        assert cmd[cmd.index("--partitions") + 1] == partitions
    script = services["kafka-init"]["command"][0]
    for topic in ("transactions", "fraud-decisions", "fraud-alerts", "transactions-dlq", "fraud-labels",
                  "fraudlite-scorer-customer-state-changelog"):  # fmt: skip
        assert topic in script, f"kafka-init does not create {topic}"


def test_compose_retrain_scheduler(compose):
    svc = compose["services"]["retrain"]
    cmd = [str(c) for c in svc["command"]]
    assert cmd[:5] == ["retrain", "--registry", "/registry", "--data", "/store"]
    assert cmd[cmd.index("--schedule") + 1] == "0 3 * * *"
    assert svc["image"].startswith("fraudlite-train:")
    assert svc["build"]["dockerfile"] == "deploy/docker/train.Dockerfile"
    assert "registry:/registry" in svc["volumes"]


@pytest.mark.parametrize("service", ["scorer-1", "scorer-2", "replay", "collector", "retrain"])
def test_compose_commands_parse(compose, service):
    parse_fraudlite([str(c) for c in compose["services"][service]["command"]])


def test_compose_seed_script_commands_parse(compose):
    lines = fraudlite_lines(compose["services"]["seed"]["command"][0])
    assert [argv[0] for argv in lines] == ["generate", "retrain", "registry"]
    for argv in lines:
        parse_fraudlite(argv)


@pytest.mark.parametrize("service", ["seed", "kafka-init"])
def test_compose_shell_scripts_are_valid_bash(compose, service):
    svc = compose["services"][service]
    assert svc["entrypoint"][:2] == ["/bin/bash", "-ec"]
    script = svc["command"][0].replace("$$", "$")  # compose's escape for a literal $
    r = run(["bash", "-n", "-c", script])
    assert r.returncode == 0, r.stderr


def test_compose_prometheus_and_grafana_mounts(compose):
    services = compose["services"]
    prom_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    cfg = prom_mounts["../prometheus/prometheus.yml"]
    for rule_file in load_yaml(PROMETHEUS_YML)["rule_files"]:
        assert prom_mounts[f"../prometheus/{rule_file}"] == str(Path(cfg).parent / rule_file)
    graf_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert graf_mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "fraudlite.yml")["providers"][0]
    assert graf_mounts["../grafana/dashboards"] == provider["options"]["path"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/fraudlite.json"
    for src in list(prom_mounts) + list(graf_mounts):
        if src.startswith("../"):
            assert (COMPOSE_YML.parent / src).exists(), src


# --- kubernetes: schemas -------------------------------------------------------------------------------


def _core_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_objects() if (d["apiVersion"], d["kind"]) not in CRD_SCHEMAS]


def _id(item) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
@pytest.mark.parametrize("item", _core_objects(), ids=_id)
def test_k8s_valid_against_kubernetes_schemas(item, version):
    kv = pytest.importorskip(
        "kubernetes_validate", reason="pip package kubernetes-validate (dev extra) not installed"
    )
    _, doc = item
    kv.validate(doc, version or kv.latest_version(), strict=True)


def test_k8s_validator_catches_a_typo():
    kv = pytest.importorskip(
        "kubernetes_validate", reason="pip package kubernetes-validate (dev extra) not installed"
    )
    bad = copy.deepcopy(k8s_object("Deployment", "fraudlite-scorer"))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def _crd_validator(api_version: str, kind: str):
    import jsonschema
    from referencing import Registry, Resource

    def load(name: str) -> dict:
        return yaml.safe_load((SCHEMAS / f"{name}.schema.yaml").read_text(encoding="utf-8"))

    common = load("_common")
    schema = load(CRD_SCHEMAS[(api_version, kind)])
    registry = Registry().with_resource(
        "common", Resource.from_contents(common, default_specification=_draft())
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _draft():
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


@pytest.mark.parametrize(
    "item", [(p, d) for p, d in k8s_objects() if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS], ids=_id
)
def test_k8s_custom_resources_valid(item):
    _, doc = item
    validator = _crd_validator(doc["apiVersion"], doc["kind"])
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_custom_resource_schemas_catch_mistakes():
    so = k8s_object("ScaledObject", "fraudlite-scorer")
    validator = _crd_validator(so["apiVersion"], so["kind"])
    typo = copy.deepcopy(so)
    typo["spec"]["triggers"][0]["metadata"]["allowIdleConsumer"] = "false"
    assert not validator.is_valid(typo)
    unquoted = copy.deepcopy(so)
    unquoted["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False
    assert not validator.is_valid(unquoted)
    misplaced = copy.deepcopy(so)
    misplaced["spec"]["maxReplicas"] = misplaced["spec"].pop("maxReplicaCount")
    assert not validator.is_valid(misplaced)
    pm = k8s_object("PodMonitor", "fraudlite-scorer")
    bad = copy.deepcopy(pm)
    bad["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert not _crd_validator(pm["apiVersion"], pm["kind"]).is_valid(bad)


def test_kustomization_lists_every_manifest():
    kust = load_yaml(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    files = {p.name for p in k8s_manifest_files(include_optional=False)}
    assert listed == files, f"kustomization.yaml resources differ from deploy/k8s/*.yaml: {listed ^ files}"
    assert kust["namespace"] == "fraudlite"
    images = {i["name"] for i in kust["images"]}
    used = {c["image"].split(":")[0] for c in _containers()}
    assert used <= images


# --- kubernetes: consistency ---------------------------------------------------------------------------


def _pod_specs() -> list[tuple[str, dict]]:
    out = []
    for _, doc in k8s_objects():
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            out.append(
                (f"CronJob/{doc['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]["spec"])
            )
    return out


def _containers() -> list[dict]:
    return [c for _, pod in _pod_specs() for c in pod["containers"]]


def test_k8s_namespaced_objects_in_fraudlite_namespace():
    for path, doc in k8s_objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "fraudlite", _id((path, doc))


def test_k8s_pods_hardened():
    for where, pod in _pod_specs():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            assert not c["image"].endswith(":latest") and ":" in c["image"], where
            assert "memory" in c["resources"]["limits"] and "memory" in c["resources"]["requests"], where


def test_k8s_scorer_resources_and_probes():
    deploy = k8s_object("Deployment", "fraudlite-scorer")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["requests"]["memory"] == "256Mi"
    assert c["resources"]["limits"]["memory"] == "512Mi"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    args = c["args"]
    assert args[args.index("--metrics-port") + 1] == str(port)
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ("metrics", port), probe
        assert c[probe]["httpGet"]["path"] == "/metrics", probe
    ready = " ".join(c["readinessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{port}/metrics" in ready and "fraudlite_scorer_ready 1.0" in ready
    volumes = {m["name"]: m for m in c["volumeMounts"]}
    assert volumes["registry"]["mountPath"] == "/registry" and volumes["registry"]["readOnly"] is True
    assert args[args.index("--registry") + 1] == "/registry"
    strategy = deploy["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_k8s_keda_caps_replicas_at_partitions():
    config = k8s_object("ConfigMap", "fraudlite-config")["data"]
    so = k8s_object("ScaledObject", "fraudlite-scorer")
    spec = so["spec"]
    assert spec["maxReplicaCount"] == int(config["PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["scaleTargetRef"]["name"] == "fraudlite-scorer"
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["allowIdleConsumers"] == "false"
    assert meta["bootstrapServers"] == config["BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["GROUP_ID"]
    assert meta["topic"] == config["INPUT_TOPIC"]
    auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = k8s_object("Secret", "fraudlite-kafka")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "fraudlite-kafka" and ref["key"] in secret["stringData"], ref


def test_k8s_references_resolve():
    """ConfigMaps, Secret keys, PVCs and the ScaledObject target that pods refer to exist."""
    config = k8s_object("ConfigMap", "fraudlite-config")
    secret = k8s_object("Secret", "fraudlite-kafka")
    claims = {d["metadata"]["name"] for _, d in k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    for where, pod in _pod_specs():
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, where
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] == config["metadata"]["name"], where
            env_names = set(config["data"]) if c.get("envFrom") else set()
            for env in c.get("env", []):
                env_names.add(env["name"])
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "fraudlite-kafka" and ref["key"] in secret["stringData"], (
                        where,
                        ref,
                    )
            for arg in c["args"]:
                for var in re.findall(r"\$\((\w+)\)", arg):
                    assert var in env_names, f"{where}: $({var}) is not defined for the container"


def test_k8s_secret_template_is_plaintext_and_keys_match_fraudlite():
    secret = k8s_object("Secret", "fraudlite-kafka")["stringData"]
    assert secret["security-protocol"] == "PLAINTEXT" and secret["sasl-password"] == ""
    from fraudlite.kafkaio.security import ENV_PREFIX, KafkaSecurity

    fields = {f.upper() for f in KafkaSecurity.__dataclass_fields__}
    deploy = k8s_object("Deployment", "fraudlite-scorer")
    for env in deploy["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"].startswith(ENV_PREFIX):
            assert env["name"][len(ENV_PREFIX) :] in fields, f"fraudlite does not read {env['name']}"


@pytest.mark.parametrize("where", [w for w, _ in _pod_specs()])
def test_k8s_container_args_parse(where):
    config = k8s_object("ConfigMap", "fraudlite-config")["data"]
    values = {**config, "POD_NAME": "fraudlite-scorer-7d9f8-abcde"}
    pod = dict(_pod_specs())[where]
    for c in pod["containers"]:
        argv = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in c["args"]]
        parse_fraudlite(argv)


def test_k8s_retrain_cronjob():
    cron = k8s_object("CronJob", "fraudlite-retrain")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    compose = load_yaml(COMPOSE_YML)
    cmd = [str(c) for c in compose["services"]["retrain"]["command"]]
    assert cron["schedule"] == cmd[cmd.index("--schedule") + 1]
    (c,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "--once" in c["args"] and c["image"].startswith("fraudlite-train:")
    assert cron["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
