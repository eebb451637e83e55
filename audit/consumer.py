"""The batch consumer: every source service's events, appended to the trail many at a time.

One durable queue (``AUDIT_QUEUE``, default ``audit.events``) is bound with ``#`` to the
``<source>.events`` exchange of every service in ``AUDIT_SOURCES``, so a feature service's
events reach audit by adding its name there: no code changes. Several audit instances share
the queue.

Two green threads per instance: the reader takes deliveries (up to ``AUDIT_PREFETCH``
unacknowledged) and turns each into an entry; the writer appends up to ``AUDIT_BATCH_SIZE``
of them, or whatever ``AUDIT_BATCH_WAIT_MS`` gathered, in ONE transaction with one multi-row
INSERT, then acknowledges the whole batch with a single ``multiple`` ack. While the writer
waits on PostgreSQL the reader keeps filling the next batch. A message is acknowledged only
after its entry is committed: a crash loses nothing, and the redelivery is skipped as a
duplicate of its ``event_id``.
"""

import logging
import threading
import time

from kombu import Connection, Consumer, Queue, binding
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from audit import entries
from audit.redaction import Redactor
from shared import compat, tracing
from shared import config as cfg
from shared.backoff import NO_JITTER, WIDE_JITTER, Backoff
from shared.hub import Hub
from shared.senders import Senders, user_of

__all__ = ["TrailConsumer", "Trail", "SOURCES_KEY", "QUEUE_KEY",
           "QUEUE_VERSION_KEY", "BATCH_SIZE_KEY", "BATCH_WAIT_MS_KEY", "PREFETCH_KEY",
           "REDACT_KEYS_KEY", "MAX_DATA_BYTES_KEY", "DEFAULT_SOURCES"]

log = logging.getLogger(__name__)

SOURCES_KEY = "AUDIT_SOURCES"
QUEUE_KEY = "AUDIT_QUEUE"
QUEUE_VERSION_KEY = "AUDIT_QUEUE_VERSION"
BATCH_SIZE_KEY = "AUDIT_BATCH_SIZE"
BATCH_WAIT_MS_KEY = "AUDIT_BATCH_WAIT_MS"
PREFETCH_KEY = "AUDIT_PREFETCH"
REDACT_KEYS_KEY = "AUDIT_REDACT_KEYS"
MAX_DATA_BYTES_KEY = "AUDIT_MAX_DATA_BYTES"
HEARTBEAT_KEY = "HEARTBEAT"
DEFAULT_SOURCES = ("identity", "auth", "authz", "audit")  # audit: its own task.dead_lettered
DEFAULT_QUEUE = "audit.events"
READY_TIMEOUT = 10.0
DRAIN_TIMEOUT = 0.25
YIELD_EVERY = 20  # deliveries between two yields of the reader to the writer


class Stats:
    def __init__(self):
        self.received = self.written = self.duplicates = self.batches = 0
        self.failures = self.placeholders = 0
        self.dropped_sender = 0  # events not sent by their source's identity (shared.senders)
        self.connected = False
        self.last_error = None
        self.last_batch = None

    def to_dict(self):
        return dict(vars(self))


class Trail:
    """What a worker sees of the consumer: its redaction list, data limit and statistics."""

    def __init__(self, redactor, max_data_bytes, stats):
        self.redactor = redactor
        self.max_data_bytes = max_data_bytes
        self.stats = stats


class TrailConsumer(DependencyProvider):
    """Consumes the sources' events in batches (see the module docstring)."""

    hub = Hub()
    reads_every_event = True  # deploy/broker_users.py: bound to every service's events

    def setup(self):
        config = self.container.config
        self.amqp_uri = config[cfg.AMQP_URI_KEY]
        self.sources = cfg.list_setting(config, SOURCES_KEY, DEFAULT_SOURCES, separators=", ")
        self.queue_name = cfg.setting(config, QUEUE_KEY, DEFAULT_QUEUE)
        self.batch_size = max(1, cfg.setting(config, BATCH_SIZE_KEY, 1000, int))
        self.batch_wait = max(0.001, cfg.setting(config, BATCH_WAIT_MS_KEY, 200, float) / 1000)
        self.prefetch = max(1, cfg.setting(config, PREFETCH_KEY, 2 * self.batch_size, int))
        # classic queues version 2 (RabbitMQ >= 3.10) spend less broker CPU per persistent
        # message; 0 leaves it to the broker
        self.queue_version = cfg.setting(config, QUEUE_VERSION_KEY, 2, int)
        self.heartbeat = cfg.setting(config, HEARTBEAT_KEY, 60, int)
        self.max_data_bytes = cfg.setting(config, MAX_DATA_BYTES_KEY, entries.MAX_DATA_BYTES,
                                          int)
        self.redactor = Redactor(cfg.list_setting(config, REDACT_KEYS_KEY, separators=", "))
        self.senders = Senders(config, own=self.container.service_name)
        self.stats = Stats()
        self._buffer = []  # (message, entry, generation) in delivery order
        self._buffer_since = 0.0
        self._generation = 0  # bumped per connection: acks of an older one are void
        self._running = False
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._reader_done = threading.Event()
        self._writer_done = threading.Event()
        self._connection = None
        self._threads = []
        self.hub.add_info(self.health_info)

    def health_info(self):
        return {"consumer": {"queue": self.queue_name, "sources": self.sources,
                             "buffered": len(self._buffer), **self.stats.to_dict()}}

    def start(self):
        self.engine = self.hub.database().engine
        self._running = True
        self._threads = [
            self.container.spawn_managed_thread(self._read_loop, identifier="audit-reader"),
            self.container.spawn_managed_thread(self._write_loop, identifier="audit-writer"),
        ]
        # like nameko's own consumers: started means consuming (unless the broker is down,
        # in which case the reader keeps trying in the background)
        if not self._ready.wait(READY_TIMEOUT):
            log.warning("audit consumer not connected yet (%s); still trying",
                        self.stats.last_error)

    def stop(self):
        """Stop taking deliveries, write and acknowledge what was taken, then disconnect."""
        self._running = False
        self._wake.set()
        self._reader_done.wait(30)
        self._writer_done.wait(30)
        self._close()

    def kill(self):
        self._running = False
        self._wake.set()
        for thread in self._threads:
            thread.kill()
        self._close()

    def get_dependency(self, worker_ctx):
        return Trail(self.redactor, self.max_data_bytes, self.stats)

    # -- broker ------------------------------------------------------------------------------
    def queue(self):
        exchanges = [get_event_exchange(source, self.container.config) for source in
                     self.sources]
        arguments = {"x-queue-version": self.queue_version} if self.queue_version else {}
        return Queue(self.queue_name, durable=True, auto_delete=False,
                     queue_arguments=arguments,
                     bindings=[binding(exchange, routing_key="#") for exchange in exchanges])

    def _close(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # noqa: BLE001 - closing a broken connection; nothing to save
                pass

    def _read_loop(self):
        backoff = Backoff(initial=0.2, maximum=5.0, jitter=WIDE_JITTER)
        try:
            while self._running:
                try:
                    self._consume()
                    backoff.reset()
                except Exception as exc:  # noqa: BLE001 - reconnect whatever broke
                    self.stats.connected = False
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    self._close()
                    delay = backoff.next()
                    log.warning("audit consumer lost the broker (%s); reconnecting in %.1fs",
                                self.stats.last_error, delay)
                    deadline = time.monotonic() + delay
                    while self._running and time.monotonic() < deadline:
                        time.sleep(0.05)
        finally:
            self._reader_done.set()
            self._wake.set()

    def _consume(self):
        connection = Connection(self.amqp_uri, heartbeat=self.heartbeat, connect_timeout=5,
                                ssl=cfg.amqp_ssl(self.container.config) or False)
        self._connection = connection
        connection.ensure_connection(max_retries=1)
        sock = compat.read_ahead(connection.connection)
        channel = connection.channel()
        queue = self.queue()(channel)
        queue.declare()
        consumer = Consumer(channel, queues=[queue], on_message=self._on_message,
                            no_ack=False, prefetch_count=self.prefetch)
        self._generation += 1
        generation = self._generation
        consumer.consume()
        self.stats.connected = True
        self._ready.set()
        last_beat = time.monotonic()
        if sock is not None:
            sock.settimeout(DRAIN_TIMEOUT)
        drain_timeout = None if sock is not None else DRAIN_TIMEOUT
        drained = 0
        while self._running:
            try:
                connection.drain_events(timeout=drain_timeout)
            except TimeoutError:
                pass
            drained += 1
            if drained % YIELD_EVERY == 0:
                # while deliveries keep coming the socket never blocks, so this greenthread
                # would never let the writer (waiting on PostgreSQL) run: yield now and then
                time.sleep(0)
            if time.monotonic() - last_beat > 1.0:
                connection.heartbeat_check()
                last_beat = time.monotonic()
        # stopping: no more deliveries; what is buffered is written and acked by the writer
        if sock is not None:
            sock.settimeout(5.0)
        consumer.cancel()
        self._wake.set()
        while self._buffer and generation == self._generation:
            time.sleep(0.01)

    def _on_message(self, message):
        routing_key = message.delivery_info.get("routing_key") or ""
        exchange = message.delivery_info.get("exchange") or ""
        source = exchange[:-len(".events")] if exchange.endswith(".events") else exchange
        if not self.senders.accepts(user_of(message), source):
            self.senders.refuse("audit trail", source, user_of(message),
                                message.properties.get("message_id"))
            self.stats.dropped_sender += 1
            # no entry; acknowledged with the batch it falls in
            self._buffer.append((message, None, self._generation))
            self._wake.set()
            return None
        if not tracing.enabled():
            return self._take(message, routing_key, source)
        # the event's consumer span, in the trace of the unit of work that wrote it
        headers = message.headers or {}
        parent = {key: headers.get(f"nameko.{key}")
                  for key in (tracing.TRACEPARENT, tracing.TRACESTATE)}
        with tracing.span(f"{routing_key} process", tracing.SpanKind.CONSUMER,
                          parent=tracing.carrier_of(parent), attributes={
                              "messaging.system": "rabbitmq",
                              "messaging.operation.type": "process",
                              "messaging.destination.name": exchange,
                              "plinth.event_type": routing_key,
                              "plinth.handler": "audit.trail"}):
            return self._take(message, routing_key, source)

    def _take(self, message, routing_key, source):
        try:
            entry = entries.from_event(entries.decode(message.body), routing_key,
                                       source, message.headers, self.redactor,
                                       body=message.body, max_data_bytes=self.max_data_bytes)
        except Exception as exc:  # a message must never wedge the consumer
            log.exception("audit could not read an event of %s; recording it as malformed",
                          source)
            entry = entries.from_event(None, routing_key, source, {},
                                       body=message.body, reason=type(exc).__name__)
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append((message, entry, self._generation))
        self.stats.received += 1
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    # -- database ----------------------------------------------------------------------------
    def _write_loop(self):
        try:
            while True:
                self._wake.clear()  # before looking, so no wake-up falls between the two
                if not self._buffer:
                    if not self._running and self._reader_done.is_set():
                        return
                    self._wake.wait(0.5)
                    continue
                waited = time.monotonic() - self._buffer_since
                if self._running and len(self._buffer) < self.batch_size \
                        and waited < self.batch_wait:
                    self._wake.wait(self.batch_wait - waited)
                    continue
                batch = self._buffer[:self.batch_size]
                del self._buffer[:len(batch)]
                self._buffer_since = time.monotonic()
                self._write(batch)
        finally:
            self._writer_done.set()

    def _write(self, batch):
        attempt = 0
        backoff = Backoff(initial=0.2, maximum=5.0, jitter=NO_JITTER)
        while True:
            try:
                kept = [entry for _, entry, _ in batch if entry is not None]
                if kept:
                    self._append(kept)
                break
            except Exception as exc:  # noqa: BLE001 - the batch is kept and retried
                attempt += 1
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                log.error("audit could not write a batch of %d (attempt %d): %s",
                          len(batch), attempt, self.stats.last_error)
                if batch[-1][2] != self._generation:
                    return  # its connection is gone: the broker redelivers these anyway
                if not self._running and attempt >= 3:
                    return  # shutting down: left unacked, so redelivered to the next one
                time.sleep(backoff.next())
        message, _, generation = batch[-1]
        if generation == self._generation:
            try:
                message.ack(multiple=True)
            except Exception as exc:  # noqa: BLE001 - connection gone: they come back again
                log.warning("audit could not acknowledge a batch (%s); it will be redelivered "
                            "and skipped as duplicates", exc)

    def _append(self, batch):
        started = time.monotonic()
        try:
            with self.engine.begin() as conn:
                rows, _ = entries.append(conn, batch)
        except StatementError as exc:
            if not _refused(exc):
                raise
            if len(batch) > 1:
                # one entry the database refuses must not hold back the others: write them
                # one by one, and an entry it still refuses as a placeholder saying so
                log.warning("audit batch refused (%s); writing its entries one by one",
                            _reason(exc))
                for entry in batch:
                    self._append([entry])
                return
            rows, _ = self._placeholder(batch[0], exc)
        self.stats.written += len(rows)
        self.stats.duplicates += len(batch) - len(rows)
        self.stats.batches += 1
        self.stats.last_batch = {"size": len(batch),
                                 "ms": round((time.monotonic() - started) * 1000, 1)}

    def _placeholder(self, entry, exc):
        self.stats.placeholders += 1
        log.error("audit could not store event %s (%s); storing a placeholder",
                  entry["event_id"], _reason(exc))
        with self.engine.begin() as conn:
            return entries.append(conn, [entries.placeholder(entry, _reason(exc))])


def _reason(exc):
    return type(getattr(exc, "orig", None) or exc).__name__


def _refused(exc):
    """True when the database (or its driver) refused the data itself, as opposed to a lost
    connection or a broken schema, which retrying the whole batch later may cure."""
    if isinstance(exc, DBAPIError):
        return not exc.connection_invalidated and isinstance(exc, DataError | IntegrityError)
    return True  # raised while binding parameters, before reaching the database
