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
from urllib.parse import unquote, urlsplit

from amqp import exceptions as amqp_errors
from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from shared.config import amqp_ssl

__all__ = ["ConfirmedPublisher", "is_broker_trouble"]

log = logging.getLogger(__name__)


def is_broker_trouble(exc):
    """True when ``exc`` says the broker (or the way to it) is in trouble, False when the
    message itself was refused (bad header value, too large, ...) and others may still go."""
    if isinstance(exc, amqp_errors.FrameError | amqp_errors.FrameSyntaxError):
        return False  # raised for what we sent (py-amqp also raises it for bad header types)
    return isinstance(exc, OSError | OperationalError | amqp_errors.MessageNacked
                      | amqp_errors.ConnectionError | amqp_errors.AccessRefused
                      | amqp_errors.NotFound)


class ConfirmedPublisher:
    """Persistent, confirmed, mandatory publishes on a connection of its own.

    Any error closes the connection; the next publish opens a new one. Safe to share between
    green threads (one publish at a time).
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
        self._producer = None
        self._returned = []

    def publish(self, body, exchange="", routing_key="", headers=None, declare=(),
                **properties):
        """Publish and wait for the broker's confirm. Returns True when the message reached a
        queue, False when it was unroutable (nothing bound to it); raises on anything else.

        ``declare``: entities declared first, once per connection. ``properties``: kombu's
        (``serializer``, or ``content_type`` and ``content_encoding`` for a raw body, ...).
        """
        with self._lock:
            try:
                producer = self._producer_for()
                self._returned.clear()
                producer.publish(body, exchange=exchange, routing_key=routing_key,
                                 headers=headers or {}, delivery_mode=2, mandatory=True,
                                 retry=False, declare=list(declare), timeout=self.timeout,
                                 confirm_timeout=self.timeout, user_id=self.user_id,
                                 **properties)
            except BaseException:
                self._close()
                raise
            return not self._returned

    def declare(self, *entities):
        """Declare ``entities`` now, whether or not this connection declared them before."""
        with self._lock:
            try:
                channel = self._producer_for().channel
                for entity in entities:
                    entity(channel).declare()
            except BaseException:
                self._close()
                raise

    def close(self):
        with self._lock:
            self._close()

    def _producer_for(self):
        if self._producer is None:
            connection = Connection(self.amqp_uri, connect_timeout=self.timeout,
                                    transport_options={"confirm_publish": True},
                                    ssl=self.ssl or False)
            self._connection = connection
            # each of the broker's addresses once, without kombu's sleeps between rounds:
            # the caller has its own backoff, and may hold locks meanwhile
            connection.ensure_connection(max_retries=max(0, len(connection.alt) - 1))
            # a standing socket timeout bounds every later wait on this connection too
            # (channel open, declarations, confirms), which py-amqp would otherwise make
            # without one
            connection.connection.transport.sock.settimeout(self.timeout)
            self._producer = Producer(connection.channel(), on_return=self._on_return)
        return self._producer

    def _on_return(self, exc, exchange, routing_key, message):
        # the broker sends basic.return before the confirm of the same message
        self._returned.append(routing_key)

    def _close(self):
        connection, self._connection, self._producer = self._connection, None, None
        if connection is None:
            return
        try:
            connection.collect()  # drop it without the closing handshake: it may be hung
        except Exception as exc:  # noqa: BLE001 - a broken connection is being discarded
            log.debug("discarding a broken broker connection (%s)", type(exc).__name__)
