"""shared/tasks.py without a broker: names, data, delays and delay levels."""

from datetime import UTC, datetime, timedelta

import pytest

from shared import tasks
from shared.errors import Invalid
from shared.tasks import (
    DELAY_LEVELS_MS,
    InvalidTaskData,
    TaskEntrypoint,
    TaskTopology,
    UnknownTask,
    check_name,
)


class _Handlers:
    """Importing a handler declares its task for dispatch."""

    @tasks.task("unitsvc.thing.do")
    def do(self, task):
        pass


def test_typed_errors_are_invalid_input():
    assert issubclass(UnknownTask, Invalid) and issubclass(InvalidTaskData, Invalid)


@pytest.mark.parametrize("name", ["", "a.b", "a.b.c.d", "Audit.export.generate",
                                  "audit.export.", "audit..generate", "1a.b.c", None, 42])
def test_a_malformed_name_is_an_unknown_task(name):
    with pytest.raises(UnknownTask):
        check_name("audit", name)


def test_a_service_may_dispatch_its_declared_tasks_and_catalogued_foreign_ones():
    check_name("unitsvc", "unitsvc.thing.do")
    check_name("identity", "audit.export.generate")  # listed in shared/task_catalogue.py
    check_name("identity", "unitsvc.thing.do")  # its handler is imported in this process
    with pytest.raises(UnknownTask, match="declares no handler"):
        check_name("unitsvc", "unitsvc.thing.undeclared")
    with pytest.raises(UnknownTask, match="catalogue"):
        check_name("identity", "authz.roles.explode")


@pytest.mark.parametrize("data, why", [
    ([1, 2], "object"), ("text", "object"), ({"s": {1}}, "JSON"), ({"f": float("nan")}, "JSON"),
    ({"blob": "x" * (70 * 1024)}, "bytes"), ({"password": "x"}, "secret"),
    ({"user": [{"refresh_token": "t"}]}, "secret"), ({"api_key": "k"}, "secret"),
])
def test_data_that_is_not_a_small_json_object_without_secrets_is_refused(data, why):
    with pytest.raises(InvalidTaskData, match=why):
        tasks._check_data(data)


def test_data_is_copied_and_none_is_empty():
    data = {"a": [1, 2]}
    copy = tasks._check_data(data)
    data["a"].append(3)
    assert copy == {"a": [1, 2]} and tasks._check_data(None) == {}


def test_delay_and_eta_are_checked_and_become_a_due_time():
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert tasks._due(None, None, now) is None
    assert tasks._due(0, None, now) is None
    assert tasks._due(2.5, None, now) == now + timedelta(seconds=2.5)
    assert tasks._due(None, now + timedelta(hours=1), now) == now + timedelta(hours=1)
    assert tasks._due(None, now - timedelta(hours=1), now) is None  # past: due now
    for delay, eta in ((-1, None), (True, None), ("5", None), (400 * 86400, None),
                       (1, now), (None, datetime(2026, 12, 4)), (None, now + timedelta(days=400)),
                       (None, "2026-12-04T12:00:00Z")):
        with pytest.raises(InvalidTaskData):
            tasks._due(delay, eta, now)


def test_the_envelope_carries_what_spec_lists():
    env = tasks.envelope("identity", "audit.export.generate", {"x": 1},
                         {"request_id": "r1", "actor_id": "u1", "actor_type": "user"})
    assert set(env) >= {"task_id", "task_type", "source", "requested_at", "actor", "request_id",
                        "attempt", "data"}
    assert env["actor"] == {"id": "u1", "type": "user"} and env["attempt"] == 1


def test_delay_levels_are_few_and_a_wait_hops_through_the_largest_not_beyond_it():
    assert len(DELAY_LEVELS_MS) <= 16 and list(DELAY_LEVELS_MS) == sorted(DELAY_LEVELS_MS)
    level = TaskTopology.level_for
    assert level(2000) == 2000 and level(1999) == 1000 and level(30) == DELAY_LEVELS_MS[0]
    assert level(10 * 86_400_000) == DELAY_LEVELS_MS[-1]  # a long delay chains the largest
    queue = TaskTopology("audit").delay_queue(2000)
    assert queue.name == "audit.tasks.wait.2000"
    # back through the service's queues exchange, where audit.tasks is bound by its name
    assert queue.queue_arguments == {"x-message-ttl": 2000,
                                     "x-dead-letter-exchange": "audit.queues"}
    assert TaskTopology("audit").queue.exchange.name == "audit.queues"
    assert TaskTopology("audit").queue.routing_key == "audit.tasks"


def test_a_handler_declaration_is_checked_at_import():
    with pytest.raises(ValueError):
        TaskEntrypoint("not-a-name")
    with pytest.raises(ValueError):
        TaskEntrypoint("audit.export.generate", every=0)


def test_the_saga_adapter_dispatches_in_the_steps_unit_of_work_under_its_key():
    sent = []

    class Unit:
        def dispatch(self, name, data, key=None):
            sent.append((name, data, key))
            return {"task_id": "t-1"}

    assert tasks.saga_step(Unit(), "unitsvc.thing.do", {"a": 1}, "s1:step") == {
        "task_id": "t-1", "task_type": "unitsvc.thing.do"}
    assert sent == [("unitsvc.thing.do", {"a": 1}, "s1:step")]


def test_a_keyed_dispatch_has_a_derived_id_and_is_written_once(probe_units):
    unit, _, _ = probe_units
    uow = unit()
    first = uow.dispatch("probe.tally.count", {"subject": "k"}, key="order-7")
    again = uow.dispatch("probe.tally.count", {"subject": "k"}, key="order-7")
    plain = uow.dispatch("probe.tally.count", {"subject": "k"})
    uow.commit()
    assert first == again and plain["task_id"] != first["task_id"]
    assert first["task_id"] == tasks.task_id_for("probe", "probe.tally.count", "order-7")
    assert tasks.task_id_for("probe", "probe.tally.bump", "order-7") != first["task_id"]
    for bad in ("", 7):
        with pytest.raises(InvalidTaskData, match="idempotency key"):
            uow.dispatch("probe.tally.count", {}, key=bad)
    uow.close()


# -- the kernel's dedupe on task_id (UnitOfWork.claim_task, tasks.deduplicated) -------------


@pytest.fixture
def probe_units(tmp_path):
    from sqlalchemy.orm import sessionmaker

    from shared.db import UnitOfWork, make_engine
    from tests.support.probe.models import Base, Tally
    from tests.support.probe.tasks_service import TaskProbe

    assert TaskProbe.name == "probe"  # imported, it declares the probe's tasks for dispatch

    engine = make_engine(f"sqlite:///{tmp_path}/probe.db", "probe")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)

    def unit():
        return UnitOfWork(sessions, "probe", {})

    def tally(subject):
        with sessions() as session:
            row = session.get(Tally, subject)
            return row.count if row else 0

    def count(uow, subject):
        row = uow.session.get(Tally, subject) or Tally(subject=subject, count=0)
        row.count += 1
        uow.session.add(row)

    yield unit, tally, count
    engine.dispose()


def _task():
    return {"task_id": "5b1f0f7e-0000-4000-8000-000000000001", "task_type": "probe.tally.count",
            "data": {}}


def test_a_handler_that_never_claims_runs_once_per_task_id_and_its_work_is_committed(
        probe_units):
    unit, tally, count = probe_units
    ran = []

    def handler(task):  # no claim, no commit: the kernel does both
        ran.append(task["task_id"])
        count(uow, "auto")

    for _ in range(2):
        uow = unit()
        result = tasks.deduplicated(uow, handler)(_task())
        uow.close()
    assert result is tasks.DUPLICATE
    assert ran == [_task()["task_id"]] and tally("auto") == 1


def test_a_failing_handler_rolls_its_claim_back_so_the_retry_runs(probe_units):
    unit, tally, count = probe_units
    attempts = []

    def handler(task):
        attempts.append(1)
        count(uow, "retried")
        uow.session.flush()
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    uow = unit()
    with pytest.raises(RuntimeError):
        tasks.deduplicated(uow, handler)(_task())
    uow.discard()  # what the worker's teardown does
    uow = unit()
    tasks.deduplicated(uow, handler)(_task())
    uow.close()
    assert len(attempts) == 2 and tally("retried") == 1


def test_an_explicit_claim_by_the_handler_is_idempotent_and_a_rollback_does_not_lose_it(
        probe_units):
    unit, tally, count = probe_units
    claims = []

    def handler(task):
        claims.append(uow.claim(task))  # old style: still True, nothing written twice
        count(uow, "discarded")
        uow.rollback()  # the handler changes its mind: the mark goes with the work...
        claims.append(uow.claim(task))  # ...and claiming again restores it
        uow.rollback()

    uow = unit()
    tasks.deduplicated(uow, handler)(_task())
    uow.close()
    assert claims == [True, True] and tally("discarded") == 0
    uow = unit()  # the task is marked done although the handler left nothing to commit
    assert tasks.deduplicated(uow, handler)(_task()) is tasks.DUPLICATE
    uow.close()
    assert not unit().claim(_task())


def test_a_handler_that_commits_then_fails_is_not_marked_done_so_its_retry_runs(probe_units):
    unit, tally, count = probe_units
    attempts = []

    def handler(task):
        attempts.append(1)
        count(uow, "partial")
        uow.commit()  # progress committed (and with it the kernel's mark)...
        if len(attempts) == 1:
            raise RuntimeError("...then the attempt fails")

    uow = unit()
    with pytest.raises(RuntimeError):
        tasks.deduplicated(uow, handler)(_task())
    uow.discard()
    probe = unit()
    assert probe.claim(_task())  # the mark went with the failure
    probe.discard()
    uow = unit()
    assert tasks.deduplicated(uow, handler)(_task()) is None  # the retry runs
    uow.close()
    assert len(attempts) == 2 and tally("partial") == 2
    assert not unit().claim(_task())


def test_a_handler_may_keep_its_own_mark_instead_of_the_kernels():
    assert TaskEntrypoint("unitsvc.thing.do").dedupe is True
    assert TaskEntrypoint("unitsvc.thing.do", dedupe=False).dedupe is False
