"""Where a task travels on the broker: its service's task queue and the delay levels.

Shared by the outbox relay, which sends tasks, and ``shared.tasks``, which consumes them
(see its docstring for the whole picture). A service ``S`` has the durable queue ``S.tasks``
(bound under its name to the service's queues exchange ``S.queues``, shared.redelivery) and
a headers exchange ``S.tasks.wait`` with one queue per level of ``DELAY_LEVELS_MS``
(``S.tasks.wait.<ms>``: ``x-message-ttl`` of that level, dead-lettered through ``S.queues``
with the routing key ``S.tasks``, so back into the task queue). Nothing goes through the
default exchange, which a least-privilege broker user may not publish to. A task not due yet
carries its due time in ``ETA_HEADER`` and goes into the largest level not beyond what is
left; it hops again on arrival until it is due.
"""

import functools
import time
from datetime import datetime

from kombu import Exchange, Queue

from shared.publishing import Outgoing
from shared.redelivery import DELAY_HEADER, queues_exchange

__all__ = ["TaskTopology", "task_queue", "outgoing", "eta_ms", "DELAY_LEVELS_MS", "ETA_HEADER",
           "TASK_HEADER", "RUN_WITHIN_MS"]

ETA_HEADER = "plinth-eta"  # when the task is due, in milliseconds since the epoch
TASK_HEADER = "plinth-task"
DELAY_LEVELS_MS = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
                   900_000, 3_600_000)
RUN_WITHIN_MS = 50  # a task this close to its time runs now rather than waiting again


def task_queue(service):
    """The durable queue that holds ``service``'s tasks."""
    return Queue(f"{service}.tasks", exchange=queues_exchange(service),
                 routing_key=f"{service}.tasks", durable=True, auto_delete=False)


class TaskTopology:
    """The task queue and delay entities of one service (see the module docstring)."""

    def __init__(self, service):
        self.service = service
        self.queue = task_queue(service)
        self.queues_exchange = self.queue.exchange
        self.delay_exchange = Exchange(f"{service}.tasks.wait", type="headers", durable=True)

    def delay_queue(self, ms):
        return Queue(
            f"{self.service}.tasks.wait.{ms}", exchange=self.delay_exchange, durable=True,
            auto_delete=False, binding_arguments={"x-match": "all", DELAY_HEADER: str(ms)},
            queue_arguments={"x-message-ttl": ms,
                             "x-dead-letter-exchange": self.queues_exchange.name})

    @staticmethod
    def level_for(remaining_ms):
        """The largest delay level not beyond ``remaining_ms`` (the smallest at least)."""
        fitting = [ms for ms in DELAY_LEVELS_MS if ms <= remaining_ms]
        return fitting[-1] if fitting else DELAY_LEVELS_MS[0]


@functools.lru_cache(maxsize=256)
def _topology(service):
    # one set of entities per service: kombu remembers what it declared by entity, and
    # building them for every row of a batch costs more than publishing it
    return TaskTopology(service)


def outgoing(env, body, headers, sender=None):
    """The message that sends a task (``env``, its JSON ``body`` and context ``headers``) from
    the outbox to its service's queue, or into the delay level its ``eta`` asks for (used by
    ``outbox.Relay``, which publishes it with its batch).

    ``sender``: the service sending it. A task for another service (a catalogued one) goes
    straight to that service's queue, declaring nothing of its (its broker user may not): an
    early one is sent on through the delay levels by its consumer."""
    name = env["task_type"]
    owner = name.split(".", 1)[0]
    topology = _topology(owner)
    if sender is not None and sender != owner:
        headers = {**headers, TASK_HEADER: name}
        eta = eta_ms(env.get("eta"))
        if eta:
            headers[ETA_HEADER] = eta
        return Outgoing(body, topology.queues_exchange, topology.queue.name, headers, (), {
            "content_type": "application/json", "content_encoding": "utf-8",
            "message_id": env["task_id"]})
    # the owner's queue is declared here too: a task sent before its service ever started
    # waits in that queue rather than in the outbox, and a delayed one has a queue to return to
    declare = (topology.queue,)
    headers = {**headers, TASK_HEADER: name}
    properties = {"content_type": "application/json", "content_encoding": "utf-8",
                  "message_id": env["task_id"]}
    eta = eta_ms(env.get("eta"))
    remaining = eta - time.time() * 1000 if eta else 0
    if remaining > RUN_WITHIN_MS:
        ms = topology.level_for(remaining)
        bucket = topology.delay_queue(ms)
        headers.update({ETA_HEADER: eta, DELAY_HEADER: str(ms)})
        return Outgoing(body, topology.delay_exchange, topology.queue.name, headers,
                        (*declare, bucket), properties)
    return Outgoing(body, topology.queues_exchange, topology.queue.name, headers, declare,
                    properties)


def eta_ms(value):
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return None
