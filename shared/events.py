"""The platform's event handler: a failed event is tried again later, then set aside, never lost.

``@event_handler("identity", "user.deleted")`` is nameko's (one durable queue per handler,
shared by the service's instances) except for what happens when the handler raises: nameko
would acknowledge the event and forget it; here it is retried with exponential backoff and
jitter through the broker's delay queues, and after ``EVENT_MAX_ATTEMPTS`` failures -- or at
once for a client error, which no retry cures -- it lands in ``<service>.dead-letters`` with
its last error (see shared.redelivery). Each retry and dead letter is logged and counted on
``/metrics``.

Handlers must be idempotent (``UnitOfWork.claim`` on the event id first): a retried event
runs again from the start, and the broker may deliver any event twice.
"""

import logging
import time

from nameko import events as nameko_events

from shared.metrics import MetricsRegistry
from shared.redelivery import Redelivery, RetryPolicy, bound_by_name
from shared.senders import Senders, user_of

__all__ = ["EventHandler", "event_handler", "CONFIG_PREFIX"]

log = logging.getLogger(__name__)

# EVENT_MAX_ATTEMPTS (5), EVENT_RETRY_DELAY (first wait, 1 s), EVENT_RETRY_MAX_DELAY (300 s)
CONFIG_PREFIX = "EVENT"
REQUEUE_PAUSE = 1.0  # seconds


class EventHandler(nameko_events.EventHandler):
    """nameko's EventHandler with broker-held retries and a dead-letter queue.

    ``max_attempts`` overrides ``EVENT_MAX_ATTEMPTS`` for one handler.
    """

    redelivery = Redelivery()
    metrics = MetricsRegistry()

    def __init__(self, source_service, event_type, max_attempts=None, **kwargs):
        kwargs.pop("requeue_on_error", None)  # failures are settled below, never requeued
        self.max_attempts = max_attempts
        super().__init__(source_service, event_type, **kwargs)

    def setup(self):
        super().setup()
        # retries come back through the service's queues exchange (shared.redelivery)
        bound_by_name(self.queue, self.container.service_name)
        self.backoff = RetryPolicy.from_config(self.container.config, CONFIG_PREFIX,
                                           max_attempts=self.max_attempts)
        self.retries = self.metrics.counter(
            "plinth_event_retries", "Failed events put back for a later attempt", ["handler"])
        self.dead_letters = self.metrics.counter(
            "plinth_event_dead_letters", "Events given up into the dead-letter queue",
            ["handler", "reason"])
        self.senders = Senders(self.container.config, own=self.container.service_name)
        self.forged = self.metrics.counter(
            "plinth_events_dropped_sender", "Events dropped: not sent by their source "
            "service's broker identity (shared.senders)", ["handler", "source"])

    def handle_message(self, body, message):
        # before any work: an event its source's identity did not send is dropped (acked)
        if not self.senders.accepts(user_of(message), self.source_service):
            handler = f"{self.container.service_name}.{self.method_name}"
            self.senders.refuse(handler, self.source_service, user_of(message),
                                _event_id(message))
            self.forged.labels(handler, self.source_service).inc()
            self.queue_consumer.ack_message(message)
            return
        super().handle_message(body, message)

    def handle_message_processed(self, message, result=None, exc_info=None):
        # runs in the worker's thread: raising here would kill the container
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        exc = exc_info[1]
        try:
            outcome = self.redelivery.settle(message, self.queue.name, exc, self.backoff)
        except Exception as error:  # noqa: BLE001 - the broker did not take the copy
            log.error("could not set event %s aside for a retry (%s: %s); returning it to %s",
                      _event_id(message), type(error).__name__, error, self.queue.name)
            # the broker refuses the copy but still serves this delivery (rare: a broker
            # that is down takes the delivery back by itself): a pause keeps the requeue
            # from turning into a hot loop
            time.sleep(REQUEUE_PAUSE)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)
        self._report(message, exc, outcome)

    def _report(self, message, exc, outcome):
        handler = f"{self.container.service_name}.{self.method_name}"
        about = (handler, _event_id(message), outcome.attempts, type(exc).__name__)
        if outcome.action == "retried":
            self.retries.labels(handler).inc()
            log.warning("%s failed on event %s (attempt %d, %s); retrying in %.2fs",
                        *about, outcome.delay)
        else:
            self.dead_letters.labels(handler, outcome.reason).inc()
            log.error("%s failed on event %s (attempt %d, %s); dead-lettered (%s) to %s",
                      *about, outcome.reason, self.redelivery.topology.dead_letter_queue.name)


def _event_id(message):
    return message.properties.get("message_id") or "(no id)"


event_handler = EventHandler.decorator
