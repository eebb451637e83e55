"""AMQP_QUEUE_TYPE: which durable queues become quorum queues, and which never do."""

import pytest
from kombu import Queue

from shared import queues
from shared.redelivery import Topology
from shared.task_queues import TaskTopology


@pytest.fixture
def quorum(monkeypatch):
    monkeypatch.setenv(queues.QUEUE_TYPE_KEY, "quorum")


def test_queue_type_is_classic_unless_set(monkeypatch):
    monkeypatch.delenv(queues.QUEUE_TYPE_KEY, raising=False)
    assert queues.queue_type() == "classic"
    monkeypatch.setenv(queues.QUEUE_TYPE_KEY, " Quorum ")
    assert queues.queue_type() == "quorum"


@pytest.mark.parametrize("value", ["stream", "quorum;classic", "x-queue-type"])
def test_an_unknown_queue_type_is_refused(monkeypatch, value):
    monkeypatch.setenv(queues.QUEUE_TYPE_KEY, value)
    with pytest.raises(ValueError, match="AMQP_QUEUE_TYPE"):
        queues.queue_type()


def test_classic_declares_queues_exactly_as_before(monkeypatch):
    # an existing deployment's classic queues were declared without x-queue-type; adding it
    # would make their redeclaration inequivalent
    monkeypatch.setenv(queues.QUEUE_TYPE_KEY, "classic")
    assert queues.durable_arguments({"x-queue-version": 2}) == {"x-queue-version": 2}
    assert TaskTopology("billing").queue.queue_arguments is None or \
        "x-queue-type" not in TaskTopology("billing").queue.queue_arguments


def test_quorum_reaches_task_delay_and_dead_letter_queues(quorum):
    tasks, redelivery = TaskTopology("billing"), Topology("billing")
    for queue in (tasks.queue, tasks.delay_queue(500), redelivery.dead_letter_queue,
                  redelivery.delay_queue(1000)):
        assert queue.queue_arguments["x-queue-type"] == "quorum", queue.name
        assert queue.durable and not queue.auto_delete and not queue.exclusive
    # the delay queues keep their TTL and dead-lettering
    assert tasks.delay_queue(500).queue_arguments["x-message-ttl"] == 500


def test_quorum_drops_arguments_only_classic_queues_take(quorum):
    assert queues.durable_arguments({"x-queue-version": 2, "x-expires": 10}) == \
        {"x-queue-type": "quorum", "x-expires": 10}


def test_exclusive_auto_delete_and_transient_queues_stay_classic(quorum):
    reply = Queue("rpc.reply-x", durable=False, queue_arguments={"x-expires": 1000})
    listener = Queue("gateway-listener", exclusive=True, auto_delete=True)
    broadcast = Queue("evt-x--y", durable=True, auto_delete=True)
    for queue in (reply, listener, broadcast):
        queues.apply_queue_type(queue)
        assert "x-queue-type" not in (queue.queue_arguments or {}), queue.name
    shared = queues.apply_queue_type(Queue("evt-identity-user.created--authz.h", durable=True))
    assert shared.queue_arguments == {"x-queue-type": "quorum"}
