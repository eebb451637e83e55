"""Database access: an engine per service schema and a unit of work per worker."""

import logging

import sqlalchemy as sa
from nameko.extensions import DependencyProvider
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import config as cfg
from shared import migrations, outbox, tasks, tracing
from shared.engine import is_sqlite, make_engine
from shared.hub import Hub
from shared.metrics import MetricsRegistry

__all__ = ["Database", "UnitOfWork", "make_engine", "is_sqlite", "DB_URI_KEY", "UTCDateTime",
           "service_metadata"]

DB_URI_KEY = cfg.DB_URI_KEY
log = logging.getLogger(__name__)


class UnitOfWork:
    """A worker's session plus the outbox of events that commit with it.

    Usable without a container: give it a sessionmaker, a service name and context data.
    """

    def __init__(self, session_factory, service, context_data=None, on_commit=None):
        self._factory = session_factory
        self.service = service
        self.context_data = context_data if context_data is not None else {}
        self._on_commit = on_commit
        self._session = None
        self._emitted = 0
        self._kernel_claim = None  # the task id the kernel claimed for this unit's handler
        self._claim_state = None  # "pending" (in the open transaction), "committed", "lost"

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._factory()
        return self._session

    def read(self, statement, params=None):
        """Run a read-only Core statement on a connection of its own and return its rows.

        For a handler whose whole job is one read (``get_user``): it skips the ORM (identity
        map, object loading) and this unit's session, which costs about twice as much CPU
        per call. The statement runs outside this unit's transaction, so it does not see
        changes this unit has not committed; reads that must, go through ``session``.
        """
        with self._factory.kw["bind"].connect() as conn:
            return conn.execute(statement, params or {}).all()

    def emit(self, event_type, subject, data=None, actor=None):
        """Queue ``event_type`` in the outbox; it is published only if this unit commits."""
        envelope = outbox.envelope(self.service, event_type, subject, data or {},
                                   self.context_data, actor=actor)
        outbox.add(self.session, self.service, envelope, self.trace_context())
        self._emitted += 1
        return envelope

    def trace_context(self):
        """The trace context of the code running now (its span), else the one this unit's
        caller sent: stored with an outbox row, so the event's consumers join the trace."""
        current = tracing.inject({}) if tracing.enabled() else {}
        return current or tracing.carrier_of(self.context_data)

    def dispatch(self, task_type, data=None, delay=None, eta=None, key=None):
        """Queue the task ``task_type`` in the outbox; it is sent only if this unit commits.

        ``delay`` (seconds) or ``eta`` (an aware datetime) holds it back until then; an
        idempotency ``key`` makes its id derived from the key, and a second dispatch with the
        same key returns the first envelope while it is in the outbox. Raises
        ``shared.tasks.UnknownTask`` / ``InvalidTaskData`` with nothing written.
        """
        envelope = tasks.add(self.session, self.service, task_type, data, self.context_data,
                             delay=delay, eta=eta, key=key,
                             trace_context=self.trace_context())
        self._emitted += 1
        return envelope

    def claim(self, event):
        """Record that ``event`` (an event or task envelope, or its id) is being handled.

        Returns False, with the session rolled back, when it was handled before: the caller
        must skip it. Call it first in a handler, before any other change. A task handler
        need not: the kernel claims its task in this unit before the handler runs
        (``claim_task``), and ``claim`` of that task then answers True without a write.
        """
        event_id = _id_of(event)
        if not event_id:
            return True
        if event_id == self._kernel_claim and self._claim_state in ("pending", "committed"):
            return True
        try:
            outbox.record_processed(self.session, self.service, event_id)
            self.session.flush()
        except IntegrityError:
            self.rollback()
            return False
        if event_id == self._kernel_claim:
            self._claim_state = "pending"  # claimed again after a rollback lost it
        return True

    def claim_task(self, task):
        """The kernel's claim of ``task`` before its handler runs (shared.tasks): False when
        the task was done before. The mark stays in this unit's open transaction, so it
        commits or rolls back with the handler's effects."""
        self._kernel_claim = _id_of(task)
        self._claim_state = None
        if not self.claim(task):
            self._kernel_claim = None
            return False
        self._claim_state = "pending"
        return True

    def release_claim(self):
        """The handler of the claimed task failed: roll back what it left and remove the
        mark if it committed it already, so that the task's retry runs."""
        if self._kernel_claim is None:
            return
        committed = self._claim_state == "committed"
        self.rollback()
        task_id, self._kernel_claim, self._claim_state = self._kernel_claim, None, None
        if not committed:
            return
        try:
            outbox.forget_processed(self.session, self.service, task_id)
            self.session.commit()
        except Exception as exc:  # noqa: BLE001 - the handler's own error is the one raised
            log.error("could not unmark task %s after its handler failed (%s): its retry "
                      "will be skipped", task_id, type(exc).__name__)
            self.rollback()

    def settle_claim(self):
        """The handler of the claimed task returned: commit what it left in this unit (at
        least the dedupe mark); claim again first if a rollback of the handler lost it."""
        if self._kernel_claim is None or self._claim_state == "committed":
            return
        if self._claim_state == "lost":
            self._claim_state = None
            if not self.claim(self._kernel_claim):
                return  # another worker finished it meanwhile
            self._claim_state = "pending"
        self.commit()

    def commit(self):
        self.session.commit()
        if self._claim_state == "pending":
            self._claim_state = "committed"
        if self._emitted and self._on_commit:
            self._on_commit()
        self._emitted = 0

    def rollback(self):
        if self._session is not None:
            self._session.rollback()
        self._emitted = 0
        self._lose_claim()

    def _lose_claim(self):
        if self._claim_state == "pending":
            self._claim_state = "lost"

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None

    def discard(self):
        """End the unit of work whatever state its connection is in (it may be dead)."""
        if self._session is None:
            return
        try:
            self._session.rollback()
            self._session.close()
        except Exception as exc:  # noqa: BLE001 - a dead connection cannot even roll back
            log.info("discarding a broken database session (%s)", type(exc).__name__)
            try:
                self._session.invalidate()
            except Exception:  # noqa: BLE001 - nothing more can be done with it
                pass
        self._session = None
        self._emitted = 0
        self._lose_claim()


def _id_of(event):
    if isinstance(event, dict):
        event_id = event.get("event_id") or event.get("task_id")
    else:
        event_id = event
    return str(event_id) if event_id else None


class Database(DependencyProvider):
    """A unit of work per worker on the service's own schema, migrated at start.

    Config: ``DB_URI`` (else ``<SERVICE>_DB_URI``, else SQLite under var/),
    ``MIGRATE_ON_START`` (default true), ``DB_POOL_SIZE``, ``OUTBOX_POLL_INTERVAL`` and the
    relay's ``OUTBOX_*`` settings (shared.outbox.RelayPolicy).
    """

    metrics = MetricsRegistry()
    hub = Hub()

    def __init__(self, metadata, migrations=None):
        self.metadata = metadata
        self.migrations = migrations
        self.engine = None
        self.relay = None

    def setup(self):
        service = self.container.service_name
        config = self.container.config
        self.uri = cfg.db_uri(service, config)
        cfg.require_strong_credentials(config, {f"{service.upper()}_{DB_URI_KEY}": self.uri})
        tracing.setup(service)  # before the engine: its statements get spans
        self.engine = make_engine(self.uri, service,
                                  pool_size=cfg.setting(config, "DB_POOL_SIZE", 10, int))
        if cfg.setting(config, "MIGRATE_ON_START", True, bool):
            migrations.upgrade(service, self.engine, self.migrations)
        else:
            migrations.ensure_current(service, self.engine, self.migrations)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.relay = outbox.Relay(
            self.engine, service, config[cfg.AMQP_URI_KEY],
            interval=cfg.setting(config, "OUTBOX_POLL_INTERVAL", 0.5, float),
            policy=outbox.RelayPolicy.from_config(config),
        )
        relay = self.relay
        self.metrics.gauge("plinth_outbox_pending", "Outbox rows not published yet (parked "
                           "ones included)", lambda: relay.pending)
        self.metrics.gauge("plinth_outbox_parked", "Outbox rows set aside after repeated "
                           "failures (retried rarely)", lambda: relay.parked)
        self.hub.add_database(self)

    def start(self):
        self.container.spawn_managed_thread(self.relay.run, identifier="outbox-relay")

    def stop(self):
        if self.relay:
            self.relay.stop()

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        return UnitOfWork(self.sessions, self.container.service_name,
                          worker_ctx.context_data, on_commit=self.relay.wake)

    def worker_setup(self, worker_ctx):
        # a task handler runs behind its kernel claim, in the unit of work of the service's
        # first database (shared.tasks.deduplicated); the instance attribute shadows the method
        if isinstance(worker_ctx.entrypoint, tasks.TaskEntrypoint) \
                and worker_ctx.entrypoint.dedupe and self.hub.databases[0] is self:
            service, name = worker_ctx.service, worker_ctx.entrypoint.method_name
            setattr(service, name, tasks.deduplicated(getattr(service, self.attr_name),
                                                      getattr(service, name)))

    def worker_teardown(self, worker_ctx):
        # an exception here would kill the whole container, so discard() never raises
        uow = getattr(worker_ctx.service, self.attr_name, None)
        if isinstance(uow, UnitOfWork):
            uow.discard()


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite returns naive values)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use UTC-aware datetimes")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return value


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(service):
    """The MetaData of a service's models: its schema, naming convention, outbox tables and
    periodic tasks' schedule."""
    metadata = sa.MetaData(schema=service, naming_convention=NAMING_CONVENTION)
    outbox.define_tables(metadata)
    tasks.define_tables(metadata)
    return metadata
