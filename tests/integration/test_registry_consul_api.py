"""The Consul HTTP API the platform relies on, against a running agent: the stand-in, or the
real ``consul agent -dev`` when a consul binary is on PATH (same tests, same expectations)."""

import time

import eventlet
import pytest
import requests

from tests.support.consul import (  # noqa: F401 - fixtures
    CheckTarget,
    ConsulAgent,
    check_target_fixture,
    consul_agent_fixture,
    wait_until,
)

INTERVAL = 1.0


def _status(agent, service_id):
    return agent.check_status(service_id)


def test_the_stand_in_says_what_it_is_when_it_starts(tmp_path):
    agent = ConsulAgent(tmp_path, test_mode=True)
    if agent.real:
        agent.binary, agent.real = None, False  # this test is about the stand-in itself
    agent.start()
    try:
        log = agent.log()
        assert "NOT Consul" in log and "production" in log
        assert "TEST MODE" in log
    finally:
        agent.stop()


def test_a_new_check_starts_critical_then_passes_within_an_interval(consul_agent, check_target):
    consul_agent.register_http("web-1", "web", check_target.url)
    assert _status(consul_agent, "web-1") == "critical"
    started = time.monotonic()
    wait_until(lambda: _status(consul_agent, "web-1") == "passing", timeout=INTERVAL + 2,
               message="check passing")
    assert time.monotonic() - started <= INTERVAL + 1.5
    check = next(c for c in consul_agent.checks().values() if c["ServiceID"] == "web-1")
    assert check["CheckID"] == "service:web-1" and check["ServiceName"] == "web"
    assert "200" in check["Output"]


def test_check_status_follows_the_http_answer(consul_agent, check_target):
    consul_agent.register_http("web-1", "web", check_target.url, timeout="500ms")
    for status, answer, delay in (("passing", 200, 0), ("warning", 429, 0),
                                  ("critical", 500, 0), ("passing", 204, 0),
                                  ("critical", 200, 1.5)):
        check_target.answer(answer, "body", delay=delay)
        wait_until(lambda s=status: _status(consul_agent, "web-1") == s,
                   timeout=INTERVAL * 2 + 3, message=f"{answer} -> {status}")


def test_an_unreachable_target_is_critical(consul_agent, check_target):
    consul_agent.register_http("web-1", "web", check_target.url)
    wait_until(lambda: _status(consul_agent, "web-1") == "passing", timeout=5)
    check_target.close()
    wait_until(lambda: _status(consul_agent, "web-1") == "critical", timeout=INTERVAL * 2 + 2)


def test_passing_shows_only_instances_whose_checks_all_pass(consul_agent, check_target):
    busy = CheckTarget()
    busy.answer(429, "busy")
    try:
        consul_agent.register_http("web-ok", "web", check_target.url)
        consul_agent.register_http("web-warn", "web", busy.url)
        consul_agent.register_http("web-down", "web", "http://127.0.0.1:1/health/ready")
        wait_until(lambda: (_status(consul_agent, "web-ok"), _status(consul_agent, "web-warn"))
                   == ("passing", "warning"), timeout=INTERVAL + 3, message="statuses settled")
        everything = {e["Service"]["ID"] for e in consul_agent.health("web")}
        passing = consul_agent.health("web", passing=True)
        assert everything == {"web-ok", "web-warn", "web-down"}
        assert [e["Service"]["ID"] for e in passing] == ["web-ok"]
        assert passing[0]["Service"]["Port"] == 1
        assert passing[0]["Service"]["Address"] == "127.0.0.1"
        assert any(c["ServiceID"] == "web-ok" for c in passing[0]["Checks"])
    finally:
        busy.close()


def test_a_blocking_query_holds_until_something_changes(consul_agent, check_target):
    first = consul_agent.get("/v1/health/service/web")
    index = int(first.headers["X-Consul-Index"])
    assert first.json() == []
    started = time.monotonic()
    query = eventlet.spawn(consul_agent.get, "/v1/health/service/web", index=index, wait="10s")
    eventlet.sleep(0.3)
    assert not query.dead  # still waiting
    consul_agent.register_http("web-1", "web", check_target.url)
    answer = query.wait()
    assert time.monotonic() - started < 5
    assert int(answer.headers["X-Consul-Index"]) > index
    assert [e["Service"]["ID"] for e in answer.json()] == ["web-1"]


def test_a_blocking_query_returns_when_its_wait_elapses(consul_agent):
    index = int(consul_agent.get("/v1/catalog/services").headers["X-Consul-Index"])
    started = time.monotonic()
    answer = consul_agent.get("/v1/catalog/services", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.0 + 1 / 16 + 1.0  # wait plus at most wait/16 of jitter
    assert int(answer.headers["X-Consul-Index"]) >= index


def test_the_catalog_lists_services_with_their_tags_and_blocks_too(consul_agent, check_target):
    index = int(consul_agent.get("/v1/catalog/services").headers["X-Consul-Index"])
    query = eventlet.spawn(consul_agent.get, "/v1/catalog/services", index=index, wait="10s")
    eventlet.sleep(0.2)
    consul_agent.register_http("api-1", "api", check_target.url, Tags=["plinth", "v1"])
    answer = query.wait()
    assert answer.json()["api"] == ["plinth", "v1"] and "consul" in answer.json()


def test_deregistration_is_immediate_and_an_unknown_id_is_404(consul_agent, check_target):
    consul_agent.register_http("web-1", "web", check_target.url)
    index = int(consul_agent.get("/v1/health/service/web").headers["X-Consul-Index"])
    assert consul_agent.put("/v1/agent/service/deregister/web-1").status_code == 200
    answer = consul_agent.get("/v1/health/service/web")
    assert answer.json() == [] and int(answer.headers["X-Consul-Index"]) > index
    assert "web-1" not in consul_agent.services()
    assert not any(c["ServiceID"] == "web-1" for c in consul_agent.checks().values())
    missing = consul_agent.put("/v1/agent/service/deregister/web-1")
    assert missing.status_code == 404 and "web-1" in missing.text


def test_a_service_critical_past_its_limit_is_deregistered_and_a_passing_one_stays(
        consul_agent, check_target):
    limit = max(1.0, consul_agent.min_deregister)
    consul_agent.register_http("doomed", "web", "http://127.0.0.1:1/health/ready",
                               deregister_after=f"{limit:g}s")
    consul_agent.register_http("healthy", "web", check_target.url,
                               deregister_after=f"{limit:g}s")
    started = time.monotonic()
    wait_until(lambda: "doomed" not in consul_agent.services(),
               timeout=limit + consul_agent.reap_interval + INTERVAL + 5,
               message="critical service reaped")
    assert time.monotonic() - started >= limit - 0.1
    assert "healthy" in consul_agent.services()
    assert _status(consul_agent, "healthy") == "passing"


@pytest.mark.parametrize("body, fragment", [
    ({"ID": "x", "Port": 1}, "name"),
    ({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "often"}},
     "duration"),
])
def test_bad_registrations_get_a_400_naming_the_problem(consul_agent, body, fragment):
    answer = consul_agent.put("/v1/agent/service/register", body)
    assert answer.status_code == 400 and fragment in answer.text.lower()
    assert consul_agent.services() == {}


def test_bad_requests_are_refused_not_crashed(consul_agent):
    broken = requests.put(f"{consul_agent.url}/v1/agent/service/register", data="{not json",
                          timeout=5)
    assert broken.status_code == 400
    deep = requests.put(f"{consul_agent.url}/v1/agent/service/register",
                        data="[" * 100000 + "]" * 100000, timeout=5)
    assert deep.status_code == 400
    assert requests.get(f"{consul_agent.url}/v1/agent/service/register",
                        timeout=5).status_code == 405
    assert consul_agent.get("/v1/health/service/web", index="abc").status_code == 400
    assert consul_agent.get("/v1/health/service/web", index="1", wait="soon").status_code == 400
    assert consul_agent.get("/v1/status/leader").ok  # still serving
