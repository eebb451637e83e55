"""Rate limits shared through Redis by every gunicorn worker, as several gateway processes
would share them."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
import requests

from tests.support.platform import API, platform_fixture

LIMIT = 10
PREFIX = f"plinth-e2e-{uuid.uuid4().hex[:8]}"
REDIS_URI = "redis://127.0.0.1:6379/0"

# auth alone: its keys make the gateway ready; the limiter acts before any call anyway
platform = platform_fixture(name="gateway-limits", services=("auth",), workers=2, threads=4,
                            gateway_env={"RATELIMIT_STORAGE_URI": REDIS_URI,
                                         "RATELIMIT_KEY_PREFIX": PREFIX,
                                         "GATEWAY_RATE_LIMIT_AUTH_IP": f"{LIMIT}/minute"})


def refresh_once(platform):
    # a new connection each time, so either worker may take it
    return requests.post(platform.url(f"{API}/auth/refresh"), timeout=10,
                         json={"refresh_token": "not-a-real-refresh-token"})


def test_both_workers_share_one_budget_in_redis(platform):
    def pids():
        return {rec["pid"] for rec in platform.log_records("gateway")
                if rec.get("path") == f"{API}/auth/refresh"}

    # the platform waited for both workers to log that they are ready, so either may accept
    responses = []
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(6) as pool:
        # at least three budgets' worth, and until both workers have taken some
        while len(responses) < 3 * LIMIT or len(pids()) < 2:
            assert time.monotonic() < deadline and len(responses) < 1200, \
                f"one worker took all {len(responses)} requests: {pids()}"
            responses += pool.map(lambda _: refresh_once(platform), range(12))
    statuses = [r.status_code for r in responses]
    allowed = [r for r in responses if r.status_code != 429]
    limited = [r for r in responses if r.status_code == 429]
    # each worker alone would allow LIMIT: together they allowed LIMIT, not more
    assert len(allowed) == LIMIT, statuses
    assert all(r.status_code == 401 for r in allowed), statuses  # auth's own answer
    for response in limited:
        assert response.headers["Content-Type"] == "application/problem+json"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.headers["RateLimit-Limit"] == str(LIMIT)
        assert response.headers["RateLimit-Remaining"] == "0"
    # read when each answer left, so concurrent requests may already have spent more
    assert all(0 <= int(r.headers["RateLimit-Remaining"]) < LIMIT for r in allowed)
    keys = redis.Redis.from_url(REDIS_URI).keys(f"*{PREFIX}*")
    assert keys, "the counts live in Redis"


def test_other_route_classes_have_their_own_budget(platform):
    response = requests.get(platform.url(f"{API}/users/me"), timeout=10)
    assert response.status_code == 401  # limited by its own class, not the spent auth one
    assert response.headers["RateLimit-Limit"] != str(LIMIT)
