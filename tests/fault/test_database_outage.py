"""Fault: one service's database unreachable for 8 seconds under steady load (issue 9, item 2).

identity reaches PostgreSQL through a FaultProxy (the other services go direct). Steady load
through the gateway on identity (profile reads, sign-ups) and on the others (authz's check,
audit's query, auth's refresh, which asks identity about the user and goes ahead when identity
cannot answer). The proxy cuts every connection and refuses new ones for 8 s.

Asserted: identity's readiness turns 503 within a few seconds and its routes answer 503 (never
a hang, never a 500); the other services' routes keep answering 200 throughout; after the
database returns identity is ready and serving again within 10 s -- the same process, no
restart -- and what was committed is intact.
"""

import time

import pytest
import requests

from tests.support.fault_helpers import (
    PASSWORD,
    Database,
    Load,
    new_email,
    proxied_pg,
    record,
    sign_up,
    until,
)
from tests.support.faultproxy import FaultProxy
from tests.support.platform import API, Platform, bearer

OUTAGE_SECONDS = 8.0
RPC_TIMEOUT = 5.0
IDENTITY_KINDS = ("profile", "sign-up")
OTHER_KINDS = ("authz-check", "audit-query", "refresh")


@pytest.fixture(scope="module")
def pg_proxy():
    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def platform(pg_proxy):
    platform = Platform(name="fault-database", gateway_env={
        "GATEWAY_RPC_TIMEOUT": str(RPC_TIMEOUT),
        "GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute"})
    platform.start()
    try:
        platform.processes["identity"].env["IDENTITY_DB_URI"] = proxied_pg(platform, pg_proxy)
        platform.restart_process("identity")
        yield platform
    finally:
        pg_proxy.restore()
        platform.stop()


@pytest.fixture(scope="module")
def db(platform):
    database = Database(platform.db_uri)
    yield database
    database.dispose()


def steps(platform):
    user, pair = platform.new_user()
    token = pair["access_token"]
    admin = platform.admin_token()
    refresh_token = [pair["refresh_token"]]

    def profile(http, base):
        return "profile", http.get(f"{base}{API}/users/me", headers=bearer(token),
                                   timeout=30), {}

    def signing_up(http, base):
        return "sign-up", sign_up(http, base, new_email("dbout"), timeout=30), {}

    def checking(http, base):
        return "authz-check", http.get(f"{base}{API}/authz/check", headers=bearer(token),
                                       params={"permission": "users:read"}, timeout=30), {}

    def querying(http, base):
        return "audit-query", http.get(f"{base}{API}/audit/events", headers=bearer(admin),
                                       params={"limit": 1}, timeout=30), {}

    def refreshing(http, base):
        response = http.post(f"{base}{API}/auth/refresh", timeout=30,
                             json={"refresh_token": refresh_token[0]})
        if response.status_code == 200:
            refresh_token[0] = response.json()["refresh_token"]
        return "refresh", response, {}

    for step, kind in ((profile, "profile"), (signing_up, "sign-up"),
                       (checking, "authz-check"), (querying, "audit-query"),
                       (refreshing, "refresh")):
        step.kind = kind
    return [profile, signing_up, checking, querying, refreshing], user


def ready(platform, name):
    try:
        return requests.get(platform.service_url(name, "/health/ready"), timeout=5).status_code
    except requests.RequestException:
        return None


def test_a_database_outage_takes_only_its_service_out_and_it_comes_back_alone(platform,
                                                                              pg_proxy, db):
    load_steps, user = steps(platform)
    identity_pid = platform.pid("identity")
    users_before = db.scalar("SELECT count(*) FROM identity.users")
    load = Load(platform.base_url, load_steps, pause=0.05).start()
    try:
        load.wait_samples(50, since=0, timeout=20)
        assert set(load.statuses()) == {"200", "201"}, load.statuses()
        assert ready(platform, "identity") == 200

        cut_at = time.monotonic()
        pg_proxy.cut()
        _, not_ready_after = until(lambda: ready(platform, "identity") == 503, timeout=10,
                                   interval=0.1, what="identity's readiness to fail")
        health = requests.get(platform.service_url("identity", "/health"), timeout=5).json()
        assert health["checks"]["database"]["status"] == "down"
        assert health["checks"]["broker"]["status"] == "up"
        others_ready = {name: ready(platform, name) for name in ("auth", "authz", "audit")}
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
        restored_at = time.monotonic()
        pg_proxy.restore()

        _, ready_after = until(lambda: ready(platform, "identity") == 200, timeout=15,
                               interval=0.1, what="identity ready again")
        try:
            recovered, _ = until(lambda: load.recovered_at(restored_at, IDENTITY_KINDS),
                                 timeout=15, what="identity's routes to answer again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {load.timeline(restored_at)}") from None
        time.sleep(1.0)
    finally:
        load.stop()

    assert others_ready == {"auth": 200, "authz": 200, "audit": 200}
    assert not_ready_after <= 5.0, not_ready_after
    # identity's routes: 503, at once, once the outage had set in
    during = load.between(cut_at + 1.0, restored_at)
    for kind in IDENTITY_KINDS:
        answers = [s for s in during if s.kind == kind]
        assert answers and {s.status for s in answers} == {503}, load.statuses(
            cut_at + 1.0, restored_at, kind)
    first_503 = load.first(lambda s: s.kind in IDENTITY_KINDS and s.status == 503,
                           after=cut_at)
    slowest = max(s.seconds for s in load.between(cut_at, restored_at)
                  if s.kind in IDENTITY_KINDS)
    assert slowest <= RPC_TIMEOUT + 1.0, slowest
    assert 500 not in {s.status for s in load.between()}
    # the other services did not notice
    for kind in OTHER_KINDS:
        answers = load.between(cut_at, restored_at, kind)
        assert answers and {s.status for s in answers} == {200}, load.statuses(
            cut_at, restored_at, kind)
    # identity came back by itself: same process, serving within 10 s of the database
    assert platform.pid("identity") == identity_pid
    recovery = recovered - restored_at
    assert recovery <= 10.0, recovery
    assert {s.status for s in load.between(recovered)} <= {200, 201}, load.statuses(recovered)
    # nothing committed was lost, and the data is whole
    created = len([s for s in load.between(kind="sign-up") if s.status == 201])
    assert db.scalar("SELECT count(*) FROM identity.users") >= users_before + created
    me = requests.get(platform.url(f"{API}/users/me"), timeout=10, headers=bearer(
        platform.login(user["email"], PASSWORD)["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == user["id"]

    record("database_outage", {
        "outage (s)": OUTAGE_SECONDS,
        "requests": load.count(),
        "identity readiness 503 after (s)": round(not_ready_after, 2),
        "first identity 503 after (s)": round(first_503.ended - cut_at, 3),
        "slowest identity answer during the outage (s)": round(slowest, 3),
        "identity answers during the outage": {
            k: load.statuses(cut_at, restored_at, k) for k in IDENTITY_KINDS},
        "other services' answers during the outage": {
            k: load.statuses(cut_at, restored_at, k) for k in OTHER_KINDS},
        "identity ready again after (s)": round(ready_after, 2),
        "identity routes serving again after (s)": round(recovery, 2),
        "restarts": 0,
    })
