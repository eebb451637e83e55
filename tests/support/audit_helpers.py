"""Builders and probes for the audit tests: publish events as services do, read the trail."""

import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange

from shared.db import make_engine


def envelope(event_type="thing.happened", source="identity", **fields):
    """An event envelope as the kernel's outbox publishes it (``shared.outbox.envelope``)."""
    body = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "source": source,
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "actor": {"id": str(uuid.uuid4()), "type": "user"},
        "request_id": f"req-{uuid.uuid4().hex[:12]}",
        "subject": str(uuid.uuid4()),
        "data": {},
    }
    body.update(fields)
    return body


class EventPublisher:
    """Publishes to ``<service>.events`` exchanges over one kept connection."""

    def __init__(self, amqp_uri):
        self.connection = Connection(amqp_uri)
        self.channel = self.connection.channel()
        self.producer = Producer(self.channel)
        self._declared = set()

    def _exchange(self, source):
        exchange = get_event_exchange(source, {})
        if source not in self._declared:
            exchange(self.channel).declare()
            self._declared.add(source)
        return exchange

    def publish(self, body, source=None, routing_key=None, headers=None, raw=False):
        """Publish ``body`` (an envelope, or bytes when ``raw``) as ``source``'s event."""
        source = source or body["source"]
        routing_key = routing_key or body["event_type"]
        if raw:
            self.producer.publish(body, exchange=self._exchange(source), routing_key=routing_key,
                                  headers=headers or {}, content_type="application/json",
                                  content_encoding="binary", delivery_mode=2)
        else:
            self.producer.publish(body, exchange=self._exchange(source), routing_key=routing_key,
                                  headers=headers or {}, serializer="json", delivery_mode=2)
        return body

    def close(self):
        self.connection.release()


def wait_until(probe, timeout=10.0, interval=0.02):
    """Poll ``probe`` until it returns something truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for_entries(rpc, count, timeout=10.0, **filters):
    """The entries matching ``filters`` once there are ``count`` of them (newest first)."""
    def probe():
        items = rpc.call("audit", "query", kwargs={**filters, "limit": 200})["items"]
        return items if len(items) >= count else None
    return wait_until(probe, timeout) or \
        rpc.call("audit", "query", kwargs={**filters, "limit": 200})["items"]


class Trail:
    """Direct SQL on audit's tables, as the database superuser (tests of tampering)."""

    def __init__(self, db_uri):
        self.engine = make_engine(db_uri, "audit", pool_size=2)

    def execute(self, sql, **params):
        with self.engine.begin() as conn:
            return conn.execute(sa.text(sql), params)

    def scalar(self, sql, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).mappings().all()

    def count(self):
        return self.scalar("SELECT count(*) FROM audit.entries")

    @contextmanager
    def triggers_disabled(self):
        """What an intruder with the owner's rights would do first."""
        self.execute("ALTER TABLE audit.entries DISABLE TRIGGER USER")
        try:
            yield self
        finally:
            self.execute("ALTER TABLE audit.entries ENABLE TRIGGER USER")

    def close(self):
        self.engine.dispose()


def record_many(rpc, count, **fields):
    """Record ``count`` entries through the RPC; returns them in order."""
    return [rpc.call("audit", "record", kwargs={"action": "test.recorded", "source": "tests",
                                                "data": {"n": n}, **fields})
            for n in range(count)]


def consumer_of(container):
    """The running audit container's batch consumer (its ``stats`` say what it did)."""
    from audit.consumer import TrailConsumer

    return next(d for d in container.extensions if isinstance(d, TrailConsumer))
