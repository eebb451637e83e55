"""The platform on a three-node cluster with AMQP_QUEUE_TYPE=quorum."""

import pytest

from tests.support.platform import Platform


@pytest.fixture(scope="module")
def platform(rabbit_cluster):
    with Platform(broker=rabbit_cluster, name="cluster", env={"AMQP_QUEUE_TYPE": "quorum"},
                  startup_timeout=120.0) as running:
        yield running


def test_every_durable_queue_is_a_quorum_queue_and_reply_queues_stay_classic(
        platform, cluster):
    platform.new_user()
    queues = cluster.queues(platform.vhost)
    durable = {name for name, q in queues.items()
               if q["durable"] and not q["exclusive"] and not q["auto_delete"]
               and not name.startswith("rpc.reply-")}
    assert {"rpc-identity", "rpc-auth", "rpc-authz", "rpc-audit"} <= durable
    assert any(name.startswith("evt-identity-user.created--authz") for name in durable)
    assert not [name for name in durable if queues[name]["type"] != "quorum"]
    others = [q for name, q in queues.items() if name not in durable]
    assert others and all(q["type"] == "classic" for q in others)
