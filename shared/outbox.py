"""Event envelopes and the transactional outbox: events commit with the change they announce.

A service writes its event rows in the same transaction as its change (``add``); the ``Relay``
publishes pending rows to the service's nameko events exchange and marks them sent only once
the broker has confirmed them *and* routed them to a queue. Delivery is therefore at-least-once,
and consumers deduplicate on ``event_id`` through the ``processed_events`` table
(``record_processed``).

A row the relay could not publish waits (``next_attempt_at``, exponential backoff) without
holding back the rows behind it: unroutable (no queue bound yet: its consumers have not started
for the first time), or refused by the broker (too large, a header it cannot encode). After
``OUTBOX_MAX_ATTEMPTS`` failures the row is *parked*: counted apart on ``/health`` and
``/metrics`` and tried only every ``OUTBOX_PARKED_RETRY`` seconds, so that it is never dropped
and costs nothing meanwhile. Broker outages and timeouts are not the row's fault and count no
attempt. Every wait on the broker ends after ``OUTBOX_CONFIRM_TIMEOUT`` seconds, so a broker
that stops answering cannot hold the rows' locks.
"""

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from nameko.standalone.events import get_event_exchange

from shared import task_queues, tracing
from shared.backoff import WIDE_JITTER, Backoff
from shared.config import amqp_ssl, setting
from shared.context import ACTOR_ID_KEY, ACTOR_TYPE_KEY, REQUEST_ID_KEY, actor_from
from shared.publishing import ConfirmedPublisher, Outgoing, is_broker_trouble

__all__ = ["define_tables", "tables", "envelope", "add", "find", "record_processed", "Relay",
           "RelayPolicy", "ENVELOPE_VERSION"]

log = logging.getLogger(__name__)
ENVELOPE_VERSION = 1
COUNT_EVERY = 2.0  # seconds between two counts of the backlog
_TABLES = {}


def define_tables(metadata):
    """Add the ``outbox`` and ``processed_events`` tables to a service's metadata."""
    schema = metadata.schema
    outbox = sa.Table(
        "outbox", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        # when a row that failed may be tried again; set aside after too many failures
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        # the W3C trace context of the unit of work that wrote the row ({traceparent, ...})
        sa.Column("trace_context", sa.JSON, nullable=True),
    )
    processed = sa.Table(
        "processed_events", metadata,
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    _TABLES[schema] = (outbox, processed)
    return outbox, processed


def tables(service):
    """``service``'s (outbox, processed_events) tables."""
    return _tables(service)


def _tables(service):
    try:
        return _TABLES[service]
    except KeyError:
        raise RuntimeError(f"outbox tables for {service!r} are not defined; call "
                           "shared.outbox.define_tables(metadata) in its models") from None


def utcnow():
    return datetime.now(UTC)


def envelope(service, event_type, subject, data, context_data, actor=None):
    """The event as every consumer sees it (README, "The services": Envelope)."""
    actor = actor or actor_from(context_data)
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "source": service,
        "version": ENVELOPE_VERSION,
        "occurred_at": utcnow().isoformat(),
        "actor": actor.to_dict(),
        "request_id": context_data.get(REQUEST_ID_KEY),
        "subject": None if subject is None else str(subject),
        "data": data,
    }


def add(session, service, env, trace_context=None):
    """Write ``env`` (an event, or a task of shared.tasks) to ``service``'s outbox;
    ``trace_context`` (``traceparent`` and ``tracestate``) is the writer's, sent on with it."""
    outbox, _ = _tables(service)
    session.execute(outbox.insert().values(
        event_id=env.get("event_id") or env["task_id"],
        event_type=env.get("event_type") or env["task_type"], payload=env,
        created_at=utcnow(), attempts=0, trace_context=trace_context or None,
    ))


def find(session, service, event_id):
    """The envelope of the row ``event_id`` (an event or task id) in ``service``'s outbox, or
    None."""
    outbox, _ = _tables(service)
    return session.execute(sa.select(outbox.c.payload)
                           .where(outbox.c.event_id == event_id)).scalar()


def record_processed(session, service, event_id):
    _, processed = _tables(service)
    # parameters apart from the statement, so SQLAlchemy compiles it once per process
    session.execute(processed.insert(), {"event_id": event_id, "processed_at": utcnow()})


def forget_processed(session, service, event_id):
    _, processed = _tables(service)
    session.execute(processed.delete().where(processed.c.event_id == event_id))


def headers_for(env, trace_context=None):
    """nameko context headers, so a consumer's worker carries the event's request, actor and
    trace context."""
    headers = {f"nameko.{REQUEST_ID_KEY}": env.get("request_id")}
    actor = env.get("actor") or {}
    headers[f"nameko.{ACTOR_TYPE_KEY}"] = actor.get("type")
    headers[f"nameko.{ACTOR_ID_KEY}"] = actor.get("id")
    for key, value in tracing.carrier_of(trace_context or {}).items():
        headers[f"nameko.{key}"] = value
    return {k: v for k, v in headers.items() if v is not None}


@dataclass(frozen=True)
class RelayPolicy:
    """How the relay treats rows it could not publish (see the module docstring).

    Config: ``OUTBOX_MAX_ATTEMPTS``, ``OUTBOX_RETRY_DELAY`` (first wait, seconds),
    ``OUTBOX_RETRY_MAX_DELAY``, ``OUTBOX_PARKED_RETRY``, ``OUTBOX_CONFIRM_TIMEOUT``,
    ``OUTBOX_MAX_EVENT_BYTES`` (larger events are refused before they reach the broker).
    """

    max_attempts: int = 10
    base: float = 1.0
    cap: float = 60.0
    parked_retry: float = 600.0
    confirm_timeout: float = 5.0
    max_event_bytes: int = 1024 * 1024

    def wait(self, attempts):
        """Seconds before the next try of a row that has failed ``attempts`` times."""
        if attempts >= self.max_attempts:
            return self.parked_retry
        return Backoff(self.base, self.cap, jitter=(0.75, 1.25)).delay(attempts - 1)

    @classmethod
    def from_config(cls, config):
        return cls(**{name: setting(config, f"OUTBOX_{name.upper()}", default, type(default))
                      for name, default in (
                          ("max_attempts", cls.max_attempts), ("base", cls.base),
                          ("cap", cls.cap), ("parked_retry", cls.parked_retry),
                          ("confirm_timeout", cls.confirm_timeout),
                          ("max_event_bytes", cls.max_event_bytes))})


class Refused(Exception):
    """The relay will not publish this row (the broker would refuse it)."""


class Relay:
    """Publishes a service's due outbox rows, oldest first, and marks them sent."""

    def __init__(self, engine, service, amqp_uri, interval=0.5, batch=200, config=None,
                 policy=None):
        self.engine = engine
        self.service = service
        self.interval = interval
        self.batch = batch
        self.policy = policy or RelayPolicy()
        self.exchange = get_event_exchange(service, config or {})
        self.outbox = _tables(service)[0]
        self.publisher = ConfirmedPublisher(amqp_uri, timeout=self.policy.confirm_timeout,
                                            ssl=amqp_ssl(config))
        self._wake = threading.Event()
        self._running = False
        self._last_count = 0.0
        self.published = 0
        self.failed = 0
        self.pending = None  # rows not sent yet, parked ones included (None: not counted yet)
        self.parked = None

    # -- work ---------------------------------------------------------------------------------
    def flush(self):
        """Publish one batch of due rows. Returns how many rows it tried; raises, after
        recording what it did, when the broker is in trouble."""
        table, now = self.outbox, utcnow()
        with self.engine.begin() as conn:
            query = (sa.select(table.c.id, table.c.event_type, table.c.payload,
                               table.c.attempts, table.c.trace_context)
                     .where(table.c.sent_at.is_(None),
                            sa.or_(table.c.next_attempt_at.is_(None),
                                   table.c.next_attempt_at <= now))
                     .order_by(table.c.id).limit(self.batch))
            if conn.dialect.name == "postgresql":
                # several instances may relay the same outbox: each takes rows the others
                # have not locked, so a row is normally published once
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            sent, failed, trouble = self._publish_all(rows)
            if sent:
                conn.execute(table.update().where(table.c.id.in_(sent)).values(sent_at=now))
            for row, error in failed:
                self._set_back(conn, row, error, now)
        # committed: what was confirmed stays marked sent even when the rest failed
        self.published += len(sent)
        self.failed += len(failed)
        if trouble is not None:
            raise trouble
        return len(rows)

    def _publish_all(self, rows):
        """Publish ``rows`` as one batch (sent together, confirms collected afterwards).

        Returns (ids confirmed and routed, [(row, error)] refused or unroutable, the broker's
        trouble or None). A row the broker did not confirm is in neither list: it stays due.
        """
        ready, failed = [], []
        for row in rows:
            try:
                ready.append((row, *self._message_for(row)))
            except Exception as exc:  # noqa: BLE001 - the row's own fault: it waits, the rest go
                failed.append((row, f"{type(exc).__name__}: {str(exc)[:200]}"))
        outcomes, trouble = self.publisher.publish_batch([message for _, message, _ in ready]) \
            if ready else ([], None)
        sent = []
        for (row, _, span_), outcome in zip(ready, outcomes, strict=True):
            error = None
            if outcome is True:
                sent.append(row.id)
            elif outcome is False:
                failed.append((row, f"unroutable: no queue is bound to {row.event_type}"))
                if span_ is not None:
                    span_.set_attribute("error.type", "Unroutable")
            elif isinstance(outcome, BaseException) and not is_broker_trouble(outcome):
                failed.append((row, f"{type(outcome).__name__}: {str(outcome)[:200]}"))
                error = outcome
            else:  # not confirmed (or nacked): the broker's trouble, not the row's
                error = outcome if isinstance(outcome, BaseException) else trouble
                trouble = trouble or outcome
            tracing.close_span(span_, error)
        return sent, failed, trouble

    def _message_for(self, row):
        """The row's message and the span of its publish (None without tracing)."""
        body = json.dumps(row.payload)
        if len(body) > self.policy.max_event_bytes:
            raise Refused(f"{len(body)} bytes, more than OUTBOX_MAX_EVENT_BYTES "
                          f"({self.policy.max_event_bytes})")
        stored = row.trace_context if isinstance(row.trace_context, dict) else {}
        message_id = row.payload.get("event_id") or row.payload.get("task_id")
        # a span of the publish, in the trace of the unit of work that wrote the row; the
        # consumers' spans are its children (without tracing here, the row's context goes on)
        span_ = tracing.open_span(f"{row.event_type} publish", tracing.SpanKind.PRODUCER,
                                  parent=tracing.carrier_of(stored), attributes={
                                      "messaging.system": "rabbitmq",
                                      "messaging.operation.type": "publish",
                                      "messaging.message.id": str(message_id),
                                      "plinth.event_type": row.event_type})
        try:
            sent = tracing.inject_span({}, span_) if span_ is not None else stored
            headers = headers_for(row.payload, sent)
            if "task_id" in row.payload:  # a task goes to its service's task queue
                return task_queues.outgoing(row.payload, body, headers,
                                           sender=self.service), span_
            return Outgoing(body, self.exchange, row.event_type, headers, (self.exchange,), {
                "content_type": "application/json", "content_encoding": "utf-8",
                "message_id": message_id}), span_
        except BaseException as exc:
            tracing.close_span(span_, exc)
            raise

    def _set_back(self, conn, row, error, now):
        attempts = row.attempts + 1
        parked = attempts >= self.policy.max_attempts
        log.log(logging.ERROR if parked else logging.WARNING,
                "outbox row %s (%s) of %s failed (attempt %d: %s)%s", row.id, row.event_type,
                self.service, attempts, error, "; parked" if parked else "")
        table = self.outbox
        values = {"attempts": attempts, "last_error": error[:300],
                  "next_attempt_at": now + timedelta(seconds=self.policy.wait(attempts))}
        if parked:
            values["parked_at"] = sa.func.coalesce(table.c.parked_at, now)
        conn.execute(table.update().where(table.c.id == row.id).values(**values))

    def count(self):
        """Refresh ``pending`` and ``parked`` (rows not sent yet, and those set aside)."""
        table = self.outbox
        with self.engine.connect() as conn:
            pending, parked = conn.execute(
                sa.select(sa.func.count(), sa.func.count(table.c.parked_at))
                .where(table.c.sent_at.is_(None))).one()
        self.pending, self.parked = pending, parked
        self._last_count = time.monotonic()

    def backlog(self):
        """The counts for health and metrics (None until first counted)."""
        return {"pending": self.pending, "parked": self.parked}

    def wake(self):
        self._wake.set()

    def stop(self):
        self._running = False
        self._wake.set()

    def run(self):
        self._running = True
        backoff = Backoff(initial=0.4, maximum=5.0, jitter=WIDE_JITTER)
        while self._running:
            try:
                while self._running and self.flush() == self.batch:
                    pass
                backoff.reset()
                self._housekeeping()
            except Exception as exc:  # noqa: BLE001 - keep relaying whatever went wrong
                self.publisher.close()
                delay = backoff.next()
                log.warning("outbox relay for %s failed (%s: %s); retrying in %.1fs",
                            self.service, type(exc).__name__, exc, delay)
                self._wake.wait(delay)
                self._wake.clear()
                continue
            self._wake.wait(self.interval)
            self._wake.clear()
        self.publisher.close()

    def _housekeeping(self):
        # sent rows are purged by each service's retention task (shared.retention)
        if time.monotonic() - self._last_count > COUNT_EVERY:
            self.count()
