"""Tasks (shared/tasks.py): dispatched with their change through the outbox, retried by the
broker with growing delays, dead-lettered with their error, replayed from the CLI, delayed,
periodic once per period across instances. Real RabbitMQ and PostgreSQL."""

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import eventlet
import pytest
import requests
import sqlalchemy as sa
from kombu import Connection
from sqlalchemy.orm import sessionmaker

from shared import migrations, outbox, tasks_cli
from shared.db import UnitOfWork, make_engine
from shared.tasks import InvalidTaskData, UnknownTask
from tests.support.events import EventTap
from tests.support.probe.models import Base
from tests.support.probe.service import MIGRATIONS
from tests.support.probe.tasks_service import FRAGILE, TaskProbe, calls

ROOT = Path(__file__).resolve().parents[2]
OUTBOX = Base.metadata.tables["probe.outbox"]
FAST_RETRIES = {"TASK_RETRY_DELAY": 0.3}


def until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        eventlet.sleep(0.05)
    return value


def dead_letters(amqp_uri):
    """The dead-letter queue's messages as the CLI lists them (left in the queue)."""
    out = io.StringIO()
    assert tasks_cli.main(["--service", "probe", "dead", "list"], out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
def cli_broker(amqp_uri, monkeypatch):
    monkeypatch.setenv("AMQP_URI", amqp_uri)  # the CLI reads it when no config gives one
    return amqp_uri


def test_a_task_dispatched_in_a_rolled_back_unit_of_work_is_never_delivered(
        start_service, rpc):
    start_service(TaskProbe)
    subject = f"rolled-{uuid.uuid4().hex[:8]}"
    env = rpc.call("probe", "dispatch", ["probe.tally.count", {"subject": subject}],
                   {"rollback": True, "subject": subject})
    committed = rpc.call("probe", "dispatch", ["probe.tally.count", {"subject": "other"}])
    until(lambda: calls("probe.tally.count", committed["task_id"]), what="the committed task")
    eventlet.sleep(0.5)
    assert calls("probe.tally.count", env["task_id"]) == []
    assert rpc.call("probe", "tally", [subject]) == 0  # neither the change nor its task


def test_a_task_committed_while_the_broker_is_down_is_delivered_once_it_returns(
        start_service, fault_proxy, rpc, amqp_uri, pg_uri):
    proxy = fault_proxy(5672)
    vhost = amqp_uri.rsplit("/", 1)[1]
    start_service(TaskProbe, AMQP_URI=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
    engine = make_engine(pg_uri, "probe")
    subject = f"outage-{uuid.uuid4().hex[:8]}"
    try:
        proxy.cut()
        uow = UnitOfWork(sessionmaker(bind=engine), "probe", {"request_id": "outage"})
        env = uow.dispatch("probe.tally.count", {"subject": subject})
        uow.commit()
        uow.close()
        eventlet.sleep(1.5)  # the service's relay cannot reach the broker meanwhile
        assert calls("probe.tally.count", env["task_id"]) == []
        proxy.restore()
        until(lambda: rpc.call("probe", "tally", [subject]) == 1, timeout=20,
              what="the task's effect")
        eventlet.sleep(0.5)
        assert len(calls("probe.tally.count", env["task_id"])) == 1
    finally:
        engine.dispose()


def test_a_handler_failing_twice_runs_three_times_with_growing_delays(start_service, rpc):
    start_service(TaskProbe, **FAST_RETRIES)
    subject = f"flaky-{uuid.uuid4().hex[:8]}"
    env = rpc.call("probe", "dispatch", ["probe.thing.flaky", {"subject": subject}])
    until(lambda: rpc.call("probe", "tally", [subject]) == 1, what="the third attempt")
    runs = calls("probe.thing.flaky", env["task_id"])
    assert [attempt for _, _, attempt, _ in runs] == [1, 2, 3]
    first, second = runs[1][3] - runs[0][3], runs[2][3] - runs[1][3]
    # 0.3 s then 0.6 s, each ±25%
    assert 0.2 < first < 0.5 and second > first, (first, second)


def test_an_always_failing_task_is_dead_lettered_after_max_attempts_and_announced(
        start_service, rpc, cli_broker):
    container = start_service(TaskProbe, **FAST_RETRIES)
    tap = EventTap(cli_broker, "probe", routing_key="task.dead_lettered")
    try:
        env = rpc.call("probe", "dispatch", ["probe.thing.broken", {"n": 1}])
        events = tap.wait_for(1, timeout=15)
        assert len(calls("probe.thing.broken", env["task_id"])) == 3  # max_attempts=3
        (event,) = events
        assert event["subject"] == env["task_id"]
        assert event["data"] == {
            "task_id": env["task_id"], "task_type": "probe.thing.broken",
            "queue": "probe.tasks", "attempts": 3, "reason": "exhausted",
            "error_type": "RuntimeError", "error": "broken: this handler never manages"}
    finally:
        tap.close()
    (dead,) = [d for d in dead_letters(cli_broker) if d["id"] == env["task_id"]]
    assert dead["reason"] == "exhausted" and dead["attempts"] == 3
    assert dead["task"] == "probe.thing.broken" and dead["error_type"] == "RuntimeError"
    out = io.StringIO()
    assert tasks_cli.main(["--service", "probe", "dead", "show", env["task_id"]], out=out) == 0
    shown = json.loads(out.getvalue())
    assert shown["body"]["task_id"] == env["task_id"] and "Traceback" not in out.getvalue()
    address = container.config["WEB_SERVER_ADDRESS"]
    until(lambda: _metric(address, "plinth_tasks_dead") == 1, what="the dead count")
    # the periodic probe.clock.tick may be queued or running at any moment: present is enough
    for state in ("ready", "retrying", "in_flight"):
        assert _metric(address, f"plinth_tasks_{state}") >= 0
    health = requests.get(f"http://{address}/health/ready", timeout=5).json()
    assert health["tasks"]["queue"] == "probe.tasks" and health["tasks"]["dead"] == 1


def _metric(address, name):
    text = requests.get(f"http://{address}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_dead_letter_replayed_from_the_cli_succeeds_and_one_dropped_is_gone(
        start_service, rpc, cli_broker):
    start_service(TaskProbe, **FAST_RETRIES)
    FRAGILE["broken"] = True
    try:
        subject = f"fragile-{uuid.uuid4().hex[:8]}"
        replayed = rpc.call("probe", "dispatch", ["probe.thing.fragile", {"subject": subject}])
        gone = f"gone-{uuid.uuid4().hex[:8]}"
        dropped = rpc.call("probe", "dispatch", ["probe.thing.fragile", {"subject": gone}])
        until(lambda: {d["id"] for d in dead_letters(cli_broker)}
              >= {replayed["task_id"], dropped["task_id"]}, what="two dead letters")
        FRAGILE["broken"] = False

        # as an operator runs it (make tasks SVC=... ARGS="dead replay ID"), a process of its own
        replay = subprocess.run(
            [sys.executable, "-m", "shared.tasks_cli", "--config", str(ROOT / "config/audit.yaml"),
             "--service", "probe", "dead", "replay", replayed["task_id"]],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=60)
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout.strip() == f"replayed {replayed['task_id']}"
        out = io.StringIO()
        until(lambda: rpc.call("probe", "tally", [subject]) == 1, what="the replayed task")
        assert calls("probe.thing.fragile", replayed["task_id"])[-1][2] == 1  # attempts anew
        assert tasks_cli.main(["--service", "probe", "dead", "drop", dropped["task_id"]],
                              out=out) == 0
        assert dead_letters(cli_broker) == []
        assert tasks_cli.main(["--service", "probe", "dead", "drop", dropped["task_id"]],
                              out=out) == 1
        eventlet.sleep(0.5)
        assert rpc.call("probe", "tally", [gone]) == 0
    finally:
        FRAGILE["broken"] = True


def test_a_client_error_is_not_retried_and_a_poison_message_does_not_block_the_queue(
        start_service, rpc, cli_broker):
    start_service(TaskProbe, **FAST_RETRIES)
    refused = rpc.call("probe", "dispatch", ["probe.thing.refused", {}])
    with Connection(cli_broker) as conn:
        channel = conn.channel()
        for body in (b"\xff\xfe not json at all", b'["not", "an envelope"]'):
            channel.basic_publish(channel.prepare_message(
                body, content_type="application/json",
                properties={"message_id": f"poison-{len(body)}"}), exchange="",
                routing_key="probe.tasks")
    subject = f"after-{uuid.uuid4().hex[:8]}"
    rpc.call("probe", "dispatch", ["probe.tally.count", {"subject": subject}])
    until(lambda: rpc.call("probe", "tally", [subject]) == 1, what="the task behind the poison")
    found = until(lambda: (d := {x["id"]: x for x in dead_letters(cli_broker)}) and len(d) >= 3
                  and d, what="three dead letters")
    assert found[refused["task_id"]]["reason"] == "client_error"
    assert found[refused["task_id"]]["error_type"] == "Invalid"
    assert len(calls("probe.thing.refused", refused["task_id"])) == 1
    poisons = [d for d in found.values() if d["id"].startswith("poison-")]
    assert [p["reason"] for p in poisons] == ["poison", "poison"]


def test_a_delayed_task_runs_within_ten_percent_and_100ms_of_its_delay(start_service, rpc):
    start_service(TaskProbe)
    subject = f"delayed-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    env = rpc.call("probe", "dispatch", ["probe.tally.count", {"subject": subject}],
                   {"delay": 2.0})
    (run,) = until(lambda: calls("probe.tally.count", env["task_id"]), timeout=5,
                   what="the delayed task")
    waited = run[3] - started
    assert abs(waited - 2.0) <= 0.2 + 0.1, waited


def test_a_periodic_task_runs_once_per_period_with_two_instances(start_service, rpc):
    start_service(TaskProbe)
    start_service(TaskProbe)  # a second instance of the same service
    first = time.time()
    eventlet.sleep(4.5)
    slots = range(int(first) + 1, int(time.time()))  # the periods both instances saw whole
    counts = rpc.call("probe", "tallies", ["tick-"])
    assert len(slots) >= 3
    for slot in slots:
        assert counts.get(f"tick-{slot}") == 1, (slot, counts)
    ticks = [c for c in calls("probe.clock.tick") if c[3] >= 0]
    assert len({task_id for _, task_id, _, _ in ticks}) == len(ticks)  # none ran twice


def test_a_periodic_task_goes_on_after_a_restart_without_repeating_a_period(start_service, rpc):
    """The schedule lives in the service's table, not in the process: an instance started
    after another stopped neither runs a period that one ran nor stops the ticking."""
    first = start_service(TaskProbe)
    started = time.time()
    # wait for a period the first instance ran, then replace it at once
    until(lambda: any(f"tick-{slot}" in rpc.call("probe", "tallies", ["tick-"])
                      for slot in range(int(started) + 1, int(time.time()) + 1)),
          timeout=5, what="a tick of the first instance")
    down = time.time()
    first.stop()
    start_service(TaskProbe)
    up = time.time()
    eventlet.sleep(3.5)
    counts = rpc.call("probe", "tallies", ["tick-"])
    assert all(count == 1 for count in counts.values()), counts  # no period ran twice
    ran = sorted(int(subject.split("-")[1]) for subject in counts)
    assert max(ran) >= int(up) + 2, "the schedule did not go on after the restart"
    # only a period that began and ended while no instance ran may be missing
    for slot in range(int(started) + 1, int(time.time())):
        if not (down <= slot and slot + 1 <= up):
            assert slot in ran, (slot, ran, down, up)


def test_an_unknown_task_or_bad_data_is_refused_at_dispatch_with_nothing_written(
        start_service, rpc, pg_uri):
    start_service(TaskProbe)
    engine = make_engine(pg_uri, "probe")
    migrations.upgrade("probe", engine, MIGRATIONS)
    now = outbox.utcnow()
    subject = f"refused-{uuid.uuid4().hex[:8]}"

    def count():
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(OUTBOX)
                                .where(OUTBOX.c.created_at >= now,
                                       OUTBOX.c.event_type != "probe.clock.tick")).scalar()

    bad = [
        (UnknownTask, "not a name", {}, {}),
        (UnknownTask, "probe.nothing.declared", {}, {}),  # its own, without a handler
        (UnknownTask, "identity.user.anything", {}, {}),  # another's, not in the catalogue
        (InvalidTaskData, "probe.tally.count", {"when": {1, 2}}, {}),
        (InvalidTaskData, "probe.tally.count", {"blob": "x" * 70_000}, {}),
        (InvalidTaskData, "probe.tally.count", {"user": {"password": "hunter2"}}, {}),
        (InvalidTaskData, "probe.tally.count", {}, {"delay": -1}),
        (InvalidTaskData, "probe.tally.count", {}, {"eta": time.time()}),
    ]
    try:
        for error, name, data, timing in bad:
            uow = UnitOfWork(sessionmaker(bind=engine), "probe", {})
            with pytest.raises(error):
                uow.dispatch(name, data, **timing)
            uow.commit()
            uow.close()
        with pytest.raises(UnknownTask):  # over RPC too
            rpc.call("probe", "dispatch", ["identity.user.anything", {}], {"subject": subject})
        assert count() == 0
        assert rpc.call("probe", "tally", [subject]) == 0  # the change did not commit either
    finally:
        engine.dispose()


def test_a_task_delivered_twice_runs_once_though_its_handler_neither_claims_nor_commits(
        start_service, rpc, cli_broker):
    container = start_service(TaskProbe)
    subject = f"twice-{uuid.uuid4().hex[:8]}"
    env = rpc.call("probe", "dispatch", ["probe.tally.bump", {"subject": subject}])
    until(lambda: rpc.call("probe", "tally", [subject]) == 1, what="the first delivery")
    with Connection(cli_broker) as conn:  # the same envelope again, as a redelivery brings it
        channel = conn.channel()
        channel.basic_publish(channel.prepare_message(
            json.dumps(env).encode(), content_type="application/json",
            properties={"message_id": env["task_id"]}), exchange="", routing_key="probe.tasks")
    address = container.config["WEB_SERVER_ADDRESS"]
    until(lambda: _metric(address, 'plinth_task_duplicates_total{task="probe.tally.bump"}') == 1,
          what="the duplicate")
    assert rpc.call("probe", "tally", [subject]) == 1
    assert len(calls("probe.tally.bump", env["task_id"])) == 1
