"""A publisher that knows, for each message, whether the broker took it and routed it.

The outbox relay and the redelivery of failed messages both hand a message to the broker
before they let go of their own copy (an outbox row, an unacknowledged delivery), so both
need the answer to two questions: did the broker store it (publisher confirm), and did it
reach at least one queue (``mandatory``: an unroutable message comes back instead of
vanishing)? Both also must not hang on a broker that stops answering while they hold a lock
or a delivery: every wait ends after ``timeout`` seconds.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import amqp
from amqp import exceptions as amqp_errors
from kombu import Connection
from kombu.exceptions import OperationalError

from shared.config import amqp_ssl

__all__ = ["ConfirmedPublisher", "Outgoing", "is_broker_trouble"]

log = logging.getLogger(__name__)


def is_broker_trouble(exc):
    """True when ``exc`` says the broker (or the way to it) is in trouble, False when the
    message itself was refused (bad header value, too large, ...) and others may still go."""
    if isinstance(exc, amqp_errors.FrameError | amqp_errors.FrameSyntaxError):
        return False  # raised for what we sent (py-amqp also raises it for bad header types)
    return isinstance(exc, OSError | OperationalError | amqp_errors.MessageNacked
                      | amqp_errors.ConnectionError | amqp_errors.AccessRefused
                      | amqp_errors.NotFound)


@dataclass
class Outgoing:
    """One message for ``ConfirmedPublisher.publish_batch``: its body, where it goes, its
    headers, what to declare first, and kombu's message properties."""

    body: object
    exchange: str = ""
    routing_key: str = ""
    headers: dict = field(default_factory=dict)
    declare: tuple = ()
    properties: dict = field(default_factory=dict)


class ConfirmedPublisher:
    """Persistent, confirmed, mandatory publishes on a connection of its own.

    The channel is in confirm mode and the publisher numbers what it sends, so a batch is
    sent at once and its confirms are collected afterwards by delivery tag: one wait on the
    broker per batch instead of one per message (the outbox relay's throughput depends on it).
    Any broker trouble closes the connection; the next publish opens a new one. Safe to share
    between threads (one batch at a time).
    """

    def __init__(self, amqp_uri, timeout=5.0, ssl=None):
        self.amqp_uri = amqp_uri
        self.ssl = ssl if ssl is not None else amqp_ssl()  # TLS options (shared.config)
        # every message carries its sender's broker user, which RabbitMQ validates
        # (shared.senders): consumers can tell who published it
        first = str(amqp_uri or "").split(";", 1)[0].strip()
        self.user_id = unquote(urlsplit(first).username or "guest")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection = None
        self._channel = None
        self._declared = set()  # (kind, name) of what this connection declared
        self._sent = 0  # delivery tags given on the current channel so far
        self._waiting = {}  # delivery tag -> index in the batch being confirmed
        self._outcomes = None  # the batch being confirmed: its messages and their outcomes
        self._batch = None

    def publish(self, body, exchange="", routing_key="", headers=None, declare=(),
                **properties):
        """Publish and wait for the broker's confirm. Returns True when the message reached a
        queue, False when it was unroutable (nothing bound to it); raises on anything else.

        ``declare``: entities declared first, once per connection. ``properties``: kombu's
        (``serializer``, or ``content_type`` and ``content_encoding`` for a raw body, ...).
        """
        outcomes, trouble = self.publish_batch([Outgoing(
            body, exchange, routing_key, headers or {}, tuple(declare), properties)])
        if trouble is not None:
            raise trouble
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        return outcomes[0]

    def publish_batch(self, messages):
        """Send ``messages`` (``Outgoing``), then wait for all their confirms.

        Returns ``(outcomes, trouble)``. ``outcomes[i]`` is True (the broker stored message i
        and routed it), False (unroutable: returned by the broker), an exception (this message
        alone was refused, e.g. a header value the protocol cannot carry) or None (not
        confirmed: the broker got into ``trouble``, an exception, before confirming it; such a
        message may or may not have been stored). Confirmed outcomes stay valid even when
        ``trouble`` is set.
        """
        outcomes = [None] * len(messages)
        with self._lock:
            self._outcomes, self._batch = outcomes, messages
            try:
                channel = self._channel_for()
                self._declare_once(channel, messages)
                for index, message in enumerate(messages):
                    try:
                        self._send(channel, message)
                    except Exception as exc:
                        if is_broker_trouble(exc):
                            raise
                        outcomes[index] = exc  # refused before it was sent: the rest go on
                        continue
                    self._sent += 1
                    self._waiting[self._sent] = index
                    outcomes[index] = True  # until a return or a nack says otherwise
                self._wait_for_confirms()
            except Exception as exc:  # noqa: BLE001 - reported with what was confirmed
                for index in self._waiting.values():
                    outcomes[index] = None
                self._close()
                return outcomes, exc
            finally:
                self._outcomes = self._batch = None
        return outcomes, None

    def _declare_once(self, channel, messages):
        # what the batch needs, each entity once per connection (as kombu's maybe_declare
        # would, without binding a copy of it for every message)
        for message in messages:
            for entity in message.declare:
                key = (type(entity).__name__, entity.name)
                if key not in self._declared:
                    entity(channel).declare()
                    self._declared.add(key)

    def _send(self, channel, message):
        body = message.body
        properties = {k: v for k, v in message.properties.items() if v is not None}
        properties["user_id"] = self.user_id
        if isinstance(body, str):
            body = body.encode(properties.get("content_encoding") or "utf-8")
        exchange = getattr(message.exchange, "name", message.exchange) or ""
        channel.basic_publish(
            amqp.Message(body, delivery_mode=2, application_headers=message.headers or {},
                         **properties),
            exchange=exchange, routing_key=message.routing_key, mandatory=True,
            timeout=self.timeout)

    def _wait_for_confirms(self):
        deadline = time.monotonic() + self.timeout
        while self._waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._waiting)} publish(es) not confirmed within "
                                   f"{self.timeout:g}s")
            self._connection.drain_events(timeout=remaining)

    def _settle(self, delivery_tag, multiple, outcome):
        tags = [t for t in self._waiting if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in tags:
            index = self._waiting.pop(tag, None)
            if index is not None and self._outcomes is not None and outcome is not None:
                self._outcomes[index] = outcome

    def _on_ack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple, None)  # keeps True, or False if it came back

    def _on_nack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple, amqp_errors.MessageNacked(
            "the broker could not store the message"))

    def _on_return(self, exc, exchange, routing_key, message):
        # the broker sends basic.return before the confirm of the same message, and returns
        # in the order they were published: the first unconfirmed message to that address
        # (with that message id, when it has one) is the one that came back
        if self._outcomes is None:
            return
        if isinstance(routing_key, bytes):
            routing_key = routing_key.decode()
        if isinstance(exchange, bytes):
            exchange = exchange.decode()
        message_id = (getattr(message, "properties", None) or {}).get("message_id")
        for tag in sorted(self._waiting):
            index = self._waiting[tag]
            if self._outcomes[index] is True and self._matches(index, exchange, routing_key,
                                                                message_id):
                self._outcomes[index] = False
                return

    def _matches(self, index, exchange, routing_key, message_id):
        sent = self._batch[index]
        sent_exchange = getattr(sent.exchange, "name", sent.exchange) or ""
        if sent_exchange != (exchange or "") or sent.routing_key != routing_key:
            return False
        return message_id is None or sent.properties.get("message_id") in (None, message_id)

    def declare(self, *entities):
        """Declare ``entities`` now, whether or not this connection declared them before."""
        with self._lock:
            try:
                channel = self._channel_for()
                for entity in entities:
                    entity(channel).declare()
            except BaseException:
                self._close()
                raise

    def close(self):
        with self._lock:
            self._close()

    def _channel_for(self):
        if self._channel is None:
            # confirm mode is set on the channel below, not by kombu's ``confirm_publish``
            # (which waits for each message's confirm before sending the next)
            connection = Connection(self.amqp_uri, connect_timeout=self.timeout,
                                    ssl=self.ssl or False)
            self._connection = connection
            # each of the broker's addresses once, without kombu's sleeps between rounds:
            # the caller has its own backoff, and may hold locks meanwhile
            connection.ensure_connection(max_retries=max(0, len(connection.alt) - 1))
            # a standing socket timeout bounds every later wait on this connection too
            # (channel open, declarations, confirms), which py-amqp would otherwise make
            # without one
            connection.connection.transport.sock.settimeout(self.timeout)
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._sent, self._waiting, self._declared = 0, {}, set()
            self._channel = channel
        return self._channel

    def _close(self):
        connection, self._connection, self._channel = self._connection, None, None
        self._sent, self._waiting, self._declared = 0, {}, set()
        if connection is None:
            return
        try:
            connection.collect()  # drop it without the closing handshake: it may be hung
        except Exception as exc:  # noqa: BLE001 - a broken connection is being discarded
            log.debug("discarding a broken broker connection (%s)", type(exc).__name__)
