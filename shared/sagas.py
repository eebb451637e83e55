"""Sagas: one business transaction across services, as ordered steps with compensations.

A saga definition (``Saga``) is a name and an ordered list of ``Step``s; each step has an
action (an RPC call, a task, or a function of the owning service) and an optional
compensation. The owning service adds the ``sagas`` table to its metadata
(``define_table``), gives its class a ``Sagas(definition, ...)`` dependency and starts sagas
from a worker (``self.sagas.start(name, data, wait=...)``).

The ``Sagas`` provider runs every saga of its service, whoever started it: it claims a saga
with a lease (``lease_owner``, ``lease_expires_at``; on PostgreSQL with ``FOR UPDATE SKIP
LOCKED``), drives it step by step and persists each step's result before the next, so that an
instance that dies mid-saga leaves a lease that expires, and the saga is resumed where it
stopped by the next instance that polls (itself after a restart, or another one).

Every call of a step carries an idempotency key, ``<saga id>:<step>`` (``…:<step>:<n>`` for
the n-th call of a step that makes one per item), in the callee's context data
(``idempotency_key``) and to local functions and task adapters as an argument: a step
retried after a crash must not act twice. Transient failures (``Unavailable``, timeouts, an
unexpected ``InternalError``) are retried with backoff until the step's deadline; a client
error (``Invalid``, ``NotFound``, ``Conflict``, ``Forbidden``, ``Unauthorized``) or the
deadline runs the compensations of the completed steps in reverse order. A compensation is
retried while it fails transiently (``compensating``, shown as stuck on ``/health/ready``
after ``SAGA_STUCK_AFTER`` seconds); refused outright, the saga ends ``failed``: an operator
must look. Events ``saga.started``, ``saga.completed``, ``saga.compensated`` and
``saga.failed`` go through the outbox with the change of status.
"""

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import eventlet
import sqlalchemy as sa
from eventlet.event import Event
from nameko.extensions import DependencyProvider
from sqlalchemy.orm import sessionmaker

from shared import config as cfg
from shared import tasks, tracing
from shared.actors import TOKEN_KEY, ServiceTokens
from shared.backoff import HALF_JITTER, NO_JITTER, Backoff
from shared.context import ACTOR_ID_KEY, ACTOR_TYPE_KEY, REQUEST_ID_KEY
from shared.db import UnitOfWork
from shared.errors import (
    ERROR_KINDS,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PlinthError,
    Unauthorized,
)
from shared.hub import Hub
from shared.ids import is_uuid, uuid7
from shared.rpc_client import RpcClient

__all__ = ["Saga", "Step", "RpcAction", "TaskAction", "LocalAction", "Sagas",
           "SagaDefinitionError", "define_table", "IDEMPOTENCY_KEY", "RUNNING", "COMPLETED",
           "COMPENSATING", "COMPENSATED", "FAILED", "is_client_error"]

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = "idempotency_key"  # in the callee's nameko context data
RUNNING, COMPLETED, COMPENSATING = "running", "completed", "compensating"
COMPENSATED, FAILED = "compensated", "failed"
ACTIVE = (RUNNING, COMPENSATING)
TERMINAL = (COMPLETED, COMPENSATED, FAILED)
CLIENT_ERRORS = (Invalid, NotFound, Conflict, Forbidden, Unauthorized)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
# waits between tries of a step that failed for a reason worth retrying
STEP_RETRY = Backoff(initial=0.4, maximum=30.0, jitter=HALF_JITTER)
_TABLES = {}


class SagaDefinitionError(ValueError):
    """A saga definition that could not work, refused when it is built (at import)."""


def is_client_error(exc):
    """Errors that no retry will cure: the saga compensates."""
    return isinstance(exc, CLIENT_ERRORS)


# -- definitions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RpcAction:
    """Call ``service.method`` with the keyword arguments ``args(saga)`` returns, or once per
    item of the list ``each(saga)`` returns (the results are kept in order)."""

    service: str
    method: str
    args: Callable | None = None
    each: Callable | None = None

    @property
    def target(self):
        return f"{self.service}.{self.method}" if self.service and self.method else None

    def calls(self, saga):
        if self.each is not None:
            return list(self.each(saga))
        return [self.args(saga) if self.args is not None else {}]


@dataclass(frozen=True)
class TaskAction:
    """Dispatch the task ``name`` with the payload ``payload(saga)``, in a unit of work of
    the step, under the step's idempotency key (``shared.tasks.saga_step``): a step retried
    after a crash sends the same task id, which its handler acts on once. The step is done
    when the task is dispatched, not when it has run. Another dispatcher,
    ``dispatch(uow, name, payload, key)``, may be given to ``Sagas(task_dispatcher=...)``."""

    name: str
    payload: Callable | None = None

    @property
    def target(self):
        return self.name or None

    def calls(self, saga):
        return [self.payload(saga) if self.payload is not None else {}]


@dataclass(frozen=True)
class LocalAction:
    """``function(uow, saga, key)`` of the owning service, in a unit of work of its own; it
    must be idempotent on ``key`` (it may run again after a crash before its result was
    recorded)."""

    function: Callable

    @property
    def target(self):
        return getattr(self.function, "__qualname__", None) if callable(self.function) else None

    def calls(self, saga):
        return [None]


@dataclass(frozen=True)
class Step:
    """One step. ``timeout``: seconds one attempt may take; ``deadline``: seconds the step
    may keep retrying transient failures before the saga compensates (None: the provider's
    ``SAGA_STEP_DEADLINE``)."""

    name: str
    action: object
    compensation: object = None
    timeout: float = 10.0
    deadline: float | None = None


@dataclass(frozen=True)
class Saga:
    """A named, ordered list of steps, checked when built. ``private``: keys of the input
    never shown (``get``, events) and dropped once the saga has ended."""

    name: str
    steps: tuple
    private: tuple = ()
    by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        _check(self)
        object.__setattr__(self, "by_name", {step.name: step for step in self.steps})


_ACTIONS = (RpcAction, TaskAction, LocalAction)


def _check(saga):
    if not isinstance(saga.name, str) or not saga.name or not set(saga.name) <= _NAME_CHARS:
        raise SagaDefinitionError(f"saga name {saga.name!r}: lower case letters, digits, _")
    if not saga.steps:
        raise SagaDefinitionError(f"saga {saga.name}: it has no steps")
    seen = set()
    for step in saga.steps:
        where = f"saga {saga.name} step {getattr(step, 'name', step)!r}"
        if not isinstance(step, Step) or not isinstance(step.name, str) or not step.name:
            raise SagaDefinitionError(f"{where}: each step is a Step with a name")
        if step.name in seen:
            raise SagaDefinitionError(f"{where}: two steps have that name")
        seen.add(step.name)
        for role, action in (("action", step.action), ("compensation", step.compensation)):
            if action is None and role == "compensation":
                continue
            if not isinstance(action, _ACTIONS) or not action.target:
                raise SagaDefinitionError(f"{where}: its {role} has no target (an RpcAction "
                                          "with service and method, a TaskAction with a "
                                          "name, or a LocalAction with a function)")
        if not (isinstance(step.timeout, int | float) and step.timeout > 0):
            raise SagaDefinitionError(f"{where}: timeout must be a positive number")
        if step.deadline is not None and not (isinstance(step.deadline, int | float)
                                              and step.deadline >= step.timeout):
            raise SagaDefinitionError(f"{where}: deadline must be at least the timeout")


# -- state ------------------------------------------------------------------------------------
def define_table(metadata):
    """Add the ``sagas`` table to a service's metadata (its migration creates it)."""
    table = sa.Table(
        "sagas", metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_step", sa.Integer, nullable=False, default=0),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(160), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Index("ix_sagas_status_lease", "status", "lease_expires_at"),
    )
    _TABLES[metadata.schema] = table
    return table


def utcnow():
    return datetime.now(UTC)


def _aware(value):
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def new_state(saga, data):
    """The persisted ``data`` of a new saga: its input and the results of its steps."""
    return {"input": dict(data), "results": {}}


def advance(saga, state, status, current, result):
    """The state machine of one step's outcome, as pure data.

    ``status``/``current`` are the saga's; ``result`` is ``("done", step_result)``,
    ``("refused", error)`` or ``("compensated", None)``. Returns ``(status, current,
    error)`` where ``error`` is None unless the outcome set it.
    """
    outcome, value = result
    if status == RUNNING:
        if outcome == "done":
            state["results"][saga.steps[current].name] = value
            nxt = current + 1
            return (COMPLETED, current, None) if nxt == len(saga.steps) else (RUNNING, nxt, None)
        if outcome == "refused":
            # the failed step compensates its own finished items first (each: partly done)
            return COMPENSATING, current, value
    if status == COMPENSATING:
        if outcome == "compensated":
            return (COMPENSATED, 0, None) if current == 0 else (COMPENSATING, current - 1, None)
        if outcome == "refused":
            return FAILED, current, value
    raise ValueError(f"no transition from {status} on {outcome}")


def error_record(step, exc, item=None):
    kind = exc.kind if isinstance(exc, PlinthError) else "timeout"
    record = {"step": step.name, "kind": kind, "message": str(exc)[:500],
              "details": getattr(exc, "details", {}) or {}}
    if item is not None:
        record["item"] = item
    return record


def error_from(record, saga_id):
    """The typed error a saga's recorded ``error`` stands for, carrying the saga id."""
    cls = ERROR_KINDS.get(record.get("kind"), Conflict)
    details = {**(record.get("details") or {}), "saga_id": saga_id, "step": record.get("step")}
    return cls(record.get("message") or "the saga was compensated", details)


# -- running ----------------------------------------------------------------------------------
class _LeaseLost(Exception):
    """Another instance took this saga over (our lease expired): stop driving it."""


class SagaClient:
    """What a worker gets: start a saga and read one."""

    def __init__(self, provider, context_data):
        self._provider = provider
        self._context = {k: context_data.get(k) for k in (REQUEST_ID_KEY, ACTOR_ID_KEY,
                                                          ACTOR_TYPE_KEY)}
        self._caller_trace = tracing.carrier_of(context_data)

    def start(self, name, data, wait=0.0, saga_id=None):
        """Record a new saga, hand it to the runner and wait up to ``wait`` seconds for it to
        end; returns it as ``get`` shows it (possibly still running). The saga keeps the
        trace context of the code starting it: its steps join that trace."""
        trace = (tracing.inject({}) if tracing.enabled() else {}) or self._caller_trace
        return self._provider.start_saga(name, data, {**self._context, **trace}, wait,
                                         saga_id)

    def get(self, saga_id):
        return self._provider.get_saga(saga_id)


class Sagas(DependencyProvider):
    """Runs the sagas of its service (see the module docstring).

    Config: ``SAGA_POLL_INTERVAL`` (seconds between looks for sagas to resume, 1),
    ``SAGA_LEASE`` (seconds a claim lasts without renewal, 30), ``SAGA_STEP_DEADLINE`` (600),
    ``SAGA_STUCK_AFTER`` (seconds compensating before it counts as stuck, 300),
    ``SAGA_CONCURRENCY`` (sagas driven at once per instance, 20).
    """

    hub = Hub()
    # a step runs after the starting caller's token may have expired: it carries the
    # service's own proof, the saga's actor travelling beside it as "on behalf of"
    tokens = ServiceTokens()

    def __init__(self, *definitions, task_dispatcher=None):
        names = [d.name for d in definitions]
        if len(set(names)) != len(names):
            raise SagaDefinitionError(f"two sagas share a name in {names}")
        self.definitions = {d.name: d for d in definitions}
        # by default through the kernel's tasks (shared.tasks.saga_step): another one is for
        # tests, or a service that sends its steps' work some other way
        self.task_dispatcher = task_dispatcher or tasks.saga_step
        self.rpc = None
        self._waiters = {}
        self._running = False

    @property
    def rpc_calls(self):
        """``{service: methods}`` the steps and compensations call (deploy/broker_users.py
        allows exactly these to the owning service's broker user)."""
        calls = {}
        for saga in self.definitions.values():
            for step in saga.steps:
                for action in (step.action, step.compensation):
                    if isinstance(action, RpcAction):
                        calls.setdefault(action.service, set()).add(action.method)
        return {service: frozenset(methods) for service, methods in calls.items()}

    # -- lifecycle ----------------------------------------------------------------------------
    def setup(self):
        config = self.container.config
        self.service = self.container.service_name
        self.owner = f"{self.service}-{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.poll_interval = cfg.setting(config, "SAGA_POLL_INTERVAL", 1.0, float)
        self.lease = cfg.setting(config, "SAGA_LEASE", 30.0, float)
        self.step_deadline = cfg.setting(config, "SAGA_STEP_DEADLINE", 600.0, float)
        self.stuck_after = cfg.setting(config, "SAGA_STUCK_AFTER", 300.0, float)
        self.concurrency = cfg.setting(config, "SAGA_CONCURRENCY", 20, int)
        self.amqp_uri = config[cfg.AMQP_URI_KEY]
        try:
            self.table = _TABLES[self.service]
        except KeyError:
            raise RuntimeError(f"no sagas table for {self.service}: call "
                               "shared.sagas.define_table(metadata) in its models") from None
        self.hub.add_ready_info(self.stuck_info)

    def start(self):
        database = self.hub.database()
        self.engine = database.engine
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._wake_relay = database.relay.wake if database.relay else (lambda: None)
        if self.rpc is None:
            self.rpc = RpcClient(self.amqp_uri, name=f"rpc.reply-saga-{self.owner}").start()
        self.pool = eventlet.GreenPool(self.concurrency)
        self._wake = Event()
        self._running = True
        self.container.spawn_managed_thread(self._poll_loop, identifier="saga-runner")

    def stop(self):
        self._running = False
        self._kick()
        if getattr(self, "pool", None) is not None:
            for thread in list(self.pool.coroutines_running):
                thread.kill()
        self._release_leases()
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        return SagaClient(self, worker_ctx.context_data)

    # -- starting and reading -----------------------------------------------------------------
    def definition(self, name):
        try:
            return self.definitions[name]
        except KeyError:
            raise Invalid(f"no saga named {name}", {"saga": [f"unknown saga {name}"]}) from None

    def start_saga(self, name, data, context, wait, saga_id=None):
        saga = self.definition(name)
        saga_id = saga_id or uuid7()
        now = utcnow()
        state = new_state(saga, data)
        uow = self._uow(context)
        with uow:
            uow.session.execute(self.table.insert().values(
                id=saga_id, name=name, status=RUNNING, current_step=0, data=state,
                error=None, context=context, step_started_at=now, lease_owner=self.owner,
                lease_expires_at=now + timedelta(seconds=self.lease), created_at=now,
                updated_at=now))
            uow.emit("saga.started", saga_id, {"saga": name, "saga_id": saga_id,
                                               "input": _public(saga, state["input"])})
            uow.commit()
        done = self._waiters.setdefault(saga_id, Event())
        self.pool.spawn_n(self._drive, saga_id)
        if wait > 0:
            with eventlet.Timeout(wait, False):
                done.wait()
        self._waiters.pop(saga_id, None)
        return self.get_saga(saga_id)

    def get_saga(self, saga_id):
        if not is_uuid(saga_id):
            raise Invalid("saga_id must be a UUID", {"saga_id": ["not a valid UUID"]})
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.id == saga_id)).first()
        if row is None:
            raise NotFound(f"saga {saga_id} not found", {"saga_id": saga_id})
        return self._to_dict(row)

    def _to_dict(self, row):
        saga = self.definitions.get(row.name)
        state = row.data or {}
        steps = [s.name for s in saga.steps] if saga else []
        return {
            "id": row.id, "name": row.name, "status": row.status,
            "current_step": steps[row.current_step] if row.current_step < len(steps) else None,
            "steps": steps,
            "input": _public(saga, state.get("input") or {}),
            "results": state.get("results") or {},
            "error": row.error,
            "created_at": _aware(row.created_at).isoformat(),
            "updated_at": _aware(row.updated_at).isoformat(),
            "finished_at": _aware(row.finished_at).isoformat() if row.finished_at else None,
        }

    def stuck_info(self):
        """Sagas an operator must look at: failed, or compensating for too long."""
        if not self._running:
            return {}
        table = self.table
        since = utcnow() - timedelta(seconds=self.stuck_after)
        stuck = sa.or_(table.c.status == FAILED,
                       sa.and_(table.c.status == COMPENSATING, table.c.updated_at < since))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(table.c.id, table.c.name, table.c.status,
                                              table.c.updated_at)
                                    .where(stuck).order_by(table.c.updated_at).limit(20)).all()
                count = conn.execute(sa.select(sa.func.count()).select_from(table)
                                     .where(stuck)).scalar()
        except sa.exc.SQLAlchemyError as exc:
            return {"sagas": {"error": type(exc).__name__}}
        return {"sagas": {"stuck": count, "stuck_sagas": [
            {"id": r.id, "name": r.name, "status": r.status,
             "since": _aware(r.updated_at).isoformat()} for r in rows]}}

    # -- the runner ---------------------------------------------------------------------------
    def _kick(self):
        if getattr(self, "_wake", None) is not None and not self._wake.ready():
            self._wake.send()

    def _poll_loop(self):
        backoff = Backoff(initial=min(10.0, 2 * self.poll_interval), maximum=10.0,
                          jitter=NO_JITTER)
        while self._running:
            try:
                free = self.pool.free()
                for saga_id in (self.claim_due(free) if free else []):
                    self.pool.spawn_n(self._drive, saga_id)
                backoff.reset()
                delay = self.poll_interval
            except Exception as exc:  # noqa: BLE001 - keep polling whatever went wrong
                delay = backoff.next()
                log.warning("saga runner of %s could not poll (%s: %s); again in %.1fs",
                            self.service, type(exc).__name__, exc, delay)
            with eventlet.Timeout(delay, False):
                self._wake.wait()
            self._wake = Event()

    def claim_due(self, limit):
        """Take up to ``limit`` active sagas whose lease has expired (or was released)."""
        table, now = self.table, utcnow()
        with self.engine.begin() as conn:
            query = (sa.select(table.c.id)
                     .where(table.c.status.in_(ACTIVE),
                            sa.or_(table.c.lease_expires_at.is_(None),
                                   table.c.lease_expires_at < now))
                     .order_by(table.c.updated_at).limit(limit))
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(conn.execute(query).scalars())
            if ids:
                conn.execute(table.update().where(table.c.id.in_(ids)).values(
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.lease)))
        for saga_id in ids:
            log.info("saga %s claimed by %s", saga_id, self.owner)
        return ids

    def _renew(self, saga_id, seconds):
        table, now = self.table, utcnow()
        with self.engine.begin() as conn:
            renewed = conn.execute(table.update().where(
                table.c.id == saga_id, table.c.lease_owner == self.owner,
                table.c.status.in_(ACTIVE)).values(
                lease_expires_at=now + timedelta(seconds=max(self.lease, seconds + 5))))
        if renewed.rowcount != 1:
            raise _LeaseLost(saga_id)

    def _release_leases(self):
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        try:
            with engine.begin() as conn:
                conn.execute(self.table.update().where(
                    self.table.c.lease_owner == self.owner,
                    self.table.c.status.in_(ACTIVE)).values(lease_expires_at=None))
        except sa.exc.SQLAlchemyError as exc:  # the lease then expires by itself
            log.warning("could not release saga leases (%s)", type(exc).__name__)

    def _load(self, saga_id):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.table).where(self.table.c.id == saga_id)).first()

    def _drive(self, saga_id):
        try:
            while self._running:
                row = self._load(saga_id)
                if row is None or row.status not in ACTIVE or row.lease_owner != self.owner:
                    return
                self._step(row)
        except _LeaseLost:
            log.warning("saga %s was taken over by another instance", saga_id)
        except Exception as exc:  # logged below; the lease expires and a poll resumes it
            log.exception("saga %s stopped (%s); it resumes when its lease expires",
                          saga_id, type(exc).__name__)
        finally:
            waiter = self._waiters.get(saga_id)
            if waiter is not None and not waiter.ready():
                waiter.send()

    def _step(self, row):
        saga = self.definitions[row.name]
        step = saga.steps[row.current_step]
        undo = "" if row.status == RUNNING else " compensation"
        # a span per step (attempt), in the trace of the code that started the saga
        with tracing.span(f"saga {row.name} {step.name}{undo}", tracing.SpanKind.INTERNAL,
                          parent=tracing.carrier_of(row.context or {}), attributes={
                              "plinth.saga": row.name, "plinth.saga_id": row.id,
                              "plinth.saga_step": step.name}):
            self._run_step(row, saga, step)

    def _run_step(self, row, saga, step):
        state = row.data
        key = f"{row.id}:{step.name}"
        if row.status == RUNNING:
            outcome = self._run_action(row, saga, step, step.action, state, key,
                                       deadline=step.deadline or self.step_deadline)
        else:
            outcome = self._compensate(row, saga, step, state, key)
        self._record(row, saga, state, outcome)

    def _run_action(self, row, saga, step, action, state, key, deadline):
        view = _view(row.id, state)
        started = _aware(row.step_started_at)
        if isinstance(action, RpcAction) and action.each is not None:
            done = list(state.setdefault("partial", {}).get(step.name, []))
            calls = action.calls(view)
            for index in range(len(done), len(calls)):
                result = self._attempts(row.id, step, action, calls[index], f"{key}:{index}",
                                        started, deadline, view)
                if result[0] != "done":
                    return ("refused", {**result[1], "item": calls[index]})
                done.append(result[1])
                state["partial"][step.name] = done
                self._save_partial(row, state)
            state["partial"].pop(step.name, None)
            return ("done", done)
        call = action.calls(view)[0]
        return self._attempts(row.id, step, action, call, key, started, deadline, view)

    def _attempts(self, saga_id, step, action, call, key, started, deadline, view,
                  forever=False):
        """Run one call until it succeeds, is refused, or (unless ``forever``) the step's
        deadline passes; transient failures wait with exponential backoff and jitter."""
        failures = 0
        while True:
            self._renew(saga_id, step.timeout)
            try:
                return ("done", self._call(saga_id, step, action, call, key, view))
            except _LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted: client error, or retried
                if is_client_error(exc):
                    return ("refused", error_record(step, exc))
                failures += 1
                elapsed = (utcnow() - started).total_seconds()
                if not forever and elapsed >= deadline:
                    log.warning("saga %s step %s: deadline of %gs passed (%s)", saga_id,
                                step.name, deadline, type(exc).__name__)
                    return ("refused", error_record(step, exc) | {"kind": "timeout"})
                wait = STEP_RETRY.delay(failures - 1)
                if not forever:
                    wait = max(0.05, min(wait, deadline - elapsed))
                log.info("saga %s step %s: transient failure %s (%s); retrying in %.1fs",
                         saga_id, step.name, type(exc).__name__, exc, wait)
                self._renew(saga_id, wait + step.timeout)
                eventlet.sleep(wait)

    def _call(self, saga_id, step, action, call, key, view):
        context = {**self._context_of(saga_id), IDEMPOTENCY_KEY: key}
        if isinstance(action, RpcAction):
            token = self.tokens.token() if self.tokens.enforced else None
            if token is not None:
                context[TOKEN_KEY] = token
            with tracing.span(f"{action.service}.{action.method}", tracing.SpanKind.CLIENT,
                              attributes={"rpc.system": "nameko",
                                          "rpc.service": action.service,
                                          "rpc.method": action.method}) as span:
                if span is not None:
                    tracing.inject(context)  # the callee's span is a child of this one
                return self.rpc.call(action.service, action.method, kwargs=call,
                                     timeout=step.timeout, context=context)
        uow = self._uow(context)
        with uow, eventlet.Timeout(step.timeout):
            if isinstance(action, LocalAction):
                result = action.function(uow, view, key)
            else:
                result = self.task_dispatcher(uow, action.name, call, key)
            uow.commit()
        return result

    def _compensate(self, row, saga, step, state, key):
        comp = step.compensation
        done = state["results"].get(step.name)
        if done is None:
            done = state.get("partial", {}).get(step.name)
        if comp is None or done is None:
            return ("compensated", None)
        view = _view(row.id, state)
        calls = comp.calls(view)
        for index in reversed(range(len(calls))):
            call_key = f"{key}:undo" + (f":{index}" if len(calls) > 1 else "")
            result = self._attempts(row.id, step, comp, calls[index], call_key,
                                    _aware(row.step_started_at), 0, view, forever=True)
            if result[0] != "done":
                return result
        return ("compensated", None)

    def _save_partial(self, row, state):
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(
                self.table.c.id == row.id, self.table.c.lease_owner == self.owner)
                .values(data=state, updated_at=utcnow()))

    def _record(self, row, saga, state, outcome):
        status, current, error = advance(saga, state, row.status, row.current_step, outcome)
        now = utcnow()
        values = {"status": status, "current_step": current, "data": state, "updated_at": now}
        if status != row.status or current != row.current_step:
            values["step_started_at"] = now
        if error is not None:
            values["error"] = error
        if status in TERMINAL:
            values.update(finished_at=now, lease_owner=None, lease_expires_at=None,
                          data={**state, "input": _public(saga, state["input"])})
        uow = self._uow(row.context or {})
        with uow:
            updated = uow.session.execute(self.table.update().where(
                self.table.c.id == row.id, self.table.c.lease_owner == self.owner,
                self.table.c.status == row.status).values(**values))
            if updated.rowcount != 1:
                raise _LeaseLost(row.id)
            event = {COMPLETED: "saga.completed", COMPENSATED: "saga.compensated",
                     FAILED: "saga.failed"}.get(status)
            if event:
                uow.emit(event, row.id, {"saga": row.name, "saga_id": row.id,
                                         "error": values.get("error", row.error)})
            uow.commit()
        log.info("saga %s (%s): %s at step %s", row.id, row.name, status, current)

    def _context_of(self, saga_id):
        row = self._load(saga_id)
        return dict(row.context or {}) if row is not None else {}

    def _uow(self, context):
        return _SagaUnit(self.sessions, self.service, dict(context or {}), self._wake_relay)


class _SagaUnit:
    """A UnitOfWork (shared.db) usable as a context manager that always ends its session."""

    def __init__(self, sessions, service, context, on_commit):
        self.unit = UnitOfWork(sessions, service, context, on_commit=on_commit)

    def __getattr__(self, name):
        return getattr(self.unit, name)

    def __enter__(self):
        return self.unit

    def __exit__(self, *exc):
        self.unit.discard()
        return False


def _view(saga_id, state):
    """What step builders and local functions see of a saga."""
    return {"id": saga_id, "input": state["input"], "results": state["results"],
            "partial": state.get("partial", {})}


def _public(saga, data):
    private = saga.private if saga is not None else ()
    return {k: v for k, v in (data or {}).items() if k not in private}
