"""Retention: the periodic purge that keeps a service's kernel tables from growing for ever.

Every service declares the dependency and one periodic task that calls it::

    class IdentityService(kernel.ServiceBase):
        db = Database(Base.metadata)
        retention = Retention()

        @task("identity.retention.purge", every=retention_every())
        def purge_retention(self, task):
            self.retention.purge(self.db)

Each run deletes, in batches of ``RETENTION_BATCH`` rows each committed on its own, the outbox
rows *sent* more than ``RETENTION_OUTBOX_SENT_DAYS`` ago (rows not sent yet, parked ones
included, are never deleted) and the ``processed_events`` rows (event and task dedupe marks)
older than ``RETENTION_PROCESSED_DAYS``: a redelivery older than that would act again, so the
age must outlast any redelivery or dead-letter replay. A service purges its own tables too
by passing ``also={"sessions": callable(session, now)}`` (auth's expired sessions).
``RETENTION_EVERY`` (seconds, read at import) is the period, once per period across the
service's instances (shared.tasks).
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from nameko.extensions import DependencyProvider

from shared import outbox
from shared.config import ConfigError, setting

__all__ = ["Retention", "RetentionPolicy", "purge", "retention_every", "OUTBOX_SENT_DAYS_KEY",
           "PROCESSED_DAYS_KEY", "BATCH_KEY", "EVERY_KEY"]

log = logging.getLogger(__name__)

OUTBOX_SENT_DAYS_KEY = "RETENTION_OUTBOX_SENT_DAYS"
PROCESSED_DAYS_KEY = "RETENTION_PROCESSED_DAYS"
BATCH_KEY = "RETENTION_BATCH"
EVERY_KEY = "RETENTION_EVERY"
DEFAULT_EVERY = 3600


def retention_every(default=DEFAULT_EVERY):
    """The period of the retention task in seconds: ``RETENTION_EVERY`` from the environment
    (a decorator's argument is fixed when the service's module is imported, before any config
    file is read)."""
    value = os.environ.get(EVERY_KEY) or default
    try:
        every = float(value)
    except ValueError:
        raise ConfigError(f"{EVERY_KEY} must be a number of seconds, not {value!r}") from None
    if every <= 0:
        raise ConfigError(f"{EVERY_KEY} must be positive, not {value!r}")
    return every


@dataclass(frozen=True)
class RetentionPolicy:
    """How old a row must be before it is purged, and how many go per statement."""

    outbox_sent: timedelta = timedelta(days=1)
    processed: timedelta = timedelta(days=30)
    batch: int = 5000

    @classmethod
    def from_config(cls, config):
        def days(key, default):
            return _days(config, key, default.total_seconds() / 86400)

        batch = setting(config, BATCH_KEY, cls.batch, int)
        if batch < 1:
            raise ConfigError(f"{BATCH_KEY} must be at least 1, not {batch!r}")
        return cls(days(OUTBOX_SENT_DAYS_KEY, cls.outbox_sent),
                   days(PROCESSED_DAYS_KEY, cls.processed), batch)


def _days(config, key, default):
    value = setting(config, key, default, float)
    if not value > 0:
        raise ConfigError(f"{key} must be a positive number of days, not {value!r}")
    return timedelta(days=value)


def _purge_table(uow, table, key, condition, batch):
    """Delete ``table``'s rows matching ``condition``, ``batch`` at a time, each batch its own
    commit (short transactions, short locks). Returns how many went."""
    total = 0
    while True:
        chosen = sa.select(key).where(condition).limit(batch)
        gone = uow.session.execute(table.delete().where(key.in_(chosen.scalar_subquery()))
                                   .execution_options(synchronize_session=False)).rowcount
        uow.commit()
        total += gone
        if gone < batch:
            return total


def purge(uow, policy, now=None, also=None):
    """Purge ``uow``'s service's sent outbox rows and dedupe marks older than ``policy`` says,
    then run each of ``also`` (``name -> callable(session, now)`` returning a count) in a
    commit of its own. Returns the counts by name."""
    now = now or outbox.utcnow()
    sent, processed = outbox.tables(uow.service)
    counts = {
        "outbox": _purge_table(uow, sent, sent.c.id, sa.and_(
            sent.c.sent_at.is_not(None), sent.c.sent_at < now - policy.outbox_sent),
            policy.batch),
        "processed_events": _purge_table(uow, processed, processed.c.event_id,
                                         processed.c.processed_at < now - policy.processed,
                                         policy.batch),
    }
    for name, purge_rows in (also or {}).items():
        counts[name] = purge_rows(uow.session, now)
        uow.commit()
    if any(counts.values()):
        log.info("retention purged %s", ", ".join(f"{n} {name}" for name, n in counts.items()))
    return counts


class Purger:
    """What ``Retention`` gives a worker: the service's policy, ready to purge, and the ages
    of the service's own tables."""

    def __init__(self, policy, ages):
        self.policy = policy
        self.ages = ages

    def age(self, name):
        return self.ages[name]

    def purge(self, uow, now=None, also=None):
        return purge(uow, self.policy, now=now, also=also)


class Retention(DependencyProvider):
    """Gives a service ``self.retention``: its ``RetentionPolicy`` read from config at setup
    (a bad age stops the service at start, not at the first purge). ``ages`` names the
    service's own ages, ``name=(config key, default days)``, read by ``age(name)``."""

    def __init__(self, **ages):
        self.age_keys = ages

    def setup(self):
        config = self.container.config
        self.policy = RetentionPolicy.from_config(config)
        self.ages = {name: _days(config, key, default)
                     for name, (key, default) in self.age_keys.items()}

    def get_dependency(self, worker_ctx):
        return Purger(self.policy, self.ages)
