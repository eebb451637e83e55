"""ConsulRegistry (shared.registry) against a running agent: register, discover, watch,
health, deregister, and what it raises when Consul is away or refuses."""

import threading
import time

import pytest
from nameko.testing.utils import find_free_port

from shared.registry import (
    CheckSpec,
    ConsulRegistry,
    Instance,
    RegistryError,
    RegistryUnavailable,
)
from tests.support.consul import (  # noqa: F401 - fixtures
    check_target_fixture,
    consul_agent_fixture,
    wait_until,
)


def _instance(n=1, port=None):
    return Instance(id=f"web-{n}", name="web", address="127.0.0.1", port=port or 9000 + n,
                    tags=("plinth", "test"), meta={"version": "9.9.9"})


def test_a_registered_instance_is_discovered_once_its_check_passes(consul_agent, check_target):
    registry = ConsulRegistry(consul_agent.address)
    registry.register(_instance(), CheckSpec(check_target.url, interval=1, timeout=1,
                                             deregister_after=60))
    index, [listed] = registry.instances("web")
    assert index > 0 and listed.status == "critical" and registry.discover("web") == []
    found = wait_until(lambda: registry.discover("web"), timeout=4, message="discovered")
    assert [i.id for i in found] == ["web-1"]
    assert found[0].meta == {"version": "9.9.9"} and found[0].tags == ("plinth", "test")
    assert (found[0].address, found[0].port) == ("127.0.0.1", 9001)
    health = registry.health("web-1")
    assert health.status == "passing" and "200" in health.output
    assert registry.services()[1]["web"] == ["plinth", "test"]


def test_deregistration_answers_whether_consul_knew_the_instance(consul_agent, check_target):
    registry = ConsulRegistry(f"http://{consul_agent.address}")
    registry.register(_instance(), CheckSpec(check_target.url, interval=1, timeout=1))
    assert registry.deregister("web-1") is True
    assert registry.instances("web")[1] == [] and registry.health("web-1") is None
    assert registry.deregister("web-1") is False


def test_watch_yields_the_current_instances_then_each_change(consul_agent, check_target):
    registry = ConsulRegistry(consul_agent.address)
    seen, stop = [], threading.Event()

    def follow():
        for instances in ConsulRegistry(consul_agent.address).watch("web", wait=2, stop=stop):
            seen.append(sorted((i.id, i.status) for i in instances))

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    wait_until(lambda: seen, timeout=3, message="first yield")
    assert seen[0] == []
    check_target.answer(503, "not ready")
    registry.register(_instance(), CheckSpec(check_target.url, interval=1, timeout=1))
    wait_until(lambda: seen[-1] == [("web-1", "critical")], timeout=3, message="registered")
    check_target.answer(200, "ready")
    wait_until(lambda: seen[-1] == [("web-1", "passing")], timeout=5, message="passing seen")
    registry.deregister("web-1")
    wait_until(lambda: seen[-1] == [], timeout=3, message="deregistration seen")
    stop.set()
    watcher.join(5)
    assert not watcher.is_alive()


def test_an_unreachable_consul_raises_registry_unavailable_fast():
    registry = ConsulRegistry(f"127.0.0.1:{find_free_port()}", timeout=1)
    started = time.monotonic()
    for call in (lambda: registry.register(_instance()), lambda: registry.deregister("web-1"),
                 lambda: registry.instances("web"), lambda: registry.services(),
                 lambda: registry.health("web-1"), lambda: registry.discover("web")):
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            call()
    assert time.monotonic() - started < 3


def test_a_registration_consul_refuses_raises_registry_error(consul_agent):
    registry = ConsulRegistry(consul_agent.address)
    bad = CheckSpec("http://127.0.0.1:1/health/ready", interval=1, timeout=1)
    with pytest.raises(RegistryError) as refused:
        registry.register(Instance(id="x", name="", address="127.0.0.1", port=1), bad)
    assert not isinstance(refused.value, RegistryUnavailable)
    assert "refused" in str(refused.value)
