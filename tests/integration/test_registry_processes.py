"""Real `nameko run` processes of identity, Consul (stand-in or real) and the gateway's view:
registration of two instances, a Consul restart, a SIGKILL and a SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from nameko.testing.utils import find_free_port

from gateway.discovery import NoPassingInstance, ServiceView
from tests.conftest import CHEAP_ARGON2
from tests.support.consul import (  # noqa: F401 - fixtures
    ROOT,
    consul_agent_fixture,
    wait_until,
)
from tests.support.discovery import wait_for

INTERVAL = 1.0
CHECK_TIMEOUT = 1.0


class NamekoProcess:
    def __init__(self, service, env, log_path):
        self.port = find_free_port()
        self.log_path = log_path
        env = dict(env, **{f"{service.upper()}_WEB_ADDRESS": f"127.0.0.1:{self.port}"})
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nameko", "run", "--config", f"config/{service}.yaml",
                 f"{service}.service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=1).ok
        except requests.RequestException:
            return False

    def log(self):
        with open(self.log_path) as log:
            return log.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def identity_processes(amqp_uri, pg_uri, consul_agent, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), AMQP_URI=amqp_uri, IDENTITY_DB_URI=pg_uri,
               CONSUL_HTTP_ADDR=consul_agent.address, CONSUL_CHECK_INTERVAL=f"{INTERVAL:g}s",
               CONSUL_CHECK_TIMEOUT=f"{CHECK_TIMEOUT:g}s", CONSUL_DEREGISTER_AFTER="3s",
               CONSUL_RESYNC_INTERVAL="0.5s", CONSUL_RETRY_MAX="1s", LOG_LEVEL="INFO",
               **{k: str(v) for k, v in CHEAP_ARGON2.items()})
    processes = [NamekoProcess("identity", env, tmp_path / f"identity-{n}.log") for n in (1, 2)]
    try:
        for process in processes:
            wait_until(process.ready, timeout=60, interval=0.2, message="identity ready")
        yield processes
    finally:
        for process in processes:
            process.close()
        for process in processes:
            print(f"--- {process.log_path.name}\n{process.log()[-3000:]}")


def _ids(view):
    """The identity instances and their statuses, as Consul reports them now (not stale)."""
    service = view.snapshot()["services"].get("identity")
    if not service or service["stale"]:
        return None
    return {i["id"]: i["status"] for i in service["instances"]}


def _statuses(view):
    return sorted((_ids(view) or {}).values())


def test_instances_come_and_go_from_the_view_as_they_live_and_die(identity_processes,
                                                                  consul_agent, rpc):
    first, second = identity_processes
    view = ServiceView.from_config({"CONSUL_HTTP_ADDR": consul_agent.address},
                                   services=["identity"], wait=5.0, backoff_max=0.5).start()
    try:
        # two instances registered, both passing, both shown
        assert wait_for(view, lambda v: _statuses(v) == ["passing", "passing"], 10), \
            view.snapshot()
        ids = {int(i.rsplit("-", 1)[1]): i for i in _ids(view)}
        assert set(ids) == {first.port, second.port}

        # Consul goes away: the services keep serving, the view says it cannot tell
        consul_agent.stop()
        assert rpc.call("identity", "list_users", kwargs={"limit": 1})["items"] is not None
        assert wait_for(view, lambda v: v.registry_reachable is False, 5)
        assert view.has_passing("identity") is None
        assert view.snapshot()["registry"]["degraded"] is True

        # Consul is back, empty: both instances register again by themselves
        consul_agent.start()
        started = time.monotonic()
        assert wait_for(view, lambda v: _statuses(v) == ["passing", "passing"], 10), \
            view.snapshot()
        assert time.monotonic() - started < 6

        # SIGKILL: no goodbye; its check goes critical within an interval and it stops counting
        first.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(view, lambda v: (_ids(v) or {}).get(ids[first.port]) == "critical",
                             INTERVAL + CHECK_TIMEOUT + 2), view.snapshot()
        assert time.monotonic() - killed_at <= INTERVAL + CHECK_TIMEOUT + 1.5
        assert [i["id"] for i in view.passing("identity")] == [ids[second.port]]
        assert view.has_passing("identity") is True
        # ... and Consul drops it once critical for DeregisterCriticalServiceAfter
        assert wait_for(view, lambda v: ids[first.port] not in (_ids(v) or {ids[first.port]: 0}),
                             max(3, consul_agent.min_deregister) + consul_agent.reap_interval
                             + 3), view.snapshot()

        # SIGTERM: deregistered at once, before the process finishes stopping
        second.proc.send_signal(signal.SIGTERM)
        termed_at = time.monotonic()
        assert wait_for(view, lambda v: _ids(v) == {}, 5), view.snapshot()
        assert time.monotonic() - termed_at < 2.0
        assert view.has_passing("identity") is False
        with pytest.raises(NoPassingInstance):
            view.require("identity")
        assert second.proc.wait(timeout=15) == 0
        assert "deregistered" in second.log()
    finally:
        view.stop()
