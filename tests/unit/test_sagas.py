"""shared/sagas.py without a container: definitions checked at import, the state machine,
compensation in reverse order, and task steps through an adapter."""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from identity.provisioning import PROVISION_USER, answer
from shared import sagas, tasks
from shared.errors import Invalid, NotFound, Unavailable
from shared.sagas import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    LocalAction,
    RpcAction,
    Saga,
    SagaDefinitionError,
    Step,
    TaskAction,
    advance,
)


def _local(uow, saga, key):
    return key


def _saga(*names, compensate=True):
    return Saga("demo", steps=[
        Step(name, RpcAction("svc", f"do_{name}"),
             compensation=RpcAction("svc", f"undo_{name}") if compensate else None)
        for name in names])


def test_a_duplicate_step_name_is_refused_at_definition():
    with pytest.raises(SagaDefinitionError, match="two steps have that name"):
        _saga("a", "b", "a")


@pytest.mark.parametrize("action", [
    RpcAction("", "method"), RpcAction("svc", ""), TaskAction(""), LocalAction(None),
    None, "svc.method"])
def test_a_step_without_a_target_is_refused_at_definition(action):
    with pytest.raises(SagaDefinitionError, match="no target"):
        Saga("demo", steps=[Step("a", action)])


def test_a_compensation_without_a_target_is_refused_too():
    with pytest.raises(SagaDefinitionError, match="compensation has no target"):
        Saga("demo", steps=[Step("a", LocalAction(_local), compensation=RpcAction("", "x"))])


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": 5, "deadline": 1}])
def test_bad_timeouts_are_refused(kwargs):
    with pytest.raises(SagaDefinitionError):
        Saga("demo", steps=[Step("a", LocalAction(_local), **kwargs)])


def test_names_and_empty_sagas_are_checked():
    with pytest.raises(SagaDefinitionError):
        Saga("Bad Name", steps=[Step("a", LocalAction(_local))])
    with pytest.raises(SagaDefinitionError, match="no steps"):
        Saga("demo", steps=[])
    with pytest.raises(SagaDefinitionError, match="share a name"):
        sagas.Sagas(_saga("a"), _saga("b"))


def test_the_platform_saga_is_a_valid_definition():
    assert [s.name for s in PROVISION_USER.steps] == ["create_user", "assign_roles"]
    assert PROVISION_USER.private == ("password_hash",)


def test_steps_done_in_order_complete_the_saga():
    saga, state = _saga("a", "b", "c"), {"input": {}, "results": {}}
    status, current = RUNNING, 0
    for expected in (1, 2):
        status, current, error = advance(saga, state, status, current, ("done", current))
        assert (status, current, error) == (RUNNING, expected, None)
    status, current, _ = advance(saga, state, status, current, ("done", 2))
    assert status == COMPLETED and state["results"] == {"a": 0, "b": 1, "c": 2}


def test_a_refused_step_compensates_the_done_ones_in_reverse_order():
    saga, state = _saga("a", "b", "c"), {"input": {}, "results": {}}
    status, current, _ = advance(saga, state, RUNNING, 0, ("done", "A"))
    status, current, _ = advance(saga, state, status, current, ("done", "B"))
    error = {"step": "c", "kind": "not_found"}
    status, current, recorded = advance(saga, state, status, current, ("refused", error))
    assert (status, current, recorded) == (COMPENSATING, 2, error)
    visited = []
    while status == COMPENSATING:
        visited.append(saga.steps[current].name)
        status, current, _ = advance(saga, state, status, current, ("compensated", None))
    assert visited == ["c", "b", "a"] and status == COMPENSATED


def test_a_refused_compensation_fails_the_saga():
    saga, state = _saga("a", "b"), {"input": {}, "results": {"a": 1}}
    status, current, error = advance(saga, state, COMPENSATING, 1,
                                     ("refused", {"kind": "invalid"}))
    assert (status, current, error) == (FAILED, 1, {"kind": "invalid"})


@pytest.mark.parametrize("status,outcome", [(COMPLETED, "done"), (COMPENSATED, "refused"),
                                            (RUNNING, "compensated"), (FAILED, "done")])
def test_no_transition_leaves_an_ended_saga_or_skips_a_state(status, outcome):
    with pytest.raises(ValueError):
        advance(_saga("a"), {"input": {}, "results": {}}, status, 0, (outcome, None))


def test_client_errors_are_told_apart_from_transient_ones():
    assert sagas.is_client_error(NotFound("x")) and sagas.is_client_error(Invalid("x"))
    assert not sagas.is_client_error(Unavailable("x"))
    assert not sagas.is_client_error(TimeoutError())


class _Runner(sagas.Sagas):
    """The provider's step logic with a fake transport: records calls, no container."""

    def __init__(self, *definitions, **kwargs):
        super().__init__(*definitions, **kwargs)
        self.calls = []
        self._running = True

    def _attempts(self, saga_id, step, action, call, key, started, deadline, view,
                  forever=False):
        self.calls.append((action.method, call, key))
        return ("done", {"created": True, **(call or {})})


def test_a_step_with_one_call_per_item_compensates_its_items_in_reverse_order():
    comp = RpcAction("authz", "unassign_role",
                     each=lambda saga: [{"role": a["role"]}
                                        for a in saga["results"]["assign"] if a["created"]])
    saga = Saga("demo", steps=[
        Step("assign", RpcAction("authz", "assign_role",
                                 each=lambda saga: [{"role": r} for r in saga["input"]["roles"]]),
             compensation=comp)])
    runner = _Runner(saga)
    state = {"input": {"roles": ["a", "b", "c"]}, "results": {}}
    runner._save_partial = lambda row, state: None

    class Row:  # only these attributes of a saga row are read
        id, name, status, current_step = "s1", "demo", RUNNING, 0
        step_started_at = datetime.now(UTC)

    outcome = runner._run_action(Row, saga, saga.steps[0], saga.steps[0].action, state,
                                 "s1:assign", deadline=10)
    assert outcome[0] == "done" and [c[2] for c in runner.calls] == [
        "s1:assign:0", "s1:assign:1", "s1:assign:2"]
    state["results"]["assign"] = outcome[1]
    runner.calls.clear()
    assert runner._compensate(Row, saga, saga.steps[0], state, "s1:assign") == \
        ("compensated", None)
    assert [c[1]["role"] for c in runner.calls] == ["c", "b", "a"]
    assert [c[2] for c in runner.calls] == ["s1:assign:undo:2", "s1:assign:undo:1",
                                            "s1:assign:undo:0"]


def test_a_task_step_dispatches_through_the_adapter_inside_the_steps_unit_of_work():
    dispatched = []

    def adapter(uow, name, payload, key):
        assert uow.session is not None  # the saga's unit of work: commits with the step
        dispatched.append((name, payload, key))
        return {"task_id": "t-1"}

    saga = Saga("demo", steps=[
        Step("notify", TaskAction("billing.invoice.send",
                                  payload=lambda saga: {"to": saga["input"]["to"]}))])
    runner = sagas.Sagas(saga, task_dispatcher=adapter)
    runner.service = "demo"
    runner.sessions = sessionmaker(bind=sa.create_engine("sqlite://"))
    runner._wake_relay = lambda: None
    runner._context_of = lambda saga_id: {"request_id": "r-1"}
    step = saga.steps[0]
    view = {"id": "s1", "input": {"to": "ann"}, "results": {}, "partial": {}}
    result = runner._call("s1", step, step.action, step.action.calls(view)[0], "s1:notify",
                          view)
    assert result == {"task_id": "t-1"}
    assert dispatched == [("billing.invoice.send", {"to": "ann"}, "s1:notify")]


def test_a_task_step_goes_through_the_kernels_tasks_once_per_idempotency_key(tmp_path):
    from shared import outbox
    from shared.db import make_engine
    from tests.support.probe import tasks_service  # declares probe.tally.count
    from tests.support.probe.models import Base

    engine = make_engine(f"sqlite:///{tmp_path}/probe.db", "probe")
    Base.metadata.create_all(engine)
    saga = Saga("demo", steps=[Step("count", TaskAction(
        "probe.tally.count", payload=lambda saga: {"subject": saga["input"]["subject"]}))])
    runner = sagas.Sagas(saga)  # no adapter given: the kernel's
    runner.service = "probe"
    runner.sessions = sessionmaker(bind=engine)
    runner._wake_relay = lambda: None
    runner._context_of = lambda saga_id: {"request_id": "r-1"}
    step = saga.steps[0]
    view = {"id": "s1", "input": {"subject": "saga"}, "results": {}, "partial": {}}
    call = step.action.calls(view)[0]
    # the same step retried after a crash, before its record: the same task, written once
    first, again = (runner._call("s1", step, step.action, call, "s1:count", view)
                    for _ in range(2))
    other = runner._call("s2", step, step.action, call, "s2:count", view)
    assert first == again and first["task_type"] == "probe.tally.count"
    assert first["task_id"] == tasks.task_id_for("probe", "probe.tally.count", "s1:count")
    assert other["task_id"] != first["task_id"]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.tables("probe")[0].c.payload)).scalars().all()
    assert sorted(r["task_id"] for r in rows) == sorted([first["task_id"], other["task_id"]])
    assert rows[0]["data"] == {"subject": "saga"} and tasks_service.TaskProbe.name == "probe"
    engine.dispose()


def test_the_provisioning_answer_names_the_failing_role_and_the_saga():
    saga = {"id": "s1", "status": COMPENSATED, "results": {}, "error": {
        "step": "assign_roles", "kind": "not_found", "message": "role x not found",
        "details": {"role": "x"}, "item": {"role": "x", "scope": None}}}
    with pytest.raises(NotFound) as refused:
        answer(saga)
    assert refused.value.details["role"] == "x" and refused.value.details["saga_id"] == "s1"
    assert answer({"id": "s2", "status": RUNNING, "error": None, "results": {}}) == \
        {"accepted": True, "saga_id": "s2", "status": RUNNING}
