"""A multi-node AMQP_URI: its nodes, and connecting to whichever answers."""

import socket

import pytest

from shared.broker_nodes import Nodes, amqp_connection_params, node_uris


def test_node_uris_split_on_semicolons_and_skip_blanks():
    assert node_uris(" amqp://a:b@h1:5672/v ; amqp://a:b@h2:5673/v;") == \
        ["amqp://a:b@h1:5672/v", "amqp://a:b@h2:5673/v"]


@pytest.mark.parametrize("value", ["", " ; ", None])
def test_an_amqp_uri_without_nodes_is_refused(value):
    with pytest.raises(ValueError):
        node_uris(value)


def test_connection_params_of_one_node():
    params = amqp_connection_params("amqp://u%40x:p@h2:5673/plinth%2Fv", 3)
    assert params["host"] == "h2:5673" and params["userid"] == "u@x"
    assert params["virtual_host"] == "plinth/v" and params["connect_timeout"] == 3


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_skips_nodes_that_do_not_answer_and_starts_after_a_lost_one():
    nodes = Nodes(f"amqp://u:p@127.0.0.1:{_closed_port()}/;amqp://u:p@127.0.0.1:"
                  f"{_closed_port()}/", connect_timeout=1)
    with pytest.raises(OSError):
        nodes.connect()
    assert len(nodes) == 2
    first = nodes.current
    nodes.failed()
    assert nodes.current is not first
    nodes.failed()
    assert nodes.current is first
