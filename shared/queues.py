"""The type of every durable queue the platform declares: classic or quorum (AMQP_QUEUE_TYPE).

``AMQP_QUEUE_TYPE=quorum`` makes every durable queue (RPC request queues, event queues, task,
delay and dead-letter queues, audit's queue) a RabbitMQ quorum queue, replicated across the
cluster's nodes; ``classic`` (the default) declares them as before, with no ``x-queue-type``
argument, so a deployment that never set it redeclares its queues unchanged. Reply queues and
the gateway's per-process listener queues are exclusive or expiring and stay classic: quorum
queues cannot be exclusive, auto-delete or non-durable.

A queue's type is fixed when it is declared (no policy changes it): an existing classic queue
redeclared as quorum fails with PRECONDITION_FAILED. ``shared.queue_migration`` moves a
deployment's queues from one type to the other (deploy/README.md, "Quorum queues").
"""

import os

from kombu import Queue

__all__ = ["QUEUE_TYPE_KEY", "QUEUE_TYPES", "queue_type", "durable_arguments", "durable_queue",
           "apply_queue_type"]

QUEUE_TYPE_KEY = "AMQP_QUEUE_TYPE"
QUEUE_TYPES = ("classic", "quorum")
QUORUM_REFUSES = ("x-queue-version", "x-max-priority")  # classic-only arguments


def queue_type():
    """``classic`` or ``quorum``, from the environment's ``AMQP_QUEUE_TYPE`` (classic when
    unset). Read from the environment only, so a service's nameko extensions, its outbox relay
    and its CLIs can never disagree. Anything else is refused."""
    value = os.environ.get(QUEUE_TYPE_KEY) or "classic"
    value = str(value).strip().lower()
    if value not in QUEUE_TYPES:
        raise ValueError(f"{QUEUE_TYPE_KEY} must be one of {', '.join(QUEUE_TYPES)}, "
                         f"not {value!r}")
    return value


def durable_arguments(arguments=None):
    """``arguments`` (queue arguments of a durable queue) with the configured type added."""
    arguments = dict(arguments or {})
    if queue_type() == "quorum":
        for key in QUORUM_REFUSES:
            arguments.pop(key, None)
        arguments["x-queue-type"] = "quorum"
    return arguments


def durable_queue(name, queue_arguments=None, **kwargs):
    """A durable, non-auto-delete kombu ``Queue`` of the configured type."""
    return Queue(name, durable=True, auto_delete=False,
                 queue_arguments=durable_arguments(queue_arguments), **kwargs)


def apply_queue_type(queue):
    """Give ``queue`` (a kombu Queue nameko built) the configured type when it is one that may
    be a quorum queue: durable, not exclusive, not auto-delete. Returns the queue."""
    if queue.durable and not queue.exclusive and not queue.auto_delete:
        queue.queue_arguments = durable_arguments(queue.queue_arguments)
    return queue
