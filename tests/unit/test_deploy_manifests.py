"""The deployment files, validated without a Docker engine or a cluster: against the Compose
Specification and Kubernetes schemas, and cross-checked against the code they name."""

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy import grants

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("identity", "auth", "authz", "audit")
HEALTH_PATHS = {"/health/live", "/health/ready", "/health"}
KUBERNETES_VERSION = "1.33"


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader without nameko's ${VAR} substitution, which nameko registers on SafeLoader
    itself when any code sets up its config parser: compose's ${VAR:-x} must stay text."""


def _load(text):
    _PlainLoader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "!env_var"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return yaml.load(text, Loader=_PlainLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def compose():
    document = _load((ROOT / "docker-compose.yml").read_text())
    assert document["x-plinth-image"]["image"] == "plinth:${PLINTH_VERSION:-latest}"
    return document


def _compose_schema():
    # the Compose Specification's JSON schema, as vendored by check-jsonschema
    path = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    return json.loads(path.read_text())


def _validate_in_a_clean_interpreter(document):
    # other tests (schemathesis) alter jsonschema's global state; check in a fresh process
    script = ("import json, sys, jsonschema; from importlib import resources; "
              "schema = json.loads((resources.files('check_jsonschema') / "
              "'builtin_schemas/vendor/compose-spec.json').read_text()); "
              "jsonschema.validate(json.load(sys.stdin), schema)")
    return subprocess.run([sys.executable, "-c", script], input=json.dumps(document),
                          capture_output=True, text=True, timeout=60)


def test_compose_file_follows_the_compose_specification(compose):
    result = _validate_in_a_clean_interpreter(compose)
    assert result.returncode == 0, result.stderr[-3000:]


def test_compose_schema_check_can_fail(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["identity"]["restart"] = ["not", "a", "string"]
    result = _validate_in_a_clean_interpreter(broken)
    assert result.returncode != 0 and "ValidationError" in result.stderr
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _compose_schema())


def test_every_long_running_compose_service_has_a_healthcheck_and_restart_policy(compose):
    for name, service in compose["services"].items():
        if name in ("migrate", "broker-users"):  # one-shot jobs
            assert service["restart"] == "no"
            continue
        assert "healthcheck" in service, name
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name


def test_platform_services_wait_for_healthy_dependencies_and_scale(compose):
    for name in (*SERVICES, "gateway"):
        service = compose["services"][name]
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        for infra in ("rabbitmq", "postgres", "consul"):
            assert conditions[infra] == "service_healthy", (name, infra)
        assert conditions["migrate"] == "service_completed_successfully"
        if name != "gateway":
            assert "ports" not in service, f"{name} must not bind a host port (it is scaled)"
    gateway = compose["services"]["gateway"]["depends_on"]
    assert all(gateway[s]["condition"] == "service_healthy" for s in (*SERVICES, "redis"))


def test_compose_roles_exist_in_the_code(compose):
    for name in SERVICES:
        [role] = compose["services"][name]["command"]
        assert (ROOT / "config" / f"{role}.yaml").exists()
        assert (ROOT / role / "service.py").exists()
    assert compose["services"]["gateway"]["command"] == ["gateway"]
    assert compose["services"]["migrate"]["command"] == ["migrate"]
    assert (ROOT / "gateway" / "wsgi.py").exists()
    init = compose["services"]["postgres"]["volumes"][1].split(":")[0]
    assert (ROOT / init).exists()


def test_every_required_compose_variable_is_in_env_example(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example, required - example


def test_no_secret_is_baked_into_the_image():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2, "multi-stage build"
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in dockerfile
    for line in re.findall(r"^(?:ENV|ARG) .*$", dockerfile, re.M):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", line), line
    for source in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", dockerfile, re.M):
        if source.startswith("--from"):
            continue
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_entrypoint_refuses_an_unknown_role_and_is_valid_shell():
    script = ROOT / "deploy" / "docker-entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    result = subprocess.run(["sh", str(script), "nosuchrole"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 64 and "unknown role" in result.stderr


def test_grants_leave_audit_entries_append_only():
    statements = list(grants.statements("audit", "audit_app", ("entries",)))
    assert 'REVOKE UPDATE, DELETE, TRUNCATE ON "audit"."entries" FROM "audit_app"' in statements
    assert all('"identity"' not in s for s in statements)


def _manifests():
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


MANIFESTS = list(_manifests())


@pytest.mark.parametrize("name, doc", MANIFESTS,
                         ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in MANIFESTS])
def test_kubernetes_manifest_matches_its_schema(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_check_can_fail():
    deployment = next(d for _, d in MANIFESTS if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())["resources"])
    files = {p.name for p in (ROOT / "deploy/k8s").glob("*.yaml")}
    assert listed == files - {"kustomization.yaml", "secret.example.yaml"}


def _containers():
    for _, doc in MANIFESTS:
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def test_every_deployment_is_probed_limited_scaled_and_drained():
    deployments = {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == "Deployment"
                   and d["metadata"]["name"] != "jaeger"}  # infrastructure: tested below
    hpas = {d["spec"]["scaleTargetRef"]["name"] for _, d in MANIFESTS
            if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(deployments) == {*SERVICES, "gateway"}
    assert hpas == set(deployments)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 30
        [container] = pod["containers"]
        assert container["args"] == [name]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        port = container["ports"][0]["containerPort"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] in HEALTH_PATHS
            assert container[probe]["httpGet"]["port"] in ("http", port)
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"


def test_health_paths_named_in_manifests_are_served_by_the_kernel():
    kernel = (ROOT / "shared" / "service.py").read_text()
    for path in ("/health/live", "/health/ready", "/health"):
        assert f'"{path}"' in kernel
    gateway = "".join(p.read_text() for p in (ROOT / "gateway").glob("*.py"))
    for path in ("/health/live", "/health/ready"):
        assert path in gateway


def test_secrets_and_config_referenced_by_pods_are_declared():
    secret = next(d for _, d in MANIFESTS if d["kind"] == "Secret")
    configmap = next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap")
    for doc, container in _containers():
        for ref in container.get("envFrom", []):
            assert ref["configMapRef"]["name"] == configmap["metadata"]["name"]
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"], (doc["metadata"]["name"], ref["key"])
    assert configmap["data"]["PORT"] == "8000"


def test_the_ingress_reaches_the_gateway_and_the_gateway_trusts_exactly_that_proxy():
    [ingress] = [d for _, d in MANIFESTS if d["kind"] == "Ingress"]
    [service] = [d for _, d in MANIFESTS
                 if d["kind"] == "Service" and d["metadata"]["name"] == "gateway"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # reached through it only
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backends = [p["backend"]["service"] for rule in ingress["spec"]["rules"]
                for p in rule["http"]["paths"]]
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert backends and all(b["name"] == "gateway" and b["port"]["name"] in ports
                            for b in backends)
    configmap = next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap")
    # ingress-nginx replaces X-Forwarded-For with the address it sees: one hop to trust
    assert configmap["data"]["GATEWAY_TRUSTED_PROXIES"] == "1"
    assert "${GATEWAY_TRUSTED_PROXIES:" in (ROOT / "config" / "gateway.yaml").read_text()


def test_compose_publishes_the_gateway_directly_and_so_trusts_no_proxy(compose):
    gateway = compose["services"]["gateway"]
    assert gateway["ports"] == ["${GATEWAY_PORT:-8000}:8000"]
    assert gateway["environment"]["GATEWAY_TRUSTED_PROXIES"] == "${GATEWAY_TRUSTED_PROXIES:-0}"


def _otel_endpoint_host_port(value):
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", value)
    assert match, value
    return match.group(1), int(match.group(2))


def test_kubernetes_runs_jaeger_with_otlp_and_points_every_pod_at_it():
    jaeger = next(d for _, d in MANIFESTS if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "jaeger")
    service = next(d for _, d in MANIFESTS if d["kind"] == "Service"
                   and d["metadata"]["name"] == "jaeger")
    [container] = jaeger["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("jaegertracing/all-in-one:")
    assert {"name": "COLLECTOR_OTLP_ENABLED", "value": "true"} in container["env"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert all(container[p]["httpGet"]["port"] == "admin"
               for p in ("livenessProbe", "readinessProbe", "startupProbe"))
    configmap = next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap")
    host, port = _otel_endpoint_host_port(configmap["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == service["metadata"]["name"]
    assert port in {p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-http"}
    # the service name comes from each process's config, never one name for every pod
    assert "OTEL_SERVICE_NAME" not in configmap["data"]
    for doc, container in _containers():
        if doc["metadata"]["name"] == "jaeger":
            continue
        assert {"configMapRef": {"name": "plinth-config"}} in container.get("envFrom", []), \
            doc["metadata"]["name"]


def test_compose_runs_jaeger_with_otlp_and_points_every_process_at_it(compose):
    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"]
    for name in (*SERVICES, "gateway"):
        env = compose["services"][name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
            "${OTEL_EXPORTER_OTLP_ENDPOINT:-http://jaeger:4318}", name
        assert "OTEL_SERVICE_NAME" not in env
        # tracing is optional: nothing waits for the trace backend
        assert "jaeger" not in compose["services"][name]["depends_on"]
