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
    assert queue.name == "audit.tasks.delay.2000"
    assert queue.queue_arguments == {"x-message-ttl": 2000, "x-dead-letter-exchange": ""}


def test_a_handler_declaration_is_checked_at_import():
    with pytest.raises(ValueError):
        TaskEntrypoint("not-a-name")
    with pytest.raises(ValueError):
        TaskEntrypoint("audit.export.generate", every=0)


def test_the_saga_adapter_dispatches_in_the_steps_unit_of_work():
    sent = []

    class Unit:
        def dispatch(self, name, data):
            sent.append((name, data))
            return {"task_id": "t-1"}

    assert tasks.saga_step(Unit(), "unitsvc.thing.do", {"a": 1}, "s1:step") == {
        "task_id": "t-1", "task_type": "unitsvc.thing.do"}
    assert sent == [("unitsvc.thing.do", {"a": 1})]
