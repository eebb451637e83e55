"""The three-node RabbitMQ cluster of the deployment files: compose's `ha` profile and the
Kubernetes StatefulSet, cross-checked with each other and with the code (AMQP_URI, queue
types). Schema validation of both files is in test_deploy_manifests.py."""

import re
from pathlib import Path

import yaml

from shared.broker_nodes import node_uris
from shared.queues import QUEUE_TYPES
from tests.unit.test_deploy_manifests import MANIFESTS, _load

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONF = ROOT / "deploy" / "rabbitmq" / "cluster.conf"


def _compose():
    return _load((ROOT / "docker-compose.yml").read_text())


def _conf_nodes(text):
    return re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", text, re.M)


def test_the_ha_profile_adds_two_nodes_that_join_the_first():
    services = _compose()["services"]
    nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    assert "profiles" not in services["rabbitmq"]  # node 1 runs with or without the profile
    for name in nodes[1:]:
        assert services[name]["profiles"] == ["ha"]
        assert services[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    for name in nodes:
        service = services[name]
        assert service["hostname"] == name  # the node name rabbit@<hostname> stays stable
        mounts = [v.split(":") for v in service["volumes"]]
        assert [str(CLUSTER_CONF.relative_to(ROOT)), "/etc/rabbitmq/conf.d/20-cluster.conf",
                "ro"] in [[m[0].removeprefix("./"), *m[1:]] for m in mounts]
        assert "RABBITMQ_ERLANG_COOKIE" in service["environment"]  # one cookie for all
    # a data volume each
    assert len({services[n]["volumes"][0].split(":")[0] for n in nodes}) == 3
    assert _conf_nodes(CLUSTER_CONF.read_text()) == [f"rabbit@{n}" for n in nodes]
    assert "pause_minority" in CLUSTER_CONF.read_text()


def test_every_compose_process_lists_every_node_first_node_first():
    compose = _compose()
    for name in ("identity", "auth", "authz", "audit", "gateway"):
        env = compose["services"][name]["environment"]
        hosts = [re.search(r"@([^:/]+):5672", uri).group(1) for uri in node_uris(env["AMQP_URI"])]
        assert hosts == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"], name
        assert env["AMQP_QUEUE_TYPE"] == "${AMQP_QUEUE_TYPE:-classic}"


def test_kubernetes_runs_three_rabbitmq_nodes_with_quorum_queues():
    [statefulset] = [d for _, d in MANIFESTS if d["kind"] == "StatefulSet"]
    assert statefulset["spec"]["replicas"] == 3
    [budget] = [d for _, d in MANIFESTS if d["kind"] == "PodDisruptionBudget"
                and d["metadata"]["name"] == "rabbitmq"]
    assert budget["spec"]["maxUnavailable"] == 1  # never lose the quorum to a drain
    [config] = [d for _, d in MANIFESTS if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "rabbitmq-config"]
    service = statefulset["spec"]["serviceName"]
    nodes = _conf_nodes(config["data"]["rabbitmq.conf"])
    assert nodes == [f"rabbit@rabbitmq-{i}.{service}.plinth.svc.cluster.local"
                     for i in range(3)]
    plinth = next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "plinth-config")
    assert plinth["data"]["AMQP_QUEUE_TYPE"] == "quorum" and "quorum" in QUEUE_TYPES


def test_the_example_secret_lists_every_node_and_has_what_the_nodes_read():
    secret = yaml.safe_load((ROOT / "deploy/k8s/secret.example.yaml").read_text())["stringData"]
    for name in ("identity", "auth", "authz", "audit", "gateway"):  # each process's own user
        hosts = [re.search(r"@([^:/]+):5672", uri).group(1)
                 for uri in node_uris(secret[f"{name}-amqp-uri"])]
        assert hosts == [f"rabbitmq-{i}.rabbitmq-nodes.plinth.svc" for i in range(3)], name
    [statefulset] = [d for _, d in MANIFESTS if d["kind"] == "StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    keys = [e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})]
    assert keys and set(keys) <= set(secret)
