"""shared/retention.py on SQLite: what a purge deletes and what it must leave."""

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from shared import outbox
from shared.config import ConfigError
from shared.db import UnitOfWork, make_engine
from shared.retention import Retention, RetentionPolicy, purge, retention_every
from tests.support.probe.models import Base

OUTBOX, PROCESSED = outbox.tables("probe")
NOW = outbox.utcnow()


@pytest.fixture
def uow(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/probe.db", "probe")
    Base.metadata.create_all(engine)
    unit = UnitOfWork(sessionmaker(bind=engine), "probe", {})
    yield unit
    unit.close()
    engine.dispose()


def add_row(uow, created_days, sent_days=None, parked=False):
    event_id = str(uuid.uuid4())
    uow.session.execute(OUTBOX.insert().values(
        event_id=event_id, event_type="thing.happened", payload={}, attempts=0,
        created_at=NOW - timedelta(days=created_days),
        sent_at=None if sent_days is None else NOW - timedelta(days=sent_days),
        parked_at=NOW - timedelta(days=created_days) if parked else None))
    uow.commit()
    return event_id


def add_mark(uow, days):
    event_id = str(uuid.uuid4())
    uow.session.execute(PROCESSED.insert().values(event_id=event_id,
                                                  processed_at=NOW - timedelta(days=days)))
    uow.commit()
    return event_id


def outbox_ids(uow):
    return set(uow.session.execute(sa.select(OUTBOX.c.event_id)).scalars())


def mark_ids(uow):
    return set(uow.session.execute(sa.select(PROCESSED.c.event_id)).scalars())


def test_sent_rows_past_their_age_go_and_fresh_or_unsent_rows_stay(uow):
    old_sent = [add_row(uow, 5, sent_days=3) for _ in range(5)]
    fresh_sent = add_row(uow, 5, sent_days=0.5)
    old_pending = add_row(uow, 40)  # never sent: however old, it must still go out
    old_parked = add_row(uow, 40, parked=True)
    policy = RetentionPolicy(outbox_sent=timedelta(days=1), batch=2)  # three batches
    counts = purge(uow, policy, now=NOW)
    assert counts["outbox"] == 5
    left = outbox_ids(uow)
    assert not left & set(old_sent)
    assert {fresh_sent, old_pending, old_parked} <= left


def test_dedupe_marks_past_their_age_go_and_fresh_ones_stay(uow):
    old = [add_mark(uow, 31) for _ in range(3)]
    fresh = add_mark(uow, 29)
    counts = purge(uow, RetentionPolicy(processed=timedelta(days=30)), now=NOW)
    assert counts["processed_events"] == 3
    assert mark_ids(uow) == {fresh} and not set(old) & mark_ids(uow)


def test_a_services_own_purge_runs_with_its_count(uow):
    seen = []

    def purge_things(session, now):
        seen.append(now)
        return 7

    counts = purge(uow, RetentionPolicy(), now=NOW, also={"things": purge_things})
    assert counts == {"outbox": 0, "processed_events": 0, "things": 7} and seen == [NOW]


def test_the_policy_reads_days_from_config_and_refuses_nonsense():
    policy = RetentionPolicy.from_config({"RETENTION_OUTBOX_SENT_DAYS": 2,
                                          "RETENTION_PROCESSED_DAYS": "0.5",
                                          "RETENTION_BATCH": 10})
    assert policy == RetentionPolicy(timedelta(days=2), timedelta(hours=12), 10)
    assert RetentionPolicy.from_config({}) == RetentionPolicy()
    for bad in ({"RETENTION_OUTBOX_SENT_DAYS": 0}, {"RETENTION_PROCESSED_DAYS": -1},
                {"RETENTION_BATCH": 0}):
        with pytest.raises(ConfigError):
            RetentionPolicy.from_config(bad)


def test_the_period_comes_from_the_environment(monkeypatch):
    assert retention_every() == 3600
    monkeypatch.setenv("RETENTION_EVERY", "60")
    assert retention_every() == 60
    for bad in ("soon", "0"):
        monkeypatch.setenv("RETENTION_EVERY", bad)
        with pytest.raises(ConfigError, match="RETENTION_EVERY"):
            retention_every()


def test_every_service_declares_its_retention_task_hourly():
    from audit.service import AuditService
    from auth.service import AuthService
    from authz.service import AuthzService
    from identity.service import IdentityService

    for cls in (AuditService, AuthService, AuthzService, IdentityService):
        [entrypoint] = cls.purge_retention.nameko_entrypoints
        assert (entrypoint.name, entrypoint.every) == (f"{cls.name}.retention.purge", 3600)
        assert isinstance(cls.retention, Retention)
