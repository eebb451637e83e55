"""Tasks: work a service asks of itself (or of another service), committed with its change.

A task is named ``<service>.<entity>.<request>`` (``audit.export.generate``); only the named
service handles it, in the handler it declares::

    class AuditService(kernel.ServiceBase):
        db = Database(Base.metadata)

        @task("audit.export.generate", max_attempts=3)
        def generate_export(self, task):
            ...                              # task["data"], task["attempt"], task["actor"]
            self.db.commit()                 # the effect and the dedupe mark commit together

        @task("audit.entries.purge", every=3600)   # periodic: once an hour across instances
        def purge(self, task): ...

and anyone dispatches it *inside a unit of work*: ``self.db.dispatch("audit.export.generate",
{"filters": ...}, delay=seconds | eta=datetime)`` writes the task to the outbox; the relay
sends it once the unit commits (no task without its change, no change without its task).

The kernel deduplicates on ``task_id``: before the handler runs, it records the task in the
service's ``processed_events`` inside the handler's own unit of work (the service's first
``Database``), so the mark commits with the handler's effects or rolls back with them. A
redelivery of a task already done is acknowledged without running the handler (counted in
``plinth_task_duplicates_total``). When the handler returns, what it left uncommitted in its
unit of work is committed with the mark; when it raises, what it left is rolled back and the
mark removed even if the handler committed it already (a failed attempt is not done, so its
retry runs). Handlers that still call ``self.db.claim(task)`` get True. A handler that
commits more than once is marked done by its first commit: if a crash past that commit must
lead to a second run, it declares ``dedupe=False`` and keeps its own mark (audit's export
keeps the export's status). A service without a ``Database`` is not deduplicated.

Dispatch refuses, before writing anything, with ``UnknownTask`` a malformed name, a name of
the dispatching service that no handler declares, or another service's task not listed in
``shared.task_catalogue``; and with ``InvalidTaskData`` data that is not a JSON object, is
larger than ``TASK_MAX_DATA_BYTES`` or carries a secret-looking key (tasks are not secret).

Broker topology of a service ``S``: its task queue ``S.tasks`` (durable, fed through the
default exchange), a headers exchange ``S.tasks.delay`` with one queue per delay level
(``S.tasks.delay.<ms>``, ``DELAY_LEVELS_MS``) whose expired messages dead-letter back into
``S.tasks``, and the service's dead-letter queue ``S.dead-letters`` (shared.redelivery). A
delayed or scheduled task carries its due time (``plinth-eta``) and hops through the largest
level not beyond what is left, again and again, until it is due: long delays chain through
the largest level, short ones end within ``RUN_WITHIN_MS`` of their time.

A failed handler is retried with exponential backoff and jitter (``TASK_MAX_ATTEMPTS``, 5;
``TASK_RETRY_DELAY``, 1 s; ``TASK_RETRY_MAX_DELAY``, 300 s; ``max_attempts`` per handler),
held by the delay queues: no worker sleeps. Client errors (``Invalid``, ``NotFound``,
``Conflict``, ``Forbidden``...) are not retried. An exhausted task, or one that cannot be
decoded or routed, goes to ``S.dead-letters`` with its last error (type and first line) and
the event ``task.dead_lettered`` is written to the outbox. ``python -m shared.tasks_cli``
lists, shows, replays and drops dead letters.

Periodic tasks (``every=seconds``) run once per period across all instances: each instance
claims the period's slot in the ``task_schedule`` table (``INSERT .. ON CONFLICT DO
NOTHING``) and only the winner dispatches, in the same transaction, so restarts neither skip
nor repeat a period.
"""

import json
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import sqlalchemy as sa
from eventlet.event import Event
from kombu import Connection
from nameko.exceptions import ContainerBeingKilled
from nameko.exceptions import registry as _nameko_remote_errors
from nameko.extensions import Entrypoint, ProviderCollector, SharedExtension

from shared import config as cfg
from shared import outbox, tracing
from shared.compat import RawQueueConsumer
from shared.context import ACTOR_ID_KEY, ACTOR_TYPE_KEY, REQUEST_ID_KEY, actor_from
from shared.engine import make_engine
from shared.errors import Invalid
from shared.hub import Hub
from shared.metrics import MetricsRegistry
from shared.redelivery import (
    ATTEMPTS_HEADER,
    DEAD_REASON_HEADER,
    DELAY_HEADER,
    Redelivery,
    RetryPolicy,
    attempts_of,
    describe,
    is_client_error,
)
from shared.senders import Senders, user_of
from shared.task_catalogue import KNOWN_TASKS
from shared.task_queues import (
    DELAY_LEVELS_MS,
    ETA_HEADER,
    RUN_WITHIN_MS,
    TaskTopology,
    task_queue,
)

__all__ = ["task", "TaskEntrypoint", "TaskConsumer", "UnknownTask", "InvalidTaskData",
           "add", "envelope", "check_name", "saga_step", "task_id_for", "define_tables",
           "task_queue", "TaskTopology", "DELAY_LEVELS_MS", "ETA_HEADER", "MAX_DATA_BYTES_KEY",
           "CONFIG_PREFIX", "deduplicated", "DUPLICATE"]

log = logging.getLogger(__name__)

CONFIG_PREFIX = "TASK"  # TASK_MAX_ATTEMPTS, TASK_RETRY_DELAY, TASK_RETRY_MAX_DELAY
MAX_DATA_BYTES_KEY = "TASK_MAX_DATA_BYTES"
DEFAULT_MAX_DATA_BYTES = 64 * 1024
MAX_DELAY = timedelta(days=366)
REQUEUE_PAUSE = 1.0  # seconds, before handing back a message the broker would not take
COUNT_EVERY = 2.0  # seconds between two counts of the queues
NAME = re.compile(r"^([a-z][a-z0-9_]{0,39})\.([a-z][a-z0-9_]{0,39})\.([a-z][a-z0-9_]{0,39})$")
# keys that name a secret: a task's data is stored, logged on failure and audited
SECRET_KEYS = re.compile(r"(password|passwd|secret|token|api_?key|private_?key|hash)",
                         re.IGNORECASE)

KEYED_TASKS = uuid.UUID("6f0c6a4e-3b1d-5c1e-9a57-0d2b8f1e7c42")  # namespace of keyed task ids
_DECLARED = {}  # service name -> task names of the handlers this process imported
_TABLES = {}


class UnknownTask(Invalid):
    """The task name is malformed, or no service is known to handle it."""


class InvalidTaskData(Invalid):
    """The task's data (or its delay) cannot be sent."""


# rebuilt as themselves when they cross RPC (see shared.errors)
for _cls in (UnknownTask, InvalidTaskData):
    _nameko_remote_errors[f"{__name__}.{_cls.__name__}"] = _cls


DUPLICATE = type("Duplicate", (), {"__repr__": lambda self: "DUPLICATE"})()
"""What a deduplicated handler returns for a task done before (its handler did not run)."""


def deduplicated(uow, handler):
    """``handler(task)`` behind the kernel's claim of the task in ``uow``, its unit of work
    (``UnitOfWork.claim_task``): ``DUPLICATE`` without running it when the task was done
    before; otherwise its result, with what it left in ``uow`` committed."""

    def run(task, *args, **kwargs):
        if not uow.claim_task(task):
            return DUPLICATE
        try:
            result = handler(task, *args, **kwargs)
        except BaseException:
            uow.release_claim()  # a failed attempt is not done, whatever it committed
            raise
        uow.settle_claim()
        return result

    return run


class PoisonTask(Exception):
    """A delivered task that cannot be decoded or routed: no retry can help it."""


def define_tables(metadata):
    """Add the periodic tasks' ``task_schedule`` table to a service's metadata."""
    table = sa.Table(
        "task_schedule", metadata,
        sa.Column("task_type", sa.String(128), primary_key=True),
        sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    _TABLES[metadata.schema] = table
    return table


# -- dispatching --------------------------------------------------------------------------


def check_name(service, name):
    """Refuse (``UnknownTask``) a task name ``service`` cannot send anywhere."""
    if not isinstance(name, str) or not NAME.match(name):
        raise UnknownTask(f"{str(name)[:80]!r} is not a task name (<service>.<entity>.<request>)",
                          {"task": ["not a task name"]})
    owner = name.split(".", 1)[0]
    if name in _DECLARED.get(owner, ()) or name in KNOWN_TASKS:
        return
    if owner == service:
        raise UnknownTask(f"{service} declares no handler for the task {name}",
                          {"task": ["no handler declares this task"]})
    raise UnknownTask(f"{name} is not in the catalogue of tasks other services accept "
                      "(shared/task_catalogue.py)", {"task": ["unknown task"]})


def _check_data(data):
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidTaskData("a task's data must be a JSON object", {"data": ["not an object"]})
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTaskData(f"a task's data must be JSON ({str(exc)[:100]})",
                              {"data": ["not JSON-serialisable"]}) from None
    limit = cfg.setting({}, MAX_DATA_BYTES_KEY, DEFAULT_MAX_DATA_BYTES, int)
    if len(text.encode("utf-8")) > limit:
        raise InvalidTaskData(f"a task's data must be at most {limit} bytes of JSON",
                              {"data": [f"larger than {limit} bytes"]})
    secret = _secret_key(data)
    if secret:
        raise InvalidTaskData(f"a task's data must not carry secrets (key {secret[:40]!r})",
                              {"data": ["carries a secret"]})
    return json.loads(text)  # a copy: later changes of the caller's object do not leak in


def _secret_key(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if SECRET_KEYS.search(str(key)):
                return str(key)
            found = _secret_key(item)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _secret_key(item)
            if found:
                return found
    return None


def _due(delay, eta, now):
    if delay is not None and eta is not None:
        raise InvalidTaskData("give a delay or an eta, not both", {"delay": ["with eta"]})
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay \
                <= MAX_DELAY.total_seconds():
            raise InvalidTaskData("delay must be a number of seconds from 0 to a year",
                                  {"delay": ["out of range"]})
        return now + timedelta(seconds=delay) if delay > 0 else None
    if eta is not None:
        if not isinstance(eta, datetime) or eta.tzinfo is None:
            raise InvalidTaskData("eta must be a timezone-aware datetime",
                                  {"eta": ["not an aware datetime"]})
        if eta - now > MAX_DELAY:
            raise InvalidTaskData("eta must be within a year", {"eta": ["too far"]})
        return eta.astimezone(UTC) if eta > now else None
    return None


def task_id_for(service, name, key):
    """The task id of ``service``'s dispatch of ``name`` under the idempotency ``key``: the
    same three give the same id, so the kernel's dedupe on ``task_id`` holds across retries."""
    return str(uuid.uuid5(KEYED_TASKS, f"{service}\n{name}\n{key}"))


def envelope(service, name, data, context_data, due=None, actor=None, task_id=None):
    """The task as its handler sees it (``attempt`` is set on delivery)."""
    actor = actor or actor_from(context_data)
    return {
        "task_id": task_id or str(uuid.uuid4()),
        "task_type": name,
        "source": service,
        "version": outbox.ENVELOPE_VERSION,
        "requested_at": outbox.utcnow().isoformat(),
        "eta": due.isoformat() if due else None,
        "actor": actor.to_dict(),
        "request_id": context_data.get(REQUEST_ID_KEY),
        "attempt": 1,
        "data": data,
    }


def add(session, service, name, data=None, context_data=None, delay=None, eta=None,
        key=None, trace_context=None):
    """Validate the task and write it to ``service``'s outbox in ``session``'s transaction.

    ``UnitOfWork.dispatch`` is the usual way in. Raises ``UnknownTask`` / ``InvalidTaskData``
    with nothing written. With an idempotency ``key`` the task id is derived from it
    (``task_id_for``) and a task of that id still in the outbox is not written again: the
    envelope written the first time is returned. ``trace_context``: the writer's
    (shared.tracing), so the task's handler joins its trace.
    """
    check_name(service, name)
    data = _check_data(data)
    due = _due(delay, eta, outbox.utcnow())
    task_id = None
    if key is not None:
        if not isinstance(key, str) or not key:
            raise InvalidTaskData("an idempotency key must be a non-empty string",
                                  {"key": ["not a string"]})
        task_id = task_id_for(service, name, key)
        earlier = outbox.find(session, service, task_id)
        if earlier is not None:
            return earlier
    env = envelope(service, name, data, context_data or {}, due, task_id=task_id)
    outbox.add(session, service, env, trace_context)
    return env


def saga_step(uow, name, payload, key):
    """How a saga's task step is dispatched (``shared.sagas.TaskAction``; the orchestrator's
    default): in the step's unit of work, under the step's idempotency ``key``, so a step
    retried after a crash dispatches the same task id again: not written twice while the
    first is in the outbox, not acted on twice after (the kernel's dedupe)."""
    env = uow.dispatch(name, payload, key=key)
    return {"task_id": env["task_id"], "task_type": name}


# -- handling -----------------------------------------------------------------------------


class TaskConsumer(SharedExtension, ProviderCollector):
    """The one consumer of a service's task queue: routes each task to the entrypoint that
    declares its name, settles failures (retry later or dead-letter), runs the periodic
    schedule and counts the queues for ``/health`` and ``/metrics``."""

    queue_consumer = RawQueueConsumer()
    redelivery = Redelivery()
    metrics = MetricsRegistry()
    hub = Hub()

    def __init__(self):
        super().__init__()
        self.topology = None
        self.queue = None
        self.in_flight = 0
        self.counts = {"ready": None, "in_flight": 0, "retrying": None, "dead": None}
        self._stopping = threading.Event()
        self._registered = False
        self._unregistering = set()
        self._unregistered = Event()

    # -- lifecycle --
    def setup(self):
        if self.topology is not None:
            return
        service = self.container.service_name
        self.topology = TaskTopology(service)
        self.queue = self.topology.queue
        self.queue_consumer.register_provider(self)
        self._registered = True
        self.engine = None
        self.retries = self.metrics.counter(
            "plinth_task_retries", "Failed tasks put back for a later attempt", ["task"])
        self.dead_letters = self.metrics.counter(
            "plinth_task_dead_letters", "Tasks given up into the dead-letter queue",
            ["task", "reason"])
        self.completed = self.metrics.counter(
            "plinth_task_completed", "Tasks whose handler returned", ["task"])
        self.duplicates = self.metrics.counter(
            "plinth_task_duplicates", "Deliveries of tasks done before: acknowledged, their "
            "handler not run", ["task"])
        self.senders = Senders(self.container.config, own=service)
        self.dropped_sender = self.metrics.counter(
            "plinth_tasks_dropped_sender", "Tasks dropped: not sent by a broker identity "
            "allowed to send them (shared.senders)", ["task"])
        for state, text in (("ready", "waiting in the task queue"),
                            ("in_flight", "being handled by this instance"),
                            ("retrying", "waiting in the delay queues (retries, delayed tasks)"),
                            ("dead", "in the service's dead-letter queue")):
            read = (lambda: self.in_flight) if state == "in_flight" \
                else partial(self.counts.get, state)
            self.metrics.gauge(f"plinth_tasks_{state}", f"Tasks {text}", read)
        self.hub.add_ready_info(self.describe)  # /health/ready, so /status, and /health

    def start(self):
        self.engine = make_engine(cfg.db_uri(self.container.service_name, self.container.config),
                                  self.container.service_name, pool_size=2)
        self.container.spawn_managed_thread(self._count_loop, identifier="task-counts")
        if any(p.every for p in self._providers):
            self.container.spawn_managed_thread(self._schedule_loop, identifier="task-schedule")

    def stop(self):
        self._stopping.set()
        if not self._providers_registered and self._registered:
            self.queue_consumer.unregister_provider(self)
            self._registered = False
        if self.engine is not None:
            self.engine.dispose()

    def kill(self):
        self._stopping.set()

    def unregister_provider(self, provider):
        # entrypoints stop in parallel: the last one to ask cancels the queue's consumer, and
        # every one waits for that, so no task arrives once an entrypoint has stopped
        self._unregistering.add(provider)
        if not self._providers - self._unregistering and self._registered:
            self._registered = False
            self.queue_consumer.unregister_provider(self)
            self._unregistered.send(True)
        self._unregistered.wait()
        super().unregister_provider(provider)

    def describe(self):
        return {"tasks": {"queue": self.queue.name, **self.counts, "in_flight": self.in_flight,
                          "dead_letter_queue": self.redelivery.topology.dead_letter_queue.name}}

    # -- a delivery --
    def handle_message(self, _body, message):
        try:
            task = self._decode(message)
        except PoisonTask as exc:
            self._give_up(message, None, exc, "poison")
            return
        if not self._sent_by_owner(message, task):
            return
        if self._early(message):
            return
        entrypoint = next((p for p in self._providers if p.name == task["task_type"]), None)
        if entrypoint is None:
            exc = PoisonTask(f"{self.container.service_name} has no handler for "
                             f"{task['task_type']}")
            self._give_up(message, task, exc, "unknown_task")
            return
        task["attempt"] = attempts_of(message) + 1
        try:
            self.container.spawn_worker(
                entrypoint, (task,), {}, context_data=_context_of(message),
                handle_result=partial(self._handle_result, message, entrypoint, task))
        except ContainerBeingKilled:
            self.queue_consumer.requeue_message(message)  # another instance will take it
            return
        self.in_flight += 1

    def _sent_by_owner(self, message, task):
        """A task comes from its own service's broker identity, or -- a task of the catalogue
        other services may send -- from the one its envelope names; any other is dropped
        (acknowledged), logged and counted (shared.senders)."""
        sender, service = user_of(message), self.container.service_name
        if self.senders.accepts(sender, service) or (
                task["task_type"] in KNOWN_TASKS
                and self.senders.accepts(sender, task.get("source"))):
            return True
        self.senders.refuse(f"{service} tasks", task.get("source"), sender, task["task_id"])
        known = {p.name for p in self._providers} | set(KNOWN_TASKS)
        # a label from the message only when it names a known task: bounded cardinality
        self.dropped_sender.labels(task["task_type"] if task["task_type"] in known
                                   else "(unknown)").inc()
        self.queue_consumer.ack_message(message)
        return False

    @staticmethod
    def _decode(message):
        try:
            task = json.loads(message.body)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise PoisonTask("the task body is not JSON") from None
        if not isinstance(task, dict) or not isinstance(task.get("task_type"), str) \
                or not isinstance(task.get("task_id"), str):
            raise PoisonTask("the task body is not a task envelope")
        return task

    def _early(self, message):
        """Send a task that is not due yet on through the delay levels; True if it was."""
        eta = (message.headers or {}).get(ETA_HEADER)
        if not isinstance(eta, int | float) or eta - time.time() * 1000 <= RUN_WITHIN_MS:
            return False
        self._settle(message, lambda: self._later(message, dict(message.headers), eta))
        return True

    def _handle_result(self, message, entrypoint, task, worker_ctx, result, exc_info):
        self.in_flight -= 1
        if exc_info is None:
            if result is DUPLICATE:
                self.duplicates.labels(entrypoint.name).inc()
                log.info("task %s %s was done before: acknowledged without running it",
                         task["task_type"], task["task_id"])
                result = None
            else:
                self.completed.labels(entrypoint.name).inc()
            self.queue_consumer.ack_message(message)
            return result, exc_info
        exc = exc_info[1]
        failures = attempts_of(message) + 1
        if is_client_error(exc) or failures >= entrypoint.backoff.max_attempts:
            reason = "client_error" if is_client_error(exc) else "exhausted"
            self._give_up(message, task, exc, reason)
            return result, exc_info
        delay = entrypoint.backoff.delay(failures)
        headers = self.redelivery.failure_headers(message, self.queue.name, exc, failures)
        eta = int((time.time() + delay) * 1000)
        if self._settle(message, lambda: self._later(message, headers, eta)):
            self.retries.labels(entrypoint.name).inc()
            log.warning("task %s %s failed (attempt %d, %s); retrying in %.2fs", task["task_type"],
                        task["task_id"], failures, type(exc).__name__, delay)
        return result, exc_info

    def _give_up(self, message, task, exc, reason):
        failures = attempts_of(message) + 1
        headers = self.redelivery.failure_headers(message, self.queue.name, exc, failures)
        headers.pop(DELAY_HEADER, None)
        if not self._settle(message, lambda: self.redelivery.dead_letter(
                message, headers, failures, reason)):
            return
        name = task["task_type"] if task else "(undecodable)"
        self.dead_letters.labels(name, reason).inc()
        error_type, error = describe(exc)
        log.error("task %s %s dead-lettered to %s (%s, attempt %d: %s)", name,
                  message.properties.get("message_id") or "(no id)",
                  self.redelivery.topology.dead_letter_queue.name, reason, failures, error_type)
        self._announce(message, task, {
            "task_id": (task or {}).get("task_id") or message.properties.get("message_id"),
            "task_type": name, "queue": self.queue.name, "attempts": failures,
            "reason": reason, "error_type": error_type, "error": error})

    def _settle(self, message, publish):
        """Run ``publish`` (a copy of ``message`` to the broker), then ack ``message``.
        When the broker did not take the copy, hand the message back instead; False then."""
        try:
            try:
                publish()
            except Exception:  # noqa: BLE001 - one retry on a fresh connection, as redelivery
                self.redelivery.publisher.close()
                publish()
        except Exception as error:  # noqa: BLE001 - the broker did not take the copy
            log.error("could not set task %s aside (%s: %s); returning it to %s",
                      message.properties.get("message_id"), type(error).__name__, error,
                      self.queue.name)
            time.sleep(REQUEUE_PAUSE)  # keeps the requeue from becoming a hot loop
            self.queue_consumer.requeue_message(message)
            return False
        self.queue_consumer.ack_message(message)
        return True

    def _later(self, message, headers, eta_ms):
        ms = self.topology.level_for(eta_ms - time.time() * 1000)
        bucket = self.topology.delay_queue(ms)
        headers = {**headers, ETA_HEADER: eta_ms, DELAY_HEADER: str(ms)}
        routed = self.redelivery.publisher.publish(
            message.body, exchange=self.topology.delay_exchange, routing_key=self.queue.name,
            headers=headers, declare=[bucket], message_id=message.properties.get("message_id"),
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8")
        if not routed:
            raise RuntimeError(f"the broker could not route the task to {bucket.name}")

    def _announce(self, message, task, data):
        """Write ``task.dead_lettered`` to the outbox (the audit trail records it)."""
        service = self.container.service_name
        context = {REQUEST_ID_KEY: (task or {}).get("request_id")
                   or _context_of(message).get(REQUEST_ID_KEY)}
        try:
            with self.engine.begin() as conn:
                outbox.add(conn, service, outbox.envelope(
                    service, "task.dead_lettered", data["task_id"], data, context))
        except Exception as exc:  # noqa: BLE001 - the dead letter is safe; only the event is lost
            log.error("could not write task.dead_lettered for %s (%s)", data["task_id"],
                      type(exc).__name__)

    # -- the periodic schedule --
    def _schedule_loop(self):
        periodic = [p for p in self._providers if p.every]
        tick = max(0.05, min(1.0, min(p.every for p in periodic) / 4))
        done = {}
        while not self._stopping.wait(tick):
            for entrypoint in periodic:
                slot = int(time.time() // entrypoint.every)
                if done.get(entrypoint.name) == slot:
                    continue
                try:
                    self._claim(entrypoint, slot)
                    done[entrypoint.name] = slot
                except Exception as exc:  # noqa: BLE001 - the next tick tries again
                    log.warning("could not claim period %d of %s (%s)", slot, entrypoint.name,
                                type(exc).__name__)

    def _claim(self, entrypoint, slot):
        """Dispatch ``entrypoint``'s task for ``slot`` unless another instance did."""
        service = self.container.service_name
        table = _TABLES[service]
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        with self.engine.begin() as conn:
            claimed = conn.execute(insert(table).values(
                task_type=entrypoint.name, slot=slot, claimed_at=outbox.utcnow())
                .on_conflict_do_nothing()).rowcount
            if claimed != 1:
                return False
            add(conn, service, entrypoint.name, {"slot": slot, "every": entrypoint.every},
                {REQUEST_ID_KEY: str(uuid.uuid4())})
            # the schedule keeps the last few periods only
            conn.execute(table.delete().where(table.c.task_type == entrypoint.name,
                                              table.c.slot < slot - 10))
        return True

    # -- counts --
    def _count_loop(self):
        amqp_uri = self.container.config[cfg.AMQP_URI_KEY]
        while not self._stopping.is_set():
            try:
                self.counts.update(self._count(amqp_uri))
            except Exception as exc:  # noqa: BLE001 - counts stay unknown until the broker answers
                log.debug("could not count the task queues (%s)", type(exc).__name__)
                self.counts.update(ready=None, retrying=None, dead=None)
            self.counts["in_flight"] = self.in_flight
            self._stopping.wait(COUNT_EVERY)

    def _count(self, amqp_uri):
        with Connection(amqp_uri, connect_timeout=2,
                        ssl=cfg.amqp_ssl(self.container.config) or False) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()

            def depth(entity):
                bound = entity(channel)
                bound.declare()
                return bound.queue_declare(passive=True).message_count

            return {"ready": depth(self.queue),
                    "retrying": sum(depth(self.topology.delay_queue(ms))
                                    for ms in DELAY_LEVELS_MS),
                    "dead": depth(self.redelivery.topology.dead_letter_queue)}


def _context_of(message):
    headers = message.headers or {}
    # the trace context too: the handler's span joins the trace of the code that sent the task
    keys = (REQUEST_ID_KEY, ACTOR_ID_KEY, ACTOR_TYPE_KEY, tracing.TRACEPARENT,
            tracing.TRACESTATE)
    return {key: headers[f"nameko.{key}"] for key in keys if f"nameko.{key}" in headers}


class TaskEntrypoint(Entrypoint):
    """``@task("<service>.<entity>.<request>", max_attempts=None, every=None, dedupe=True)``:
    the handler of one task of this service (see the module docstring). ``every``: seconds
    between two runs of a periodic task across all the service's instances. ``dedupe=False``:
    no kernel claim; the handler keeps its own mark (see the module docstring)."""

    consumer = TaskConsumer()

    def __init__(self, name, max_attempts=None, every=None, dedupe=True, **kwargs):
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{name!r} is not a task name (<service>.<entity>.<request>)")
        if every is not None and not (isinstance(every, int | float) and every > 0):
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        self.name = name
        self.max_attempts = max_attempts
        self.every = every
        self.dedupe = dedupe
        # declared when the handler's code is imported, so that any process holding it (a
        # script, a test) may dispatch the task, not only a running container
        _DECLARED.setdefault(name.split(".", 1)[0], set()).add(name)
        super().__init__(**kwargs)

    def setup(self):
        service = self.container.service_name
        if self.name.split(".", 1)[0] != service:
            raise ValueError(f"{service} cannot handle {self.name}: a service handles only "
                             f"tasks named after it ({service}.<entity>.<request>)")
        self.backoff = RetryPolicy.from_config(self.container.config, CONFIG_PREFIX,
                                           max_attempts=self.max_attempts)
        self.consumer.register_provider(self)

    def stop(self):
        self.consumer.unregister_provider(self)


task = TaskEntrypoint.decorator

# the headers a replayed dead letter loses (shared.tasks_cli): it starts again from attempt 1
RESET_HEADERS = (ATTEMPTS_HEADER, DEAD_REASON_HEADER, DELAY_HEADER, ETA_HEADER)
