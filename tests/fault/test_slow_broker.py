"""Fault: a slow broker under steady load (issue 9, item 5).

Every process reaches RabbitMQ through a FaultProxy; the test adds 1 s of latency to every
chunk it forwards (each way), so an RPC round trip through the broker takes several seconds,
longer than the gateway's configured timeout (2 s here), then takes the latency away again.
One gunicorn worker, so the breakers /status.json shows are the ones in the request path.

Asserted, as designed: calls time out at the configured timeout (504, not sooner, not much
later); after BREAKER_FAIL_MAX consecutive failures identity's breaker opens and requests are
refused at once (503, reason circuit_open, Retry-After); once the latency is gone the breaker
lets one probe through after BREAKER_RESET_TIMEOUT, closes, and everything answers 200 again.
"""

import time

import pytest
import requests

from gateway.breakers import DEFAULT_FAIL_MAX, DEFAULT_RESET_TIMEOUT
from tests.support.fault_helpers import Load, proxied_amqp, record, until
from tests.support.faultproxy import FaultProxy
from tests.support.platform import API, Platform, bearer

RPC_TIMEOUT = 2.0
LATENCY = 1.0
SLOW_SECONDS = 10.0


@pytest.fixture(scope="module")
def proxy():
    with FaultProxy(("127.0.0.1", 5672)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def platform(proxy):
    platform = Platform(name="fault-slow", workers=1, threads=8, gateway_env={
        "GATEWAY_RPC_TIMEOUT": str(RPC_TIMEOUT), "GATEWAY_AUTHZ_TIMEOUT": str(RPC_TIMEOUT),
        "GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute"})
    platform.env["AMQP_URI"] = proxied_amqp(platform, proxy)
    platform.start()
    try:
        yield platform
    finally:
        proxy.delay(0)
        platform.stop()


def breaker(platform, service="identity"):
    response = requests.get(platform.url("/status.json"), timeout=5)
    assert response.status_code == 200
    return response.json()["services"][service]["breaker"]


def test_timeouts_fire_as_configured_and_the_breaker_opens_and_closes(platform, proxy):
    _, pair = platform.new_user()
    token = pair["access_token"]

    def reading(http, base):
        response = http.get(f"{base}{API}/users/me", headers=bearer(token), timeout=30)
        return "read", response, {"reason": _reason(response)}

    reading.kind = "read"
    load = Load(platform.base_url, [reading] * 3, pause=0.05).start()
    try:
        load.wait_samples(30, since=0, timeout=20)
        assert set(load.statuses()) == {"200"}, load.statuses()
        assert breaker(platform)["state"] == "closed"

        slow_at = time.monotonic()
        proxy.delay(LATENCY)
        (state,), opened_after = until(
            lambda: (b := breaker(platform))["state"] == "open" and (b,), timeout=20,
            interval=0.1, what="identity's breaker to open")
        time.sleep(max(0.0, SLOW_SECONDS - (time.monotonic() - slow_at)))
        fast_at = time.monotonic()
        proxy.delay(0)
        (_,), closed_after = until(lambda: breaker(platform)["state"] == "closed" and (1,),
                                   timeout=DEFAULT_RESET_TIMEOUT + 3 * RPC_TIMEOUT + 10,
                                   interval=0.1, what="identity's breaker to close again")
        recovered, _ = until(lambda: load.recovered_at(fast_at, ("read",)), timeout=10,
                             what="reads answered again")
        time.sleep(1.0)
    finally:
        load.stop()

    # what the latency touched: requests answered after it began, sent before it ended
    slow = [s for s in load.between(None, fast_at) if s.ended >= slow_at]
    timeouts = [s for s in slow if s.status == 504]
    refused = [s for s in slow if s.status == 503]
    assert {s.status for s in slow} <= {200, 503, 504}, load.statuses(slow_at, fast_at)
    # timeouts: at the configured timeout, give or take the scheduling of 2 cores
    assert len(timeouts) >= DEFAULT_FAIL_MAX, load.statuses(slow_at, fast_at)
    assert all(RPC_TIMEOUT - 0.05 <= s.seconds <= RPC_TIMEOUT + 1.0 for s in timeouts), \
        sorted(round(s.seconds, 2) for s in timeouts)
    # the breaker: open after fail_max consecutive failures, then 503 at once
    assert state["fail_max"] == DEFAULT_FAIL_MAX and state["opened"] >= 1
    assert refused and all(s.note["reason"] == "circuit_open" for s in refused)
    assert max(s.seconds for s in refused) < 0.5
    first_refusal = min(s.started for s in refused)
    assert len([s for s in timeouts if s.ended <= first_refusal + 0.05]) >= DEFAULT_FAIL_MAX
    # and closed again by a probe once the broker is fast: within reset_timeout (plus a
    # probe that may still meet the last of the latency)
    assert closed_after <= DEFAULT_RESET_TIMEOUT + 2 * RPC_TIMEOUT + 2.0, closed_after
    assert {s.status for s in load.between(recovered)} == {200}, load.statuses(recovered)
    record("slow_broker", {
        "latency added per chunk (s)": LATENCY,
        "configured RPC timeout (s)": RPC_TIMEOUT,
        "breaker fail_max / reset_timeout (s)": f"{DEFAULT_FAIL_MAX} / {DEFAULT_RESET_TIMEOUT:g}",
        "answers while slow": {str(k): len([x for x in slow if x.status == k])
                               for k in sorted({x.status for x in slow})},
        "504 durations min-max (s)": f"{min(s.seconds for s in timeouts):.2f}-"
                                     f"{max(s.seconds for s in timeouts):.2f}",
        "breaker open after (s)": round(opened_after, 2),
        "slowest 503 while open (s)": round(max(s.seconds for s in refused), 3),
        "breaker closed after the latency went (s)": round(closed_after, 2),
        "reads answered again after (s)": round(recovered - fast_at, 2),
    })


def _reason(response):
    if response.status_code in (503, 504):
        try:
            return response.json().get("reason") or response.json().get("type")
        except ValueError:
            return None
    return None
