"""Fault: SIGKILL the process running a task mid-handler (shared/tasks.py).

A real ``nameko run`` process handles a task: it commits the task's effect (and its dedupe
mark), then dawdles before the acknowledgement. It is killed -9 there. The broker hands the
unacknowledged task to another instance, whose kernel must see it was done (the handler never
calls ``claim``): the task is acknowledged without running the handler, the effect happens once.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
from nameko.testing.utils import find_free_port
from sqlalchemy.orm import sessionmaker

from shared.db import UnitOfWork, make_engine
from tests.support.probe.tasks_service import TaskProbe, calls

ROOT = Path(__file__).resolve().parents[2]


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _ready(address):
    try:
        return requests.get(f"http://{address}/health/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _duplicates(address):
    text = requests.get(f"http://{address}/metrics", timeout=5).text
    line = 'plinth_task_duplicates_total{task="probe.tally.count"} '
    return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0)


def test_a_task_whose_process_is_killed_mid_handler_is_redelivered_and_acts_once(
        tmp_path, amqp_uri, pg_uri, start_service, rpc):
    address = f"127.0.0.1:{find_free_port()}"
    config = tmp_path / "probe.yaml"
    config.write_text(f"AMQP_URI: '{amqp_uri}'\nDB_URI: '{pg_uri}'\n"
                      f"WEB_SERVER_ADDRESS: '{address}'\nOUTBOX_POLL_INTERVAL: 0.05\n")
    log = open(tmp_path / "probe.log", "wb")  # closed at the end of the test
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("nameko")), "run", "--config", str(config),
         "tests.support.probe.tasks_service:TaskProbe"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
        stderr=subprocess.STDOUT)
    engine = make_engine(pg_uri, "probe")
    try:
        until(lambda: _ready(address), 30, "the nameko process")
        marker = tmp_path / "running"
        subject = f"crash-{uuid.uuid4().hex[:8]}"
        uow = UnitOfWork(sessionmaker(bind=engine), "probe", {})
        env = uow.dispatch("probe.tally.count",
                           {"subject": subject, "marker": str(marker), "sleep": 60})
        uow.commit()
        uow.close()
        until(marker.exists, 15, "the handler to be running")
        assert int(marker.read_text()) == process.pid
        process.send_signal(signal.SIGKILL)
        process.wait(10)

        # another instance: the broker redelivers the task to it
        other = start_service(TaskProbe)
        until(lambda: _duplicates(other.config["WEB_SERVER_ADDRESS"]) == 1, 15,
              "the redelivery to be recognised as done")
        assert rpc.call("probe", "tally", [subject]) == 1
        assert calls("probe.tally.count", env["task_id"]) == []  # the handler did not run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        engine.dispose()
