"""Retention (shared/retention.py) in a running auth service on PostgreSQL: its periodic task,
dispatched as the schedule does, purges old sent outbox rows, old dedupe marks and sessions
expired long ago; fresh rows, rows not sent yet and live sessions stay."""

import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from auth.models import RefreshToken, Session
from shared import outbox
from shared.db import UnitOfWork, make_engine
from tests.support.auth_helpers import start_auth

OUTBOX, PROCESSED = outbox.tables("auth")


def _session(conn, expired_days):
    now = outbox.utcnow()
    session_id = str(uuid.uuid4())
    conn.execute(sa.insert(Session).values(
        id=session_id, user_id=str(uuid.uuid4()), account_key="a" * 64, client_key="c" * 64,
        client={}, created_at=now - timedelta(days=40), last_used_at=now - timedelta(days=40),
        expires_at=now - timedelta(days=expired_days)))
    conn.execute(sa.insert(RefreshToken).values(token_hash=uuid.uuid4().hex * 2,
                                                session_id=session_id, created_at=now))
    return session_id


def _outbox_row(conn, sent_days):
    now, event_id = outbox.utcnow(), str(uuid.uuid4())
    conn.execute(OUTBOX.insert().values(
        event_id=event_id, event_type="retention.probe", payload={}, attempts=0,
        created_at=now - timedelta(days=60),
        # parked: the relay leaves it alone, as it would a row it cannot publish
        parked_at=None if sent_days is not None else now,
        next_attempt_at=None if sent_days is not None else now + timedelta(days=1),
        sent_at=None if sent_days is None else now - timedelta(days=sent_days)))
    return event_id


def _mark(conn, days):
    event_id = str(uuid.uuid4())
    conn.execute(PROCESSED.insert().values(
        event_id=event_id, processed_at=outbox.utcnow() - timedelta(days=days)))
    return event_id


def test_the_retention_task_purges_old_rows_and_expired_sessions_and_keeps_the_rest(
        start_service, pg_uri):
    start_auth(start_service, RETENTION_OUTBOX_SENT_DAYS=2, RETENTION_PROCESSED_DAYS=10,
               AUTH_SESSION_RETENTION_DAYS=1)
    engine = make_engine(pg_uri, "auth")
    try:
        with engine.begin() as conn:
            gone = {"outbox": {_outbox_row(conn, 3)}, "marks": {_mark(conn, 11)},
                    "sessions": {_session(conn, 2)}}
            kept = {"outbox": {_outbox_row(conn, 1), _outbox_row(conn, None)},
                    "marks": {_mark(conn, 9)},
                    "sessions": {_session(conn, 0.5), _session(conn, -1)}}  # -1: still live
        uow = UnitOfWork(sessionmaker(bind=engine), "auth", {})
        task = uow.dispatch("auth.retention.purge", {"slot": 0, "every": 3600})
        uow.commit()
        uow.close()

        def present():
            with engine.connect() as conn:
                return {
                    "outbox": set(conn.execute(sa.select(OUTBOX.c.event_id).where(
                        OUTBOX.c.event_type == "retention.probe")).scalars()),
                    "marks": set(conn.execute(sa.select(PROCESSED.c.event_id)).scalars()),
                    "sessions": set(conn.execute(sa.select(Session.id)).scalars()),
                    "tokens": set(conn.execute(sa.select(RefreshToken.session_id)).scalars())}

        def purged(now):
            return not any(gone[name] & now[name] for name in gone)

        deadline = time.monotonic() + 20
        while not purged(now := present()):
            assert time.monotonic() < deadline, f"not purged: {gone} in {now}"
            time.sleep(0.1)
        assert task["task_id"] in now["marks"]  # the kernel's mark of the task itself
        for name in ("outbox", "marks", "sessions"):
            assert kept[name] <= now[name], name
        assert not gone["sessions"] & now["tokens"]  # a purged session's tokens go with it
        assert kept["sessions"] <= now["tokens"]
    finally:
        engine.dispose()
