"""The cluster fixture itself: three nodes of one cluster, apart from the system node; a
quorum queue keeps its messages when its leader stops; a paused node leaves a serving
majority."""

import kombu
import pytest

from tests.support.rabbit_cluster import SYSTEM_PORTS


def _declare_quorum(uri, name):
    with kombu.Connection(uri, connect_timeout=5) as conn:
        conn.default_channel.queue_declare(
            name, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})


def _publish(uri, name, count):
    """Publish ``count`` persistent messages, each confirmed by the broker."""
    with kombu.Connection(uri, connect_timeout=5,
                          transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(conn.default_channel)
        for i in range(count):
            producer.publish({"n": i}, routing_key=name, delivery_mode=2, serializer="json")


def _drain(uri, name):
    got = []
    with kombu.Connection(uri, connect_timeout=5) as conn:
        queue = kombu.Queue(name, no_declare=True, channel=conn.default_channel)
        while (message := queue.get(no_ack=False)) is not None:
            got.append(message.payload["n"])
            message.ack()
    return got


def test_three_nodes_form_one_cluster_on_ports_of_their_own(cluster):
    names = sorted(node.name for node in cluster.nodes)
    assert [cluster.running_nodes(node) for node in cluster.nodes] == [names] * 3
    ports = [p for node in cluster.nodes for p in (node.port, node.dist_port)]
    assert len(set(ports)) == 6 and not set(ports) & SYSTEM_PORTS
    assert all(str(cluster.base) in str(node.dir) for node in cluster.nodes)


def test_quorum_queue_keeps_every_message_when_its_leader_stops(cluster, cluster_vhost):
    uri = cluster.amqp_uri(cluster_vhost)
    _declare_quorum(uri, "kept")
    _publish(uri, "kept", 50)
    leader = cluster.queue_leader(cluster_vhost, "kept")
    cluster.stop_node(leader)
    assert not cluster.nodes[leader].running
    others = [i for i in range(3) if i != leader]
    # a kombu connection given every node skips the stopped one
    assert sorted(_drain(cluster.amqp_uri(cluster_vhost, order=[leader, *others]), "kept")) \
        == list(range(50))
    assert cluster.queue_leader(cluster_vhost, "kept") in others
    cluster.start_node(leader)
    assert len(cluster.running_nodes()) == 3


def test_paused_node_leaves_the_majority_serving(cluster, cluster_vhost):
    _declare_quorum(cluster.amqp_uri(cluster_vhost), "majority")
    leader = cluster.queue_leader(cluster_vhost, "majority")
    with cluster.paused(leader):
        assert cluster.nodes[leader] not in cluster.live_nodes()
        others = [i for i in range(3) if i != leader]
        # the majority notices within net_ticktime (10 s here) and elects a new leader
        assert cluster.wait_leader_moved(cluster_vhost, "majority", leader) in others
        uri = cluster.amqp_uri(cluster_vhost, order=others)
        _publish(uri, "majority", 10)  # confirmed only once a new leader has them
        assert sorted(_drain(uri, "majority")) == list(range(10))
    assert len(cluster.running_nodes()) == 3  # thawed and back in the cluster


def test_unknown_queue_has_no_leader(cluster, cluster_vhost):
    from tests.support.rabbit_cluster import ClusterError

    with pytest.raises(ClusterError):
        cluster.queue_leader(cluster_vhost, "absent")
