"""A subscription to one service's events for this gateway process.

Each gateway process needs every event of some kinds (authz's role changes, auth's revoked
sessions), so each binds its own exclusive, auto-delete queue to the service's nameko events
exchange, from a daemon thread (plain kombu; the gateway does not use eventlet) that
reconnects by itself. A subclass says what an event does (``on_event``), what to do once the
queue is bound again — events may have been missed while it was not (``on_bound``) — and
what to retry while connected (``on_idle``, which must not block: it runs between reads).

A connection that died without a word (a half-open TCP connection: a crashed broker host, a
dropped NAT entry) is found by AMQP heartbeats: both sides send one every ``heartbeat / 2``
seconds, and the connection counts as lost after ``heartbeat + 1.5`` seconds without a byte
from the broker (py-amqp's own check waits ``2 × heartbeat``). It is then dropped without a
closing handshake (which would wait forever for an answer) and a new one is opened, on a
queue of its own: the old exclusive queue lives on until the broker notices the old
connection is gone. The broker drops a client it has not heard from for about ``heartbeat``
seconds, so a much shorter heartbeat would also cut listeners on a merely slow link.
"""

import logging
import os
import socket
import threading
import time
import uuid

from gateway import metrics
from shared.backoff import NO_JITTER, Backoff
from shared.config import amqp_ssl
from shared.senders import Senders, user_of

__all__ = ["EventSubscription", "DEFAULT_HEARTBEAT"]

log = logging.getLogger("gateway.events")

DEFAULT_HEARTBEAT = 3  # seconds (whole: AMQP negotiates an integer): a dead link shows in ~5 s
SILENCE_MARGIN = 1.5  # seconds of silence past one heartbeat: two of the broker's were missed


class EventSubscription:
    def __init__(self, amqp_uri, source, routing_key, name, heartbeat=DEFAULT_HEARTBEAT):
        self.amqp_uri = amqp_uri
        self.source, self.routing_key, self.name = source, routing_key, name
        self.heartbeat = max(1, int(heartbeat))
        self.senders = Senders({})  # BROKER_USER_PREFIX from the environment
        self.queue_prefix = (f"gateway-{name}-{socket.gethostname()}-{os.getpid()}-"
                             f"{uuid.uuid4().hex[:8]}")
        self.queue_name = None
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._thread = None
        self._pid = None
        self.connections = 0  # how many times the queue was bound (1 + the reconnections)
        self.received = 0
        self.last_error = None

    # -- what a subscription does ----------------------------------------------------------
    def on_event(self, body, event_type):
        raise NotImplementedError

    def on_bound(self):
        """The queue is bound: from now on nothing is missed (called before ``connected``)."""

    def on_idle(self):
        """Called about once a second while connected; must return at once."""

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def connected(self):
        return self._connected.is_set() and self._pid == os.getpid()

    def start(self):
        if self._thread is not None and self._pid == os.getpid():
            return self
        self._pid = os.getpid()
        self._connected.clear()
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout):
        return self._connected.wait(timeout)

    def stop(self):
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _on_message(self, body, message):
        try:
            if not self.senders.accepts(user_of(message), self.source):
                # not from the source's broker identity (shared.senders): dropped, counted
                self.senders.refuse(f"gateway {self.name}", self.source, user_of(message),
                                    message.properties.get("message_id"))
                metrics.EVENTS_DROPPED.labels(self.source).inc()
                return
            self.received += 1
            self.on_event(body, message.delivery_info.get("routing_key", ""))
        finally:
            message.ack()

    def _run(self):
        backoff = Backoff(initial=0.4, maximum=5.0, jitter=NO_JITTER)
        while not self._stopped.is_set():
            try:
                self._listen()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - reconnect whatever went wrong
                new_kind = type(exc) is not type(self.last_error)
                self.last_error = exc
                if self._connected.is_set():
                    log.warning("lost %s events (%s: %s); reconnecting", self.source,
                                type(exc).__name__, exc)
                elif new_kind:  # e.g. refused by the broker: said once, not at every retry
                    log.warning("cannot listen to %s events yet (%s: %s); retrying",
                                self.source, type(exc).__name__, exc)
                self._connected.clear()
                self._stopped.wait(backoff.next())
        self._connected.clear()

    def _listen(self):
        """One connection: bind a fresh queue, consume until stopped or the link fails."""
        from amqp.exceptions import NotFound
        from kombu import Connection, Consumer, Queue
        from nameko.standalone.events import get_event_exchange

        conn = Connection(self.amqp_uri, heartbeat=self.heartbeat, connect_timeout=3,
                          ssl=amqp_ssl() or False)
        try:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            exchange = get_event_exchange(self.source, {})
            try:
                # passively: the gateway's broker user may not declare it (deploy/broker_users)
                exchange(channel).declare(passive=True)
            except NotFound:  # not there yet: declared by those allowed to
                channel = conn.channel()
                exchange(channel).declare()
            self.queue_name = f"{self.queue_prefix}-{self.connections + 1}"
            # the queue's own declaration must not declare the exchange again (not passively)
            existing = get_event_exchange(self.source, {"DECLARE_EVENT_EXCHANGES": False})
            queue = Queue(self.queue_name, exchange=existing, routing_key=self.routing_key,
                          exclusive=True, auto_delete=True, durable=False)
            consumer = Consumer(channel, queues=[queue], callbacks=[self._on_message],
                                accept=["json"])
            consumer.consume()
            self.connections += 1
            self.on_bound()
            self._connected.set()
            self.last_error = None
            log.info("listening to %s events on %s", self.source, self.queue_name)
            # read at least twice per heartbeat, so that heartbeats go out and a silent
            # broker is noticed on time
            wait = min(1.0, self.heartbeat / 2)
            silence = _Silence(conn.connection, self.heartbeat + SILENCE_MARGIN)
            while not self._stopped.is_set():
                self.on_idle()
                try:
                    conn.drain_events(timeout=wait)
                except TimeoutError:
                    pass
                conn.heartbeat_check()
                silence.check()
        except BaseException:
            conn.collect()  # no closing handshake: the broker may never answer it
            raise
        self._connected.clear()
        try:
            conn.release()
        except Exception:  # noqa: BLE001 - stopping: the broker may already be gone
            conn.collect()


class _Silence:
    """How long the broker has sent nothing on a connection, from py-amqp's byte count (read
    only); raises once that exceeds ``limit`` seconds. A transport without the count is left
    to its own heartbeat check."""

    def __init__(self, connection, limit):
        self.connection, self.limit = connection, limit
        self.received, self.since = None, time.monotonic()

    def check(self):
        received = getattr(self.connection, "bytes_recv", None)
        now = time.monotonic()
        if received is None or received != self.received:
            self.received, self.since = received, now
            return
        if now - self.since > self.limit:
            raise ConnectionError(f"nothing from the broker for {now - self.since:.1f}s "
                                  "(heartbeats missed)")
