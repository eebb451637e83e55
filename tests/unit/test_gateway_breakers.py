"""The gateway's per-service circuit breakers."""

import threading
import time

import pytest

from gateway.breakers import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerOpen,
    Breakers,
    CircuitBreaker,
)
from shared.config import ConfigError
from shared.errors import (
    Conflict,
    Forbidden,
    InternalError,
    Invalid,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from shared.rpc_client import BrokerUnavailable, RpcTimeout, ServiceNotRunning
from tests.support.breakers import call, counts_as_failure, guard


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _fail(exc):
    def call():
        raise exc
    return call


def _ok():
    return "ok"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker("identity", fail_max=3, reset_timeout=10, clock=clock)


def _trip(breaker, exc=None):
    for _ in range(breaker.fail_max):
        with pytest.raises((Unavailable, TimeoutError, OSError)):
            call(breaker, _fail(exc or RpcTimeout("identity.get_user did not answer")))


@pytest.mark.parametrize("exc", [RpcTimeout("t"), ServiceNotRunning("s"), BrokerUnavailable("b"),
                                 Unavailable("u"), TimeoutError("t"), ConnectionRefusedError(),
                                 OSError("reset")])
def test_timeouts_and_unavailability_count_as_failures(exc):
    assert counts_as_failure(exc)


@pytest.mark.parametrize("exc", [NotFound("n"), Invalid("i"), Conflict("c"), Unauthorized("u"),
                                 Forbidden("f"), TooManyRequests("t"), InternalError("i"),
                                 ValueError("a bug in the gateway"), KeyError("k")])
def test_business_errors_and_gateway_bugs_do_not_count(exc):
    assert not counts_as_failure(exc)


def test_the_breaker_opens_after_fail_max_consecutive_failures_and_refuses_at_once(breaker):
    for _ in range(2):
        with pytest.raises(RpcTimeout):
            call(breaker, _fail(RpcTimeout("slow")))
    assert breaker.state == CLOSED
    with pytest.raises(RpcTimeout):  # the tripping call keeps its own error
        call(breaker, _fail(RpcTimeout("slow")))
    assert breaker.state == OPEN
    called = []
    with pytest.raises(BreakerOpen) as refused:
        call(breaker, lambda: called.append(1))
    assert called == []
    assert refused.value.details == {"service": "identity", "retry_after": 10,
                                     "reason": "circuit_open"}
    assert isinstance(refused.value, Unavailable)  # the gateway answers 503


def test_a_success_resets_the_count_of_consecutive_failures(breaker):
    for _ in range(5):
        for _ in range(2):
            with pytest.raises(RpcTimeout):
                call(breaker, _fail(RpcTimeout("slow")))
        assert call(breaker, _ok) == "ok"
    assert breaker.state == CLOSED


def test_business_errors_never_open_the_breaker_and_reset_the_count(breaker):
    for _ in range(2):
        with pytest.raises(RpcTimeout):
            call(breaker, _fail(RpcTimeout("slow")))
    for _ in range(10):
        with pytest.raises(NotFound):
            call(breaker, _fail(NotFound("no such user")))
    with pytest.raises(RpcTimeout):
        call(breaker, _fail(RpcTimeout("slow")))
    assert breaker.state == CLOSED


def test_after_the_reset_timeout_one_probe_goes_through_and_its_success_closes(breaker, clock):
    _trip(breaker)
    clock.advance(9.9)
    with pytest.raises(BreakerOpen) as refused:
        call(breaker, _ok)
    assert refused.value.details["retry_after"] == 1
    clock.advance(0.2)
    assert breaker.state == HALF_OPEN
    assert call(breaker, _ok) == "ok"
    assert breaker.state == CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 0


def test_a_failed_probe_opens_the_breaker_for_another_reset_timeout(breaker, clock):
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(ServiceNotRunning):
        call(breaker, _fail(ServiceNotRunning("no consumer")))
    assert breaker.state == OPEN
    clock.advance(9)
    with pytest.raises(BreakerOpen):
        call(breaker, _ok)
    clock.advance(1)
    assert call(breaker, _ok) == "ok"


def test_a_probe_answered_with_a_business_error_closes_the_breaker(breaker, clock):
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(Invalid):
        call(breaker, _fail(Invalid("bad email", {"email": ["invalid"]})))
    assert breaker.state == CLOSED


def test_half_open_lets_exactly_one_probe_through_while_others_are_refused(breaker, clock):
    _trip(breaker)
    clock.advance(10)
    release = threading.Event()
    entered = threading.Event()

    def slow_probe():
        entered.set()
        release.wait(5)
        return "probe"

    results = []
    probe = threading.Thread(target=lambda: results.append(call(breaker, slow_probe)))
    probe.start()
    assert entered.wait(5)
    with pytest.raises(BreakerOpen) as refused:
        call(breaker, _ok)
    assert "probe" in refused.value.message
    release.set()
    probe.join(5)
    assert results == ["probe"] and breaker.state == CLOSED


def test_a_probe_whose_caller_never_reported_does_not_wedge_the_breaker(breaker, clock):
    _trip(breaker)
    clock.advance(10)
    breaker.admit()  # a probe ticket that is never recorded
    with pytest.raises(BreakerOpen):
        call(breaker, _ok)
    clock.advance(10.1)
    assert call(breaker, _ok) == "ok" and breaker.state == CLOSED


def test_an_interrupted_call_gives_no_verdict_and_frees_the_probe(breaker, clock):
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(KeyboardInterrupt):
        call(breaker, _fail(KeyboardInterrupt()))
    assert breaker.state == HALF_OPEN
    assert call(breaker, _ok) == "ok" and breaker.state == CLOSED


def test_calls_through_one_breaker_run_concurrently():
    breaker = CircuitBreaker("identity")
    started = time.monotonic()
    threads = [threading.Thread(target=call, args=(breaker, time.sleep, 0.2)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    # serialised, 8 calls of 0.2 s would take 1.6 s (pybreaker's call() holds its lock)
    assert time.monotonic() - started < 0.8


def test_state_changes_are_announced_to_a_listener(clock):
    changes = []
    breaker = CircuitBreaker("auth", fail_max=1, reset_timeout=1, clock=clock,
                             on_change=lambda *change: changes.append(change))
    with pytest.raises(RpcTimeout):
        call(breaker, _fail(RpcTimeout("slow")))
    clock.advance(1)
    call(breaker, _ok)
    assert changes == [("auth", CLOSED, OPEN), ("auth", OPEN, HALF_OPEN),
                       ("auth", HALF_OPEN, CLOSED)]


def test_a_failing_listener_does_not_break_calls(clock):
    def broken(*change):
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("auth", fail_max=1, clock=clock, on_change=broken)
    with pytest.raises(RpcTimeout):
        call(breaker, _fail(RpcTimeout("slow")))
    assert breaker.state == OPEN


def test_the_snapshot_tells_the_dashboard_state_counts_and_time_to_retry(breaker, clock):
    call(breaker, _ok)
    _trip(breaker, BrokerUnavailable("broker gone"))
    clock.advance(4)
    with pytest.raises(BreakerOpen):
        call(breaker, _ok)
    snap = breaker.snapshot()
    assert snap["state"] == OPEN and snap["retry_in"] == 6.0
    assert snap["calls"] == 4 and snap["failures"] == 3 and snap["rejected"] == 1
    assert snap["opened"] == 1 and snap["last_failure"].startswith("BrokerUnavailable")
    assert snap["fail_max"] == 3 and snap["reset_timeout"] == 10.0


@pytest.mark.parametrize("options", [{"fail_max": 0}, {"reset_timeout": 0}])
def test_nonsense_settings_are_refused(options):
    with pytest.raises(ValueError):
        CircuitBreaker("x", **options)
    with pytest.raises(ValueError):
        Breakers(**options)


def test_each_service_has_its_own_breaker(clock):
    breakers = Breakers(fail_max=1, reset_timeout=5, clock=clock)
    with pytest.raises(RpcTimeout):
        call(breakers.get("auth"), _fail(RpcTimeout("slow")))
    with pytest.raises(BreakerOpen):
        call(breakers.get("auth"), _ok)
    assert call(breakers.get("identity"), _ok) == "ok"
    assert breakers.states() == {"auth": OPEN, "identity": CLOSED}
    assert set(breakers.snapshot()) == {"auth", "identity"}
    assert breakers.get("auth") is breakers.get("auth")


def test_rpc_pool_hooks_drive_the_breaker_by_outcome(clock):
    breakers = Breakers(fail_max=2, reset_timeout=5, clock=clock)
    for outcome in ("ok", "error", "timeout", "error", "unavailable", "ok"):
        breakers.before_rpc("identity")
        breakers.after_rpc("identity", outcome, 0.01)
    assert breakers.states()["identity"] == CLOSED
    for outcome in ("timeout", "failed"):
        breakers.before_rpc("identity")
        breakers.after_rpc("identity", outcome, 0.01)
    with pytest.raises(BreakerOpen):
        breakers.before_rpc("identity")
    breakers.after_rpc("identity", "unavailable", 0.0)  # the refused call reports too: ignored
    clock.advance(5)
    breakers.before_rpc("identity")
    breakers.after_rpc("identity", "ok", 0.01)
    assert breakers.states()["identity"] == CLOSED


def test_settings_come_from_config_or_fail_clearly(monkeypatch):
    breakers = Breakers.from_config({"BREAKER_FAIL_MAX": "2", "BREAKER_RESET_TIMEOUT": "0.5"})
    assert breakers.get("x").fail_max == 2 and breakers.get("x").reset_timeout == 0.5
    monkeypatch.setenv("BREAKER_FAIL_MAX", "7")
    assert Breakers.from_config({}).get("x").fail_max == 7
    with pytest.raises(ConfigError):
        Breakers.from_config({"BREAKER_FAIL_MAX": "many"})


def test_guard_records_what_happens_inside_a_with_block(clock):
    breakers = Breakers(fail_max=2, reset_timeout=5, clock=clock)
    with guard(breakers.get("audit")):
        pass
    for _ in range(2):
        with pytest.raises(TimeoutError), guard(breakers.get("audit")):
            raise TimeoutError("no answer")
    assert breakers.states()["audit"] == OPEN
    with pytest.raises(BreakerOpen), guard(breakers.get("audit")):
        pytest.fail("the block must not run while the breaker is open")
