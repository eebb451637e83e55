"""Every service registers itself with Consul (shared.registration.Registration in ServiceBase):
on start, with an HTTP check on /health/ready; deregistered on stop before in-flight work
drains; running on, and retrying, while Consul is away; re-registering when Consul forgets."""

import logging
import socket
import time

import eventlet
import eventlet.event
import pytest
import requests
from nameko.testing.utils import find_free_port

from shared import service as kernel
from shared.config import ConfigError
from shared.registry import parse_duration
from shared.rpc import rpc
from tests.support.consul import (  # noqa: F401 - fixtures
    ConsulAgent,
    consul_agent_fixture,
    wait_until,
)

HELD = {}


class ProbeService(kernel.ServiceBase):
    name = "registry_probe"

    @rpc
    def ping(self):
        return "pong"

    @rpc
    def hold(self, key):
        """Runs until the test releases ``key``: in-flight work during a stop."""
        started, release = HELD[key]
        started.send(True)
        release.wait()
        return "released"

    @rpc
    def registration_state(self):
        return self.registration.state


def _fast(agent_address, **extra):
    return {"CONSUL_HTTP_ADDR": agent_address, "CONSUL_CHECK_INTERVAL": "1s",
            "CONSUL_CHECK_TIMEOUT": "1s", "CONSUL_RESYNC_INTERVAL": "0.3s",
            "CONSUL_RETRY_MAX": "0.5s", **extra}


def _port(container):
    return int(container.config["WEB_SERVER_ADDRESS"].rsplit(":", 1)[1])


def _instance_id(container):
    return f"{container.service_name}-{socket.gethostname()}-{_port(container)}"


def _health(container):
    return requests.get(f"http://127.0.0.1:{_port(container)}/health", timeout=5).json()


def test_a_service_registers_on_start_with_a_check_that_passes_within_an_interval(
        start_service, consul_agent):
    container = start_service(ProbeService, **_fast(consul_agent.address))
    ident = _instance_id(container)
    service = wait_until(lambda: consul_agent.services().get(ident), timeout=5,
                         message="registered")
    registered_at = time.monotonic()
    assert service["Service"] == "registry_probe"
    assert (service["Address"], service["Port"]) == ("127.0.0.1", _port(container))
    assert "plinth" in service["Tags"]
    assert set(service["Meta"]) >= {"version", "pid", "started_at", "host"}
    check = next(c for c in consul_agent.checks().values() if c["ServiceID"] == ident)
    definition = check["Definition"]
    assert definition["HTTP"] == f"http://127.0.0.1:{_port(container)}/health/ready"
    assert parse_duration(definition["Interval"]) == 1.0
    assert parse_duration(definition["Timeout"]) == 1.0
    assert parse_duration(definition["DeregisterCriticalServiceAfter"]) == 60.0  # the default
    wait_until(lambda: consul_agent.check_status(ident) == "passing", timeout=4,
               message="check passing")
    assert time.monotonic() - registered_at < 2.5  # one interval, plus the check itself
    detail = wait_until(lambda: _health(container)["registry"]["check_status"] == "passing"
                        and _health(container), timeout=3, message="/health sees passing")
    assert detail["status"] == "healthy"
    assert detail["checks"]["registry"]["status"] == "up"
    assert detail["registry"]["state"] == "registered"
    assert detail["registry"]["instance_id"] == ident


def test_stopping_deregisters_first_while_in_flight_work_still_finishes(
        start_service, consul_agent, rpc):
    container = start_service(ProbeService, **_fast(consul_agent.address))
    ident = _instance_id(container)
    wait_until(lambda: consul_agent.check_status(ident) == "passing", timeout=5)
    started, release = HELD["stop"] = (eventlet.event.Event(), eventlet.event.Event())
    call = eventlet.spawn(rpc.call, "registry_probe", "hold", args=["stop"], timeout=20)
    started.wait(timeout=10)
    stopping = eventlet.spawn(container.stop)
    wait_until(lambda: ident not in consul_agent.services(), timeout=3,
               message="deregistered while the call is in flight")
    assert not call.dead and not stopping.dead  # the drain has not finished: it waits
    ready = requests.get(f"http://127.0.0.1:{_port(container)}/health/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["state"] == "stopping"
    release.send(True)
    assert call.wait() == "released"  # the in-flight work completed
    stopping.wait()
    assert ident not in consul_agent.services()


def test_a_killed_container_still_tries_to_deregister(start_service, consul_agent):
    container = start_service(ProbeService, **_fast(consul_agent.address))
    ident = _instance_id(container)
    wait_until(lambda: ident in consul_agent.services(), timeout=5)
    container.kill()
    assert ident not in consul_agent.services()


def test_consul_down_at_start_is_not_fatal_and_registration_follows_when_it_comes_up(
        start_service, rpc, tmp_path):
    agent = ConsulAgent(tmp_path)  # not started yet
    container = start_service(ProbeService, **_fast(agent.address))
    ident = _instance_id(container)
    assert rpc.call("registry_probe", "ping") == "pong"
    ready = requests.get(f"http://127.0.0.1:{_port(container)}/health/ready", timeout=5)
    assert ready.status_code == 200  # Consul being away never takes an instance out
    detail = wait_until(lambda: _health(container)["registry"]["state"] == "retrying"
                        and _health(container), timeout=3, message="retrying")
    assert detail["status"] == "degraded"
    assert detail["checks"]["registry"]["status"] == "down"
    assert "not registered" in detail["checks"]["registry"]["detail"]
    assert "unreachable" in detail["registry"]["last_error"]
    agent.start()
    try:
        wait_until(lambda: ident in agent.services(), timeout=5, message="registered late")
        wait_until(lambda: agent.check_status(ident) == "passing", timeout=4)
        wait_until(lambda: _health(container)["status"] == "healthy", timeout=3)
        assert rpc.call("registry_probe", "registration_state") == "registered"
    finally:
        agent.stop()


def test_an_instance_consul_forgot_registers_again_by_itself(start_service, consul_agent, rpc):
    container = start_service(ProbeService, **_fast(consul_agent.address))
    ident = _instance_id(container)
    wait_until(lambda: consul_agent.check_status(ident) == "passing", timeout=5)
    consul_agent.stop()  # an agent restarted without its data forgets every service
    assert rpc.call("registry_probe", "ping") == "pong"
    wait_until(lambda: _health(container)["registry"]["state"] == "retrying", timeout=3)
    consul_agent.start()
    started = time.monotonic()
    wait_until(lambda: ident in consul_agent.services(), timeout=5, message="re-registered")
    assert time.monotonic() - started < 3
    wait_until(lambda: consul_agent.check_status(ident) == "passing", timeout=4)


def test_a_deregistration_behind_its_back_is_repaired(start_service, consul_agent):
    container = start_service(ProbeService, **_fast(consul_agent.address))
    ident = _instance_id(container)
    wait_until(lambda: ident in consul_agent.services(), timeout=5)
    assert consul_agent.put(f"/v1/agent/service/deregister/{ident}").status_code == 200
    wait_until(lambda: ident in consul_agent.services(), timeout=3, message="registered again")


def test_without_a_consul_address_the_service_runs_unregistered_and_says_so_once(
        start_service, rpc, caplog, monkeypatch):
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    with caplog.at_level(logging.INFO, logger="shared.registration"):
        container = start_service(ProbeService, CONSUL_HTTP_ADDR="")
        assert rpc.call("registry_probe", "ping") == "pong"
        assert rpc.call("registry_probe", "registration_state") == "disabled"
    notices = [r for r in caplog.records if "without a service registry" in r.getMessage()]
    assert len(notices) == 1
    detail = _health(container)
    assert detail["registry"]["enabled"] is False and "registry" not in detail["checks"]
    assert detail["status"] == "healthy"


def test_the_configured_service_address_is_what_consul_gets(start_service, consul_agent):
    container = start_service(ProbeService, **_fast(consul_agent.address,
                                                    SERVICE_ADDRESS="probe.internal"))
    service = wait_until(lambda: consul_agent.services().get(_instance_id(container)),
                         timeout=5)
    assert service["Address"] == "probe.internal"
    check = next(c for c in consul_agent.checks().values()
                 if c["ServiceID"] == _instance_id(container))
    assert check["Definition"]["HTTP"] == f"http://probe.internal:{_port(container)}/health/ready"


def test_a_service_bound_to_every_interface_registers_a_reachable_address(
        start_service, consul_agent):
    port = find_free_port()
    container = start_service(ProbeService, WEB_SERVER_ADDRESS=f"0.0.0.0:{port}",
                              **_fast(consul_agent.address))
    ident = f"registry_probe-{socket.gethostname()}-{port}"
    service = wait_until(lambda: consul_agent.services().get(ident), timeout=5)
    assert service["Address"] not in ("0.0.0.0", "")
    wait_until(lambda: consul_agent.check_status(ident) == "passing", timeout=4,
               message="Consul reaches the registered address")
    container.stop()


@pytest.mark.parametrize("setting, value", [
    ("CONSUL_HTTP_ADDR", "ftp://consul:8500"),
    ("CONSUL_CHECK_INTERVAL", "often"),
    ("CONSUL_DEREGISTER_AFTER", "-1m"),
])
def test_a_bad_registry_setting_refuses_to_start(start_service, consul_agent, setting, value):
    with pytest.raises(ConfigError, match=setting):
        start_service(ProbeService, **_fast(consul_agent.address, **{setting: value}))
