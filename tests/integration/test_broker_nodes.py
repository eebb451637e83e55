"""A multi-node AMQP_URI whose first node is down: every kind of client connects to the next
one (the cluster tier, tests/cluster, covers a node lost mid-connection)."""

import socket
import uuid

import kombu
import pytest

from shared.publishing import ConfirmedPublisher
from shared.replies import ReplySender
from shared.rpc_client import RpcClient, ServiceNotRunning


def _dead_node(amqp_uri):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    vhost = amqp_uri.rsplit("/", 1)[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


@pytest.fixture
def two_nodes(amqp_uri):
    """The test's vhost behind a node that refuses connections, then the real one."""
    return f"{_dead_node(amqp_uri)};{amqp_uri}"


@pytest.fixture
def inbox(amqp_uri):
    name = f"inbox-{uuid.uuid4().hex[:8]}"
    with kombu.Connection(amqp_uri) as conn:
        queue = kombu.Queue(name, exchange=kombu.Exchange("nameko-rpc", "topic", durable=True),
                            routing_key=name, durable=False, auto_delete=True)
        queue(conn.default_channel).declare()
        yield name, lambda: queue(conn.default_channel).get(no_ack=True)


def test_the_rpc_client_skips_a_dead_node(two_nodes):
    client = RpcClient(two_nodes, timeout=5, connect_timeout=2).start()
    try:
        assert client.wait_connected(15), client.last_error
        # answered by the broker on the live node: nobody consumes rpc-nobody
        with pytest.raises(ServiceNotRunning):
            client.call("nobody", "ping", timeout=5)
    finally:
        client.close()


def test_replies_reach_the_caller_through_the_live_node(two_nodes, inbox):
    name, get = inbox
    sender = ReplySender(two_nodes, "nameko-rpc", "test replies")
    try:
        sender.send(b'{"result": 1, "error": null}', "application/json", name, "c-1")
    finally:
        sender.close()
    message = get()
    assert message is not None and message.properties["correlation_id"] == "c-1"


def test_confirmed_publishes_go_through_the_live_node(two_nodes, inbox):
    name, get = inbox
    publisher = ConfirmedPublisher(two_nodes, timeout=5)
    try:
        assert publisher.publish(b"{}", exchange="nameko-rpc", routing_key=name,
                                 content_type="application/json") is True
    finally:
        publisher.close()
    assert get() is not None
