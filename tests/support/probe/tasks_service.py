"""The probe service with task handlers that succeed, fail and dawdle in the ways under test
(tests/integration/test_kernel_tasks.py; also run as a real process with ``nameko run``)."""

import os
import time
from pathlib import Path

from shared import service as kernel
from shared.db import Database
from shared.errors import Invalid
from shared.rpc import rpc
from shared.sagas import LocalAction, Saga, Sagas, Step, TaskAction
from shared.tasks import task
from tests.support.probe.models import Base, Tally
from tests.support.probe.service import MIGRATIONS

CALLS = []  # (task name, task id, attempt, monotonic time) of every run in this process
FRAGILE = {"broken": True}  # probe.thing.fragile fails while this holds


def calls(name, task_id=None):
    return [c for c in CALLS if c[0] == name and (task_id is None or c[1] == task_id)]


class TaskProbe(kernel.ServiceBase):
    name = "probe"
    db = Database(Base.metadata, migrations=MIGRATIONS)

    def _count(self, subject, by=1):
        tally = self.db.session.get(Tally, subject) or Tally(subject=subject, count=0)
        tally.count += by
        self.db.session.add(tally)

    def _note(self, task):
        CALLS.append((task["task_type"], task["task_id"], task["attempt"], time.monotonic()))

    @task("probe.tally.count")
    def count(self, task):  # no claim: the kernel deduplicates on task_id before this runs
        self._note(task)
        self._count(task["data"]["subject"])
        self.db.commit()
        marker = task["data"].get("marker")
        if marker:  # committed, not yet acknowledged: a kill now must not count it twice
            Path(marker).write_text(str(os.getpid()))
            time.sleep(task["data"].get("sleep", 0))

    @task("probe.thing.flaky")
    def flaky(self, task):
        self._note(task)
        if task["attempt"] < 3:
            raise RuntimeError("flaky: not this time")
        if self.db.claim(task):
            self._count(task["data"]["subject"])
            self.db.commit()

    @task("probe.thing.broken", max_attempts=3)
    def broken(self, task):
        self._note(task)
        raise RuntimeError("broken: this handler never manages")

    @task("probe.thing.fragile", max_attempts=2)
    def fragile(self, task):
        self._note(task)
        if FRAGILE["broken"]:
            raise RuntimeError("fragile: broken for now")
        if self.db.claim(task):
            self._count(task["data"]["subject"])
            self.db.commit()

    @task("probe.thing.refused")
    def refused(self, task):
        self._note(task)
        raise Invalid("the task names no such thing", {"thing": ["unknown"]})

    @task("probe.tally.bump")
    def bump(self, task):  # neither claim nor commit: the kernel commits both when it returns
        self._note(task)
        self._count(task["data"]["subject"])

    @task("probe.thing.noop")
    def noop(self, task):  # the benchmark's handler: only the kernel's work (claim, commit)
        pass

    @task("probe.clock.tick", every=1)
    def tick(self, task):
        self._note(task)
        if self.db.claim(task):  # the old style: still works (the kernel claimed it already)
            self._count(f"tick-{task['data']['slot']}")
            self.db.commit()

    @rpc
    def dispatch(self, name, data=None, delay=None, rollback=False, subject=None):
        """Dispatch ``name`` with a change of the same unit of work (``subject`` counted)."""
        if subject:
            self._count(subject)
        env = self.db.dispatch(name, data, delay=delay)
        if rollback:
            self.db.rollback()
        else:
            self.db.commit()
        return env

    @rpc
    def tally(self, subject):
        row = self.db.session.get(Tally, subject)
        return row.count if row else 0

    @rpc
    def tallies(self, prefix):
        from sqlalchemy import select

        rows = self.db.session.execute(select(Tally).where(Tally.subject.like(f"{prefix}%")))
        return {row.subject: row.count for (row,) in rows}


def _first_step(uow, saga, key):
    return {"key": key}


TWO_STEPS = Saga("two_steps", steps=[
    Step("first", LocalAction(_first_step)),
    Step("second", TaskAction("probe.thing.noop")),  # done once the task is dispatched
])


class SagaProbe(TaskProbe):
    """The task probe with a two-step saga (a local step, then a task): the tasks benchmark."""

    sagas = Sagas(TWO_STEPS)

    @rpc
    def start_sagas(self, count):
        return [self.sagas.start("two_steps", {"n": n})["id"] for n in range(count)]
