"""Retrying a failed message later, and setting it aside for good, with the broker holding it.

When a consumer's handler fails, the message is not slept on nor requeued at once: it is
republished into a *delay queue* and acknowledged. A delay queue holds messages for a fixed
time (``x-message-ttl``) and has no consumer; when a message expires the broker dead-letters
it through the service's *queues exchange* with the routing key it was published with -- the
name of the queue it came from -- so it arrives back in that queue, where any instance takes
it. (Not the default exchange: publishing there would reach every queue of the vhost, which a
least-privilege broker user must not be allowed; see deploy/broker_users.py.)
After ``max_attempts`` failures, or at once for a client error that no retry can cure, the
message goes to the service's *dead-letter queue* instead, where an operator finds it.

Broker topology of a service ``S`` (all durable):

- exchange ``S.queues`` (topic): each queue of the service that may take a message back (its
  event handlers' queues, its task queue, its dead-letter queue) is bound to it under its own
  name;
- exchange ``S.retry`` (headers): routes a message to the delay queue whose binding matches
  its ``plinth-delay-ms`` header, leaving its routing key untouched;
- queues ``S.retry.<ms>``: one per delay bucket, dead-lettered into ``S.queues``, declared
  when first needed and deleted by the broker once unused for a while (``x-expires``, always
  longer than their TTL). Bucket delays lie on a geometric grid (8 steps per doubling,
  through 1 s; 100 ms at least), so any delay is held within about 4.5% of what was asked,
  and jittered retries share a few queues;
- queue ``S.dead-letters``: what was given up, with its headers and body as received plus the
  ``plinth-*`` headers below.

Headers a message carries through this: ``plinth-attempts`` (failed attempts so far),
``plinth-queue`` (the queue it belongs to), ``plinth-error-type`` / ``plinth-error`` (the last
failure: its class and the first line of its message, never SQL or parameters),
``plinth-failed-at``, ``plinth-origin-exchange`` / ``plinth-origin-routing-key`` (where it was
first published), and on dead letters ``plinth-dead-reason`` (``exhausted`` or
``client_error``).

API: ``Topology`` (names and kombu entities, usable without a container), ``RetryPolicy``
(how often and how late), ``describe`` / ``is_client_error`` (how a failure is recorded and
classified), and ``Redelivery``, the shared extension a consumer entrypoint declares to
``settle`` a failed message: retry later or dead-letter, then acknowledge.
"""

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from kombu import Exchange, Queue, binding
from nameko.extensions import SharedExtension

from shared import config as cfg
from shared.backoff import Backoff
from shared.errors import PlinthError, TooManyRequests
from shared.publishing import ConfirmedPublisher, is_broker_trouble

__all__ = ["Topology", "queues_exchange", "bound_by_name", "RetryPolicy", "Redelivery",
           "Outcome", "describe", "is_client_error", "attempts_of", "DELAY_HEADER",
           "ATTEMPTS_HEADER", "QUEUE_HEADER", "ERROR_HEADER", "ERROR_TYPE_HEADER",
           "DEAD_REASON_HEADER", "PUBLISH_TIMEOUT_KEY"]

log = logging.getLogger(__name__)

DELAY_HEADER = "plinth-delay-ms"
ATTEMPTS_HEADER = "plinth-attempts"
QUEUE_HEADER = "plinth-queue"
ERROR_TYPE_HEADER = "plinth-error-type"
ERROR_HEADER = "plinth-error"
FAILED_AT_HEADER = "plinth-failed-at"
ORIGIN_EXCHANGE_HEADER = "plinth-origin-exchange"
ORIGIN_ROUTING_KEY_HEADER = "plinth-origin-routing-key"
DEAD_REASON_HEADER = "plinth-dead-reason"
PUBLISH_TIMEOUT_KEY = "REDELIVERY_PUBLISH_TIMEOUT"

GRID_MIN_MS = 100
GRID_ORIGIN_MS = 1000  # on the grid, like every power of two times it (0.5 s, 2 s, 4 s...)
GRID_STEPS = 8  # buckets per doubling of the delay
EXPIRE_AFTER_MS = 10 * 60 * 1000  # an unused delay queue outlives its TTL by this much
ERROR_TEXT_LIMIT = 200
# message properties kept when a message is republished
_KEPT_PROPERTIES = ("message_id", "correlation_id", "reply_to", "priority", "type", "app_id")


def queues_exchange(service):
    """The exchange through which a message reaches one of ``service``'s queues by name."""
    return Exchange(f"{service}.queues", type="topic", durable=True)


def bound_by_name(queue, service):
    """``queue`` (a kombu Queue of ``service``), also bound to its queues exchange under its
    own name: a retried or replayed message finds its way back to it."""
    bindings = set(queue.bindings)
    if queue.exchange is not None and queue.exchange.name:
        # kombu binds a queue that has extra bindings through those only
        bindings.add(binding(queue.exchange, routing_key=queue.routing_key,
                             arguments=queue.binding_arguments))
    bindings.add(binding(queues_exchange(service), routing_key=queue.name))
    queue.bindings = bindings
    return queue


class Topology:
    """The delay and dead-letter entities of one service (see the module docstring)."""

    def __init__(self, service):
        self.service = service
        self.queues_exchange = queues_exchange(service)
        self.delay_exchange = Exchange(f"{service}.retry", type="headers", durable=True)
        self.dead_letter_queue = Queue(f"{service}.dead-letters", exchange=self.queues_exchange,
                                       routing_key=f"{service}.dead-letters", durable=True,
                                       auto_delete=False)

    @staticmethod
    def bucket_ms(seconds):
        """The grid delay, in milliseconds, nearest to ``seconds``."""
        ms = max(float(GRID_MIN_MS), seconds * 1000.0)
        step = round(math.log2(ms / GRID_ORIGIN_MS) * GRID_STEPS)
        return max(GRID_MIN_MS, int(round(GRID_ORIGIN_MS * 2 ** (step / GRID_STEPS))))

    def delay_queue(self, ms):
        """The delay queue of the ``ms`` bucket, bound to the delay exchange."""
        return Queue(
            f"{self.service}.retry.{ms}", exchange=self.delay_exchange, durable=True,
            auto_delete=False, binding_arguments={"x-match": "all", DELAY_HEADER: str(ms)},
            queue_arguments={"x-message-ttl": ms,
                             "x-dead-letter-exchange": self.queues_exchange.name,
                             "x-expires": ms + EXPIRE_AFTER_MS})

    def delay_headers(self, ms):
        """The header that routes a message published to ``delay_exchange`` into a bucket."""
        return {DELAY_HEADER: str(ms)}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed message is tried again.

    The n-th retry waits ``base * factor ** (n - 1)`` seconds, at most ``cap``, spread by
    ``± jitter`` (a fraction) so that messages failing together do not return together.
    """

    max_attempts: int = 5
    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.25

    def delay(self, failures):
        """Seconds to wait after the ``failures``-th failed attempt."""
        spread = (1 - self.jitter, 1 + self.jitter)
        return Backoff(self.base, self.cap, self.factor, spread).delay(failures - 1)

    @classmethod
    def from_config(cls, config, prefix, **overrides):
        """``<prefix>_MAX_ATTEMPTS``, ``<prefix>_RETRY_DELAY`` (the first wait, seconds) and
        ``<prefix>_RETRY_MAX_DELAY`` from a nameko config, explicit ``overrides`` winning."""
        values = {
            "max_attempts": cfg.setting(config, f"{prefix}_MAX_ATTEMPTS", cls.max_attempts, int),
            "base": cfg.setting(config, f"{prefix}_RETRY_DELAY", cls.base, float),
            "cap": cfg.setting(config, f"{prefix}_RETRY_MAX_DELAY", cls.cap, float),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """What ``Redelivery.settle`` did with a failed message."""

    action: str  # "retried" or "dead_lettered"
    attempts: int  # failed attempts so far, this one included
    delay: float = 0.0  # seconds until the retry (for "retried")
    reason: str = ""  # "exhausted" or "client_error" (for "dead_lettered")


def is_client_error(exc):
    """A typed error saying the message itself is wrong (4xx, except 429): no retry helps."""
    return isinstance(exc, PlinthError) and 400 <= exc.status < 500 \
        and not isinstance(exc, TooManyRequests)


def describe(exc):
    """(type name, first line of the message) of a failure, safe to keep with the message.

    A typed error gives its own message (written for clients). A database error gives its
    driver's first line only: SQLAlchemy adds the statement and its parameters on later lines,
    and they may hold personal data or a hash.
    """
    source = exc if isinstance(exc, PlinthError) else (getattr(exc, "orig", None) or exc)
    text = exc.message if isinstance(exc, PlinthError) else str(source)
    lines = text.strip().splitlines()
    return type(exc).__name__, (lines[0] if lines else "")[:ERROR_TEXT_LIMIT]


def attempts_of(message):
    """Failed attempts recorded on a delivered message (0 for a first delivery)."""
    try:
        return max(0, int((message.headers or {}).get(ATTEMPTS_HEADER, 0)))
    except (TypeError, ValueError):
        return 0


class Redelivery(SharedExtension):
    """A service's delay and dead-letter queues, and the publisher that moves failed messages
    there. Declare it on a consumer entrypoint; one instance serves the whole container.

    Config: ``REDELIVERY_PUBLISH_TIMEOUT`` (seconds a publish may wait on the broker, 5).
    """

    def setup(self):
        config = self.container.config
        self.topology = Topology(self.container.service_name)
        self.publisher = ConfirmedPublisher(
            config[cfg.AMQP_URI_KEY], timeout=cfg.setting(config, PUBLISH_TIMEOUT_KEY, 5.0, float),
            ssl=cfg.amqp_ssl(config))

    def start(self):
        # declared now so that operators find the queue before anything is dead-lettered
        try:
            self.publisher.declare(self.topology.dead_letter_queue)
        except Exception as exc:  # noqa: BLE001 - the broker may be away; declared again later
            log.warning("could not declare %s yet (%s)", self.topology.dead_letter_queue.name,
                        type(exc).__name__)

    def stop(self):
        self.publisher.close()

    kill = stop

    def settle(self, message, queue, exc, backoff):
        """Retry ``message`` (taken from ``queue``) later, or dead-letter it, after ``exc``.

        Returns the ``Outcome`` once the broker has confirmed the copy; the caller then
        acknowledges the original. Raises when the broker did not take the copy: the caller
        must then leave the original to be redelivered.
        """
        failures = attempts_of(message) + 1
        headers = self.failure_headers(message, queue, exc, failures)
        if is_client_error(exc):
            return self._twice(self.dead_letter, message, headers, failures, "client_error")
        if failures >= backoff.max_attempts:
            return self._twice(self.dead_letter, message, headers, failures, "exhausted")
        delay = backoff.delay(failures)
        self._twice(self.later, message, queue, delay, headers)
        return Outcome("retried", failures, delay=delay)

    @staticmethod
    def _twice(action, *args):
        # the publisher's connection may have died while idle (nothing fails for a long
        # time): one more try, on a new connection, before the caller gives the message back
        try:
            return action(*args)
        except Exception as exc:  # only broker trouble is worth the second try
            if not is_broker_trouble(exc):
                raise
            log.info("publishing a failed message again on a new connection (%s)",
                     type(exc).__name__)
            return action(*args)

    def later(self, message, queue, seconds, headers=None):
        """Publish ``message`` into the delay bucket nearest ``seconds``; it returns to
        ``queue`` when the bucket's time is up."""
        ms = self.topology.bucket_ms(seconds)
        bucket = self.topology.delay_queue(ms)
        # declared every time: a delay queue the broker expired must exist again, and the
        # declaration renews its expiry, which therefore always comes after its messages'
        self.publisher.declare(bucket)
        headers = {**(headers or message.headers or {}), **self.topology.delay_headers(ms)}
        self._publish(message, self.topology.delay_exchange, queue, headers, bucket.name)

    def dead_letter(self, message, headers, failures, reason):
        headers = {**headers, DEAD_REASON_HEADER: reason}
        queue = self.topology.dead_letter_queue
        self._publish(message, self.topology.queues_exchange, queue.name, headers, queue.name,
                      declare=(queue,))
        return Outcome("dead_lettered", failures, reason=reason)

    def _publish(self, message, exchange, routing_key, headers, where, declare=()):
        properties = {k: message.properties.get(k) for k in _KEPT_PROPERTIES
                      if message.properties.get(k) is not None}
        # the body goes as it came: with its content type, or as opaque bytes
        properties["content_type"] = message.content_type or "application/data"
        properties["content_encoding"] = message.content_encoding or "binary"
        routed = self.publisher.publish(message.body, exchange=exchange,
                                        routing_key=routing_key, headers=headers,
                                        declare=declare, **properties)
        if not routed:
            raise RuntimeError(f"the broker could not route the message to {where}")

    @staticmethod
    def failure_headers(message, queue, exc, failures):
        """The headers of ``message`` with its ``failures``-th failure, ``exc``, recorded."""
        error_type, error = describe(exc)
        info = message.delivery_info or {}
        headers = dict(message.headers or {})
        headers.setdefault(ORIGIN_EXCHANGE_HEADER, info.get("exchange", ""))
        headers.setdefault(ORIGIN_ROUTING_KEY_HEADER, info.get("routing_key", ""))
        headers.update({ATTEMPTS_HEADER: failures, QUEUE_HEADER: queue,
                        ERROR_TYPE_HEADER: error_type, ERROR_HEADER: error,
                        FAILED_AT_HEADER: datetime.now(UTC).isoformat()})
        return headers
