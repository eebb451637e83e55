"""Event envelopes and the transactional outbox: events commit with the change they announce.

A service writes its event rows in the same transaction as its change (``add``); the ``Relay``
publishes pending rows to the service's nameko events exchange with publisher confirms and only
then marks them sent. Delivery is therefore at-least-once, and consumers deduplicate on
``event_id`` through the ``processed_events`` table (``record_processed``).
"""

import logging
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange

from shared.context import ACTOR_ID_KEY, ACTOR_TYPE_KEY, REQUEST_ID_KEY, actor_from

__all__ = ["define_tables", "envelope", "add", "record_processed", "Relay", "ENVELOPE_VERSION"]

log = logging.getLogger(__name__)
ENVELOPE_VERSION = 1
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
    )
    processed = sa.Table(
        "processed_events", metadata,
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    _TABLES[schema] = (outbox, processed)
    return outbox, processed


def _tables(service):
    try:
        return _TABLES[service]
    except KeyError:
        raise RuntimeError(f"outbox tables for {service!r} are not defined; call "
                           "shared.outbox.define_tables(metadata) in its models") from None


def utcnow():
    return datetime.now(UTC)


def envelope(service, event_type, subject, data, context_data, actor=None):
    """The event as every consumer sees it (SPEC §2)."""
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


def add(session, service, env):
    outbox, _ = _tables(service)
    session.execute(outbox.insert().values(
        event_id=env["event_id"], event_type=env["event_type"], payload=env,
        created_at=utcnow(), attempts=0,
    ))


def record_processed(session, service, event_id):
    _, processed = _tables(service)
    session.execute(processed.insert().values(event_id=event_id, processed_at=utcnow()))


def headers_for(env):
    """nameko context headers, so a consumer's worker carries the event's request and actor."""
    headers = {f"nameko.{REQUEST_ID_KEY}": env.get("request_id")}
    actor = env.get("actor") or {}
    headers[f"nameko.{ACTOR_TYPE_KEY}"] = actor.get("type")
    headers[f"nameko.{ACTOR_ID_KEY}"] = actor.get("id")
    return {k: v for k, v in headers.items() if v is not None}


class Relay:
    """Publishes a service's pending outbox rows, oldest first, then marks them sent."""

    def __init__(self, engine, service, amqp_uri, interval=0.5, batch=200,
                 retention=timedelta(days=1), config=None):
        self.engine = engine
        self.service = service
        self.amqp_uri = amqp_uri
        self.interval = interval
        self.batch = batch
        self.retention = retention
        self.exchange = get_event_exchange(service, config or {})
        self.outbox = _tables(service)[0]
        self._wake = threading.Event()
        self._running = False
        self._connection = None
        self._producer = None
        self._last_prune = 0.0
        self.published = 0

    # -- broker ------------------------------------------------------------------------------
    def _producer_for(self):
        if self._producer is None:
            self._connection = Connection(
                self.amqp_uri, connect_timeout=3,
                transport_options={"confirm_publish": True, "max_retries": 1},
            )
            self._connection.ensure_connection(max_retries=1)
            channel = self._connection.channel()
            self.exchange(channel).declare()
            self._producer = Producer(channel, exchange=self.exchange)
        return self._producer

    def _drop_connection(self):
        try:
            if self._connection is not None:
                self._connection.release()
        except Exception:  # noqa: BLE001 - already broken; we only want it gone
            pass
        self._connection = self._producer = None

    # -- work ---------------------------------------------------------------------------------
    def flush(self):
        """Publish one batch. Returns how many rows it sent; raises on broker or DB errors."""
        table = self.outbox
        with self.engine.begin() as conn:
            query = (sa.select(table.c.id, table.c.event_type, table.c.payload)
                     .where(table.c.sent_at.is_(None))
                     .order_by(table.c.id).limit(self.batch))
            if conn.dialect.name == "postgresql":
                # several instances may relay the same outbox: each takes rows the others
                # have not locked, so a row is normally published once
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if not rows:
                return 0
            sent, error = [], None
            try:
                producer = self._producer_for()
                for row in rows:
                    producer.publish(
                        row.payload, routing_key=row.event_type, serializer="json",
                        headers=headers_for(row.payload), delivery_mode=2, retry=False,
                        message_id=row.payload.get("event_id"),
                    )
                    sent.append(row.id)
            except Exception as exc:  # noqa: BLE001 - recorded below, raised after commit
                error = exc
            if sent:
                conn.execute(table.update().where(table.c.id.in_(sent)).values(sent_at=utcnow()))
            if error is not None:
                conn.execute(table.update().where(table.c.id.in_([r.id for r in rows[len(sent):]]))
                             .values(attempts=table.c.attempts + 1))
        # committed: what was confirmed stays marked sent even when the rest failed
        self.published += len(sent)
        if error is not None:
            raise error
        return len(sent)

    def prune(self):
        cutoff = utcnow() - self.retention
        with self.engine.begin() as conn:
            conn.execute(self.outbox.delete().where(self.outbox.c.sent_at < cutoff))

    def wake(self):
        self._wake.set()

    def stop(self):
        self._running = False
        self._wake.set()

    def run(self):
        self._running = True
        failures = 0
        while self._running:
            try:
                while self._running and self.flush() == self.batch:
                    pass
                failures = 0
                if time.monotonic() - self._last_prune > 3600:
                    self._last_prune = time.monotonic()
                    self.prune()
            except Exception as exc:  # noqa: BLE001 - keep relaying whatever went wrong
                self._drop_connection()
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 5)) * (0.5 + random.random())
                log.warning("outbox relay for %s failed (%s: %s); retrying in %.1fs",
                            self.service, type(exc).__name__, exc, delay)
                self._wake.wait(delay)
                self._wake.clear()
                continue
            self._wake.wait(self.interval)
            self._wake.clear()
        self._drop_connection()
