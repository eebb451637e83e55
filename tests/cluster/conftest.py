"""The cluster tier: one three-node RabbitMQ cluster for the whole tier (starting one takes
~25 s), each test on its own vhost; a test that stops or pauses a node leaves the cluster
whole again for the next (``cluster`` restores it after every test)."""

import uuid

import pytest

from tests.support.rabbit_cluster import RabbitCluster, available


@pytest.fixture(scope="session")
def rabbit_cluster():
    reason = available()
    if reason:
        pytest.skip(f"no RabbitMQ cluster here: {reason}")
    with RabbitCluster(name="tier") as cluster:
        yield cluster


@pytest.fixture
def cluster(rabbit_cluster):
    yield rabbit_cluster
    for node in rabbit_cluster.nodes:
        if node.paused:
            rabbit_cluster.resume_node(node.index, heal=False)
            rabbit_cluster.stop_node(node.index)
        if not node.running:
            rabbit_cluster.start_node(node.index, wait=False)
    for node in rabbit_cluster.nodes:
        rabbit_cluster._await_startup(node)
    rabbit_cluster.wait_healthy()


@pytest.fixture
def cluster_vhost(cluster):
    vhost = f"plinth_cluster_{uuid.uuid4().hex[:10]}"
    cluster.add_vhost(vhost)
    yield vhost
    cluster.delete_vhost(vhost)
