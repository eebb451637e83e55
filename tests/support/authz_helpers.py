"""Builders and probes for authz's tests."""

import json
import shutil
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from nameko.standalone.events import event_dispatcher

from shared import migrations
from shared.db import make_engine


def new_role_name(tag="role"):
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def new_user_id():
    return str(uuid.uuid4())


def migrated_sqlite(directory, template={}):  # noqa: B006 - a cache on purpose
    """An engine on a SQLite file holding authz's migrated schema (built-in roles included).

    The migration runs once per process into a template file; each call copies it, which is
    much faster than migrating again.
    """
    if "path" not in template or not template["path"].exists():
        template["path"] = directory / "authz-template.db"
        engine = make_engine(f"sqlite:///{template['path']}", "authz")
        migrations.upgrade("authz", engine)
        engine.dispose()
    path = directory / f"authz-{uuid.uuid4().hex[:8]}.db"
    shutil.copy(template["path"], path)
    return make_engine(f"sqlite:///{path}", "authz")


def envelope(event_type, subject, data=None, event_id=None, source="identity"):
    """An event as identity's outbox relay would publish it."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "source": source,
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "actor": {"id": None, "type": "system"},
        "request_id": f"req-{uuid.uuid4().hex[:8]}",
        "subject": subject,
        "data": data or {},
    }


def publish_identity_event(amqp_uri, event_type, payload):
    """Publish ``payload`` on identity's events exchange, as identity's relay does."""
    dispatch = event_dispatcher({"AMQP_URI": amqp_uri})
    dispatch("identity", event_type, payload)


def wait_until(probe, timeout=5.0, interval=0.02):
    """Poll ``probe`` until it returns something truthy; return that (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def outbox_events(engine, event_type=None):
    """authz's queued events (payloads), oldest first (its tasks left out)."""
    query = "SELECT payload FROM {schema}outbox ORDER BY id"
    schema = "" if engine.dialect.name == "sqlite" else "authz."
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query.format(schema=schema))).scalars().all()
    payloads = [row if isinstance(row, dict) else json.loads(row) for row in rows]
    return [p for p in payloads
            if "event_type" in p and event_type in (None, p["event_type"])]
