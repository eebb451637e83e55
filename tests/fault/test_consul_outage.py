"""Fault: Consul unreachable, and restarted empty, under steady load (issue 9, item 4).

Every process reaches the Consul agent (the stand-in, or the real agent when a ``consul``
binary is on PATH) through a FaultProxy. The proxy cuts every connection and refuses new ones;
meanwhile the agent is restarted, so it comes back knowing no instance at all, as a real agent
restarted without a data directory would. Then the proxy lets connections through again.

Asserted: the platform keeps serving throughout (every request 2xx, every readiness probe
200); the dashboard says "degraded" while the registry is unreachable; once it is back every
instance of every service registers again by itself, passes its check, and the dashboard
says "ok".
"""

import time

import pytest
import requests

from tests.support.consul import ConsulAgent
from tests.support.fault_helpers import Load, new_email, record, sign_up, until
from tests.support.faultproxy import FaultProxy
from tests.support.platform import API, SERVICES, Platform, bearer

OUTAGE_SECONDS = 6.0


@pytest.fixture(scope="module")
def consul(tmp_path_factory):
    agent = ConsulAgent(tmp_path_factory.mktemp("consul")).start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def consul_proxy(consul):
    with FaultProxy(("127.0.0.1", consul.port)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def platform(consul_proxy):
    platform = Platform(name="fault-consul", env={
        "CONSUL_HTTP_ADDR": consul_proxy.address, "CONSUL_CHECK_INTERVAL": "1s",
        "CONSUL_CHECK_TIMEOUT": "1s", "CONSUL_RESYNC_INTERVAL": "1s",
        "CONSUL_RETRY_MAX": "2s", "GATEWAY_CONSUL_WATCH_WAIT": "5s"},
        gateway_env={"GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute"})
    platform.start()
    try:
        yield platform
    finally:
        consul_proxy.restore()
        platform.stop()


def status(platform):
    response = requests.get(platform.url("/status.json"), timeout=5)
    assert response.status_code == 200
    return response.json()


def steps(platform):
    _, pair = platform.new_user()
    token = pair["access_token"]

    def reading(http, base):
        return "read", http.get(f"{base}{API}/users/me", headers=bearer(token), timeout=30), {}

    def signing_up(http, base):
        return "sign-up", sign_up(http, base, new_email("consul"), timeout=30), {}

    def checking(http, base):
        return "authz-check", http.get(f"{base}{API}/authz/check", headers=bearer(token),
                                       params={"permission": "profile:read"}, timeout=30), {}

    return [reading, signing_up, checking]


def registered(consul):
    return {name: len(consul.health(name, passing=True)) for name in SERVICES}


def everything_ready(platform):
    names = (*SERVICES, "gateway")
    urls = [platform.service_url(name, "/health/ready") for name in names]
    return {name: requests.get(url, timeout=5).status_code for name, url in zip(names, urls,
                                                                                strict=True)}


def test_the_platform_serves_through_a_consul_outage_and_everything_registers_again(
        platform, consul, consul_proxy):
    until(lambda: registered(consul) == dict.fromkeys(SERVICES, 1) and
          status(platform)["status"] == "ok", timeout=20, interval=0.2,
          what="every service registered and the dashboard ok")
    load = Load(platform.base_url, steps(platform), pause=0.05).start()
    try:
        load.wait_samples(30, since=0, timeout=20)
        cut_at = time.monotonic()
        consul_proxy.cut()
        consul.stop()  # it forgets every registration
        (_,), degraded_after = until(lambda: status(platform)["status"] == "degraded" and (1,),
                                     timeout=15, interval=0.1, what="the dashboard degraded")
        data = status(platform)
        assert data["registry"]["reachable"] is False and data["registry"]["degraded"] is True
        page = requests.get(platform.url("/status"), timeout=5)
        assert page.status_code == 200 and "degraded" in page.text.lower()
        ready_during = everything_ready(platform)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
        consul.start()
        assert registered(consul) == dict.fromkeys(SERVICES, 0)  # it came back empty
        restored_at = time.monotonic()
        consul_proxy.restore()
        (_,), back_after = until(
            lambda: registered(consul) == dict.fromkeys(SERVICES, 1) and (1,), timeout=20,
            interval=0.2, what="every instance registered and passing again")
        until(lambda: status(platform)["status"] == "ok", timeout=15, interval=0.2,
              what="the dashboard ok again")
        ok_after = time.monotonic() - restored_at
        time.sleep(1.0)
    finally:
        load.stop()

    assert degraded_after <= 10.0, degraded_after
    assert ready_during == dict.fromkeys((*SERVICES, "gateway"), 200), ready_during
    samples = load.between()
    assert {s.status for s in samples} <= {200, 201}, load.statuses()
    during = load.between(cut_at, restored_at)
    assert len(during) >= 20, "hardly any request during the outage"
    assert back_after <= 15.0, back_after
    record("consul_outage", {
        "outage (s)": OUTAGE_SECONDS,
        "requests": len(samples),
        "answers during the outage": load.statuses(cut_at, restored_at),
        "answers overall": load.statuses(),
        "dashboard degraded after (s)": round(degraded_after, 2),
        "readiness during the outage": ready_during,
        "every instance registered and passing again after (s)": round(back_after, 2),
        "dashboard ok again after (s)": round(ok_after, 2),
    })
