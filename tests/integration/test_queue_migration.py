"""Switching a vhost's queues from classic to quorum while publishers keep publishing: every
confirmed message is still there afterwards, in a queue of the new type, bound as before."""

import os
import threading
from urllib.parse import quote

import kombu
import pytest
import requests
from kombu import Exchange

from shared.queue_migration import QueueMigration
from shared.queues import QUEUE_TYPE_KEY
from shared.redelivery import Topology
from shared.task_queues import TaskTopology

API = os.environ.get("PLINTH_RABBIT_API", "http://guest:guest@127.0.0.1:15672")
EVENTS = Exchange("identity.events", type="topic", durable=True)


def _queue_info(amqp_uri, name):
    vhost = kombu.Connection(amqp_uri).virtual_host
    response = requests.get(f"{API}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}",
                            timeout=10)
    response.raise_for_status()
    return response.json()


def _bindings(amqp_uri, name):
    vhost = kombu.Connection(amqp_uri).virtual_host
    rows = requests.get(f"{API}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
                        "/bindings", timeout=10).json()
    return sorted((b["source"], b["routing_key"]) for b in rows if b["source"])


def _drain(conn, name):
    got = []
    queue = kombu.Queue(name, no_declare=True, channel=conn.default_channel)
    while (message := queue.get(no_ack=False)) is not None:
        got.append(message.payload["n"])
        message.ack()
    return got


class Publisher(threading.Thread):
    """Publishes numbered events to the topic exchange until stopped; keeps the confirmed."""

    def __init__(self, amqp_uri):
        super().__init__(daemon=True)
        self.amqp_uri, self.confirmed, self.stopping = amqp_uri, [], threading.Event()

    def run(self):
        with kombu.Connection(self.amqp_uri, transport_options={"confirm_publish": True}) as c:
            producer = c.Producer(c.default_channel, exchange=EVENTS)
            n = 0
            while not self.stopping.is_set():
                n += 1
                producer.publish({"n": n}, routing_key="user.created", delivery_mode=2,
                                 serializer="json")
                self.confirmed.append(n)


@pytest.fixture
def classic_topology(amqp_uri, monkeypatch):
    monkeypatch.setenv(QUEUE_TYPE_KEY, "classic")
    event_queue = kombu.Queue("evt-identity-user.created--authz.on_user_created",
                              exchange=EVENTS, routing_key="user.created", durable=True,
                              auto_delete=False)
    queues = [event_queue, TaskTopology("billing").queue, Topology("billing").dead_letter_queue]
    with kombu.Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(conn.default_channel)
        for queue in queues:
            queue(conn.default_channel).declare()
            for n in range(-99, 1):  # 100 waiting in each before the switch
                producer.publish({"n": n}, routing_key=queue.name, delivery_mode=2,
                                 serializer="json")
    return [queue.name for queue in queues]


def test_classic_to_quorum_under_publishing_loses_no_confirmed_message(
        amqp_uri, classic_topology):
    event_queue = classic_topology[0]
    bound_before = _bindings(amqp_uri, event_queue)
    publisher = Publisher(amqp_uri)
    publisher.start()
    lines = []
    migration = QueueMigration(API, amqp_uri, "quorum", out=lines.append)
    try:
        moved = migration.run()
    finally:
        publisher.stopping.set()
        publisher.join(10)
        migration.close()
    assert sorted(moved) == sorted(classic_topology)
    assert len(publisher.confirmed) > 10, "the publisher hardly ran during the switch"

    with kombu.Connection(amqp_uri) as conn:
        for name in classic_topology:
            info = _queue_info(amqp_uri, name)
            assert info["type"] == "quorum" and info["durable"], info
            got = _drain(conn, name)
            assert set(range(-99, 1)) <= set(got), name
            if name == event_queue:
                # every confirmed event is there (one routed to both queues at the switch
                # may be there twice: consumers deduplicate)
                assert set(publisher.confirmed) <= set(got)
    assert _bindings(amqp_uri, event_queue) == bound_before
    assert not [q for q in migration_leftovers(amqp_uri)]
    # a second run finds nothing left to move
    again = QueueMigration(API, amqp_uri, "quorum", out=lines.append)
    try:
        assert again.run() == []
    finally:
        again.close()


def migration_leftovers(amqp_uri):
    vhost = kombu.Connection(amqp_uri).virtual_host
    rows = requests.get(f"{API}/api/queues/{quote(vhost, safe='')}", timeout=10).json()
    return [q["name"] for q in rows if q["name"].endswith(".migrating")]
