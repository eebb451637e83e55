"""The gateway's live view of instances (gateway.discovery.ServiceView) against a running
agent: blocking-query updates, routing answers, catalog discovery, Consul outages."""

import threading
import time

import pytest
from nameko.testing.utils import find_free_port

from gateway.discovery import NoPassingInstance, ServiceView
from shared.errors import Unavailable
from shared.registry import ConsulRegistry
from tests.support.consul import (  # noqa: F401 - fixtures
    CheckTarget,
    ConsulAgent,
    check_target_fixture,
    consul_agent_fixture,
    wait_until,
)
from tests.support.discovery import wait_for

INTERVAL = 1.0


@pytest.fixture
def make_view():
    views = []

    def make(address, **options):
        options.setdefault("wait", 2.0)
        options.setdefault("backoff_max", 0.5)
        view = ServiceView.from_config({"CONSUL_HTTP_ADDR": address}, **options)
        views.append(view.start())
        return view

    yield make
    for view in views:
        view.stop()


def _has(view, service, value, timeout=INTERVAL + 4):
    assert wait_for(view, lambda v: v.has_passing(service) is value, timeout), \
        f"has_passing({service!r}) never became {value}: {view.snapshot()}"


def test_without_a_consul_address_the_view_is_disabled_and_routes_blindly(monkeypatch):
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    view = ServiceView.from_config({}, services=["identity"]).start()
    assert view.has_passing("identity") is None and view.registry_reachable is None
    view.require("identity")  # no verdict, no refusal
    snap = view.snapshot()
    assert snap["registry"] == {"enabled": False, "address": None, "reachable": None,
                                "degraded": False, "last_contact": None, "last_error": None}
    assert snap["services"] == {}
    view.stop()


def test_a_malformed_address_fails_at_start():
    with pytest.raises(ValueError):
        ServiceView.from_config({"CONSUL_HTTP_ADDR": "ftp://consul"})


def test_the_view_follows_an_instance_through_its_check_statuses(consul_agent, check_target,
                                                                  make_view):
    view = make_view(consul_agent.address, services=["web"], retry_after=7)
    _has(view, "web", False)  # Consul answered: no instance at all
    with pytest.raises(NoPassingInstance) as refused:
        view.require("web")
    assert isinstance(refused.value, Unavailable)
    assert refused.value.details == {"service": "web", "retry_after": 7,
                                     "reason": "no_passing_instance"}
    consul_agent.register_http("web-1", "web", check_target.url, Meta={"version": "2.0"})
    _has(view, "web", True)
    view.require("web")
    [instance] = view.passing("web")
    assert (instance["id"], instance["address"], instance["port"]) == ("web-1", "127.0.0.1", 1)
    snap = view.snapshot()
    assert snap["registry"]["reachable"] is True and snap["registry"]["degraded"] is False
    web = snap["services"]["web"]
    assert (web["has_passing"], web["passing"], web["total"], web["stale"]) == (True, 1, 1, False)
    shown = web["instances"][0]
    assert shown["status"] == "passing" and "200" in shown["output"]
    assert shown["version"] == "2.0" and shown["since"] and shown["age_s"] >= 0
    passing_since = shown["since"]
    check_target.answer(503, "database down")
    _has(view, "web", False)
    shown = view.snapshot()["services"]["web"]["instances"][0]
    assert shown["status"] == "critical" and "database down" in shown["output"]
    assert shown["since"] >= passing_since
    check_target.answer(200, "ok")
    _has(view, "web", True)


def test_a_change_reaches_the_view_within_moments_not_at_the_next_poll(consul_agent,
                                                                       check_target, make_view):
    view = make_view(consul_agent.address, services=["web"], wait=30.0)
    _has(view, "web", False)
    started = time.monotonic()
    consul_agent.register_http("web-1", "web", check_target.url, Check={
        "HTTP": check_target.url, "Interval": "1s", "Status": "passing"})
    _has(view, "web", True, timeout=3)
    assert time.monotonic() - started < 1.0  # a blocking query woke up; not a 30 s poll


def test_a_route_to_a_service_not_seen_yet_starts_watching_it(consul_agent, check_target,
                                                              make_view):
    view = make_view(consul_agent.address, discover=False)
    assert view.has_passing("api") is None  # unknown yet: route blindly
    _has(view, "api", False)
    consul_agent.register_http("api-1", "api", check_target.url)
    _has(view, "api", True)


def test_services_are_discovered_from_the_catalog(consul_agent, check_target, make_view):
    view = make_view(consul_agent.address, services=["identity"])
    consul_agent.register_http("api-1", "api", check_target.url)
    assert wait_for(view, lambda v: "api" in v.snapshot()["services"], 3)
    _has(view, "api", True)
    services = view.snapshot()["services"]
    assert "consul" not in services and "identity" in services
    consul_agent.put("/v1/agent/service/deregister/api-1")
    assert wait_for(view, lambda v: "api" not in v.snapshot()["services"], 3)
    assert "identity" in view.snapshot()["services"]  # configured services stay


def test_with_consul_unreachable_from_the_start_the_view_routes_blindly_then_catches_up(
        tmp_path, check_target, make_view):
    agent = ConsulAgent(tmp_path)
    view = make_view(agent.address, services=["web"])
    assert wait_for(view, lambda v: v.last_error is not None, 3)
    assert view.has_passing("web") is None and view.registry_reachable is False
    snap = view.snapshot()
    assert snap["registry"]["degraded"] is True and snap["registry"]["last_error"]
    assert snap["services"]["web"]["has_passing"] is None
    agent.start()
    try:
        agent.register_http("web-1", "web", check_target.url)
        _has(view, "web", True, timeout=INTERVAL + 5)
        assert view.registry_reachable is True
        assert view.snapshot()["registry"]["degraded"] is False
    finally:
        agent.stop()


def test_a_consul_outage_keeps_the_last_view_marks_it_stale_and_recovers(consul_agent,
                                                                        check_target, make_view):
    view = make_view(consul_agent.address, services=["web"])
    consul_agent.register_http("web-1", "web", check_target.url)
    _has(view, "web", True)
    consul_agent.stop()
    assert wait_for(view, lambda v: v.registry_reachable is False, 3)
    assert view.has_passing("web") is None  # no verdict while Consul is away
    snap = view.snapshot()
    assert snap["registry"]["degraded"] is True
    web = snap["services"]["web"]
    assert web["stale"] is True and [i["id"] for i in web["instances"]] == ["web-1"]
    consul_agent.start()  # an empty agent: the instance would re-register by itself
    assert wait_for(view, lambda v: v.registry_reachable is True, 5)
    _has(view, "web", False)
    consul_agent.register_http("web-1", "web", check_target.url)
    _has(view, "web", True)


def test_stop_ends_the_watchers_promptly(consul_agent):
    view = ServiceView.from_config({"CONSUL_HTTP_ADDR": consul_agent.address},
                                   services=["web", "api"], wait=1.0)
    view.start()
    assert wait_for(view, lambda v: v.registry_reachable, 3)
    before = {t.name for t in threading.enumerate() if t.name.startswith("consul-")}
    assert {"consul-watch-web", "consul-watch-api", "consul-catalog-watch"} <= before
    started = time.monotonic()
    view.stop(timeout=3)
    assert time.monotonic() - started < 3
    wait_until(lambda: not any(t.name.startswith("consul-") and t.is_alive()
                               for t in threading.enumerate()), timeout=3)


def test_the_view_uses_the_shared_registry_client(consul_agent):
    view = ServiceView.from_config({"CONSUL_HTTP_ADDR": f"http://{consul_agent.address}",
                                    "CONSUL_TIMEOUT": "2s"})
    registry = view.registry_factory()
    assert isinstance(registry, ConsulRegistry) and registry.timeout == 2.0
    assert view.address == f"http://{consul_agent.address}"
    assert ServiceView.from_config({"CONSUL_HTTP_ADDR": f"127.0.0.1:{find_free_port()}"}) \
        .enabled is True
