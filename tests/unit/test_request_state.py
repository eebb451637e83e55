"""gateway/request_state.py: one object per request on flask.g; and the rate-limit state."""

import pytest
from flask import Flask

from gateway import request_state
from gateway.limits import RateLimitState
from gateway.rpc import RpcPool
from shared.errors import NotFound, Unavailable


def test_each_request_has_one_state_made_on_first_use():
    app = Flask("test")
    with app.test_request_context("/"):
        first = request_state.current()
        assert request_state.current() is first
        assert first.request_id is None and first.principal is None and first.route is None
        assert first.access_log is True and first.token_rejected is False
    with app.test_request_context("/"):
        assert request_state.current() is not first


def test_the_state_holds_only_what_it_declares():
    state = request_state.RequestState()
    with pytest.raises(AttributeError):
        state.user = "someone"  # a typo or a new loose attribute fails at once


def test_the_rate_limit_state_is_read_by_name():
    state = RateLimitState(item="10/minute", remaining=3, key="k", store=None, breached=False)
    assert state.remaining == 3 and not state.breached
    assert state._replace(breached=True).breached


class _Answers:
    def __init__(self, error=None):
        self.error = error

    def call(self, service, method, kwargs, timeout, context):
        if self.error is not None:
            raise self.error
        return "answer"


def _pool(error=None):
    pool = RpcPool("amqp://guest:guest@localhost:5672//")  # connects only when first used
    pool.backend = _Answers(error)
    return pool


def test_rpc_hooks_run_by_name_in_the_order_added():
    pool, seen = _pool(), []
    pool.add_before_rpc("first", lambda service: seen.append(("first", service)))
    pool.add_before_rpc("second", lambda service: seen.append(("second", service)))
    pool.add_after_rpc("outcome", lambda service, outcome, seconds: seen.append(outcome))
    assert pool.call("identity", "get_user") == "answer"
    assert seen == [("first", "identity"), ("second", "identity"), "ok"]


def test_a_hook_name_is_registered_once():
    pool = _pool()
    pool.add_before_rpc("breakers", lambda service: None)
    with pytest.raises(ValueError, match="breakers"):
        pool.add_before_rpc("breakers", lambda service: None)
    pool.add_after_rpc("breakers", lambda service, outcome, seconds: None)  # another list


def test_a_before_hook_refuses_and_an_after_hook_cannot_change_the_result():
    pool, outcomes = _pool(NotFound("no such user")), []

    def broken(service, outcome, seconds):
        raise RuntimeError("hook bug")

    pool.add_after_rpc("broken", broken)
    pool.add_after_rpc("seen", lambda service, outcome, seconds: outcomes.append(outcome))
    with pytest.raises(NotFound):
        pool.call("identity", "get_user")
    assert outcomes == ["error"]

    def refuse(service):
        raise Unavailable("no healthy instance", {"service": service})

    pool.add_before_rpc("discovery", refuse)
    with pytest.raises(Unavailable):
        pool.call("identity", "get_user")
