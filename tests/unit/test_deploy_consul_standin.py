"""The Consul stand-in's own logic, in process: registrations, statuses, the index, the reaper.

Its HTTP API is tested against a running agent (the stand-in, or real Consul when installed) in
tests/integration/test_registry_consul_api.py.
"""

import subprocess
import sys
import time

import pytest

from deploy.local.consul_standin import Agent, BadRequest, parse_duration, run_http_check
from tests.support.consul import ROOT, check_target_fixture  # noqa: F401 - a fixture


def _body(service_id="web-1", name="web", url="http://127.0.0.1:1/health/ready", **check):
    definition = {"HTTP": url, "Interval": "10s", **check}
    return {"ID": service_id, "Name": name, "Address": "127.0.0.1", "Port": 8080,
            "Tags": ["plinth"], "Meta": {"version": "1"}, "Check": definition}


@pytest.fixture
def agent():
    agent = Agent(node="test", min_deregister=0.0, reap_interval=0.5)
    yield agent
    agent.stopped.set()
    for check in list(agent.checks.values()):
        check.stop.set()


def test_go_durations_parse_and_garbage_does_not():
    assert parse_duration("1m30s") == 90.0 and parse_duration("250ms") == 0.25
    assert parse_duration("3") == 3.0 and parse_duration(2) == 2.0
    for bad in ("", "soon", "10x", "1m soon"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_registration_with_a_check_starts_critical_and_moves_the_index(agent):
    before = agent.index
    agent.register(_body())
    assert agent.index == before + 1
    check = agent.checks["service:web-1"]
    assert check.status == "critical" and check.name == "Service 'web' check"
    service = agent.agent_services()["web-1"]
    assert service["Service"] == "web" and service["Port"] == 8080
    assert service["Meta"] == {"version": "1"} and service["Tags"] == ["plinth"]


def test_keys_are_read_in_any_case_like_consul(agent):
    agent.register({"name": "web", "id": "web-2", "port": 81,
                    "checks": [{"http": "http://127.0.0.1:1/", "interval": "5s",
                                "deregister_critical_service_after": "90s", "status": "passing"},
                               {"HTTP": "http://127.0.0.1:2/", "Interval": "5s"}]})
    assert set(agent.checks) == {"service:web-2:1", "service:web-2:2"}
    first = agent.checks["service:web-2:1"]
    assert first.status == "passing" and first.deregister_after == 90.0


@pytest.mark.parametrize("body, message", [
    ({"ID": "x"}, "Missing service name"),
    ({"Name": "web", "Port": "eighty"}, "Port"),
    ({"Name": "web", "Tags": "plinth"}, "Tags"),
    ({"Name": "web", "Meta": {"version": 1}}, "Meta"),
    ({"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "often"}}, "invalid duration"),
    ({"Name": "web", "Check": {"HTTP": "tcp://x/", "Interval": "1s"}}, "HTTP must be"),
    ({"Name": "web", "Check": {"TTL": "10s"}}, "HTTP checks only"),
    ({"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "0s"}}, "Interval"),
    ({"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "1s", "Status": "fine"}},
     "Status"),
])
def test_bad_registrations_are_refused_and_change_nothing(agent, body, message):
    index = agent.index
    with pytest.raises(BadRequest, match=message):
        agent.register(body)
    assert agent.index == index and agent.services == {} and agent.checks == {}


def test_consuls_floors_apply_outside_test_mode():
    agent = Agent()  # a 1 s interval floor and a 1 min DeregisterCriticalServiceAfter floor
    try:
        agent.register(_body(Interval="100ms", DeregisterCriticalServiceAfter="5s"))
        check = agent.checks["service:web-1"]
        assert check.interval == 1.0 and check.deregister_after == 60.0
    finally:
        agent.stopped.set()
        agent.checks["service:web-1"].stop.set()


def test_only_a_status_change_moves_the_index(agent):
    agent.register(_body())
    check = agent.checks["service:web-1"]
    index = agent.index
    agent._record(check, "critical", "still down")
    assert agent.index == index and check.output == "still down"
    agent._record(check, "passing", "HTTP GET ...: 200 OK")
    assert agent.index == index + 1 and check.modify_index == agent.index
    assert check.critical_since is None


def test_passing_filters_out_warning_and_critical_instances(agent):
    for n, status in enumerate(("passing", "warning", "critical")):
        agent.register(_body(service_id=f"web-{n}", Status=status))
    everything = agent.health_service("web")
    assert [e["Service"]["ID"] for e in everything] == ["web-0", "web-1", "web-2"]
    assert [e["Service"]["ID"] for e in agent.health_service("web", passing=True)] == ["web-0"]
    assert all(e["Checks"][0]["CheckID"] == "serfHealth" for e in everything)
    assert agent.health_service("web", tag="nope") == [] and agent.health_service("db") == []


def test_an_idempotent_reregistration_keeps_the_check_status(agent):
    agent.register(_body(Status="passing"))
    agent.register(_body())
    assert agent.checks["service:web-1"].status == "passing"
    agent.register(_body(url="http://127.0.0.1:2/other"))  # a new definition starts afresh
    assert agent.checks["service:web-1"].status == "critical"


def test_checks_left_out_of_a_reregistration_stay_unless_replaced(agent):
    two = {"Name": "web", "ID": "web-1", "Checks": [
        {"HTTP": "http://127.0.0.1:1/a", "Interval": "10s"},
        {"HTTP": "http://127.0.0.1:1/b", "Interval": "10s"}]}
    agent.register(two)
    agent.register(_body(CheckID="service:web-1:1", url="http://127.0.0.1:1/a"))
    assert set(agent.checks) == {"service:web-1:1", "service:web-1:2"}
    agent.register(_body(CheckID="service:web-1:1", url="http://127.0.0.1:1/a"),
                   replace_existing_checks=True)
    assert set(agent.checks) == {"service:web-1:1"}


def test_deregistration_removes_the_service_and_its_checks(agent):
    agent.register(_body())
    index = agent.index
    assert agent.deregister("web-1") is True
    assert agent.index == index + 1 and agent.services == {} and agent.checks == {}
    assert agent.deregister("web-1") is False and agent.index == index + 1


def test_the_reaper_removes_only_services_critical_for_longer_than_their_limit(agent):
    agent.register(_body(service_id="doomed", DeregisterCriticalServiceAfter="30s"))
    agent.register(_body(service_id="young", DeregisterCriticalServiceAfter="30s"))
    agent.register(_body(service_id="kept", Status="passing",
                         DeregisterCriticalServiceAfter="30s"))
    agent.register(_body(service_id="no-limit"))
    agent.checks["service:doomed"].critical_since -= 31
    agent.checks["service:young"].critical_since -= 29
    agent.checks["service:no-limit"].critical_since -= 3600
    agent.reap()
    assert set(agent.services) == {"young", "kept", "no-limit"}


def test_a_blocking_wait_returns_at_once_when_the_index_has_moved_and_times_out_otherwise(agent):
    started = time.monotonic()
    assert agent.wait_for(agent.index - 1, 5) == agent.index
    assert time.monotonic() - started < 0.1
    index = agent.index
    assert agent.wait_for(index, 0.2) == index
    assert time.monotonic() - started >= 0.2


def test_http_checks_follow_consuls_status_rules(check_target):
    check_target.answer(200, "ready")
    status, output = run_http_check(check_target.url, timeout=2)
    assert status == "passing"
    assert output == f"HTTP GET {check_target.url}: 200 OK Output: ready"
    check_target.answer(429, "slow down")
    assert run_http_check(check_target.url, timeout=2)[0] == "warning"
    check_target.answer(503, '{"status": "not ready"}')
    status, output = run_http_check(check_target.url, timeout=2)
    assert status == "critical" and "503" in output and "not ready" in output
    check_target.answer(200, "x" * 10000)
    assert len(run_http_check(check_target.url, timeout=2)[1]) < 4200  # output is capped
    check_target.answer(200, "late", delay=1.0)
    status, output = run_http_check(check_target.url, timeout=0.2)
    assert status == "critical" and "deadline exceeded" in output


def test_a_refused_connection_is_critical():
    status, output = run_http_check("http://127.0.0.1:1/health/ready", timeout=1)
    assert status == "critical" and "refused" in output.lower()


def test_test_only_flags_are_refused_without_test_mode():
    result = subprocess.run(
        [sys.executable, "-m", "deploy.local.consul_standin", "--reap-interval", "1s"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--test-mode" in result.stderr
