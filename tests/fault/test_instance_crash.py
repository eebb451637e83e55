"""Fault: SIGKILL one of two identity instances under steady load (issue 9, item 3).

The platform runs with a Consul agent (1-second checks) and a second identity instance. The
first instance reaches PostgreSQL through a FaultProxy; just before the kill its database is
slowed down, so the instance is sure to hold requests (running and prefetched) when it dies.
Load through the gateway: sign-ups, profile renames with unique names, profile reads.

Asserted: no request is lost -- every one gets an answer, what the dead instance held is
redelivered to the survivor and answered (a sign-up it had committed before dying answers
409, its user existing exactly once); no state change is applied twice (one user per email,
one user.created audit entry per user, one user.updated entry per rename); the dead instance
leaves the gateway's routing view (critical on /status.json) within a few seconds.
"""

import time
import uuid

import pytest

from tests.support.consul import ConsulAgent
from tests.support.fault_helpers import (
    Database,
    Load,
    add_instance,
    new_email,
    proxied_pg,
    record,
    sign_up,
    until,
)
from tests.support.faultproxy import FaultProxy
from tests.support.platform import API, Platform, bearer

RPC_TIMEOUT = 5.0
PREFIX = "crash"


@pytest.fixture(scope="module")
def consul(tmp_path_factory):
    agent = ConsulAgent(tmp_path_factory.mktemp("consul")).start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def pg_proxy():
    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def platform(consul, pg_proxy):
    platform = Platform(name="fault-crash", env={
        "CONSUL_HTTP_ADDR": consul.address, "CONSUL_CHECK_INTERVAL": "1s",
        "CONSUL_CHECK_TIMEOUT": "1s", "CONSUL_RESYNC_INTERVAL": "1s",
        "GATEWAY_CONSUL_WATCH_WAIT": "5s"}, gateway_env={
        "GATEWAY_RPC_TIMEOUT": str(RPC_TIMEOUT), "GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute"})
    platform.start()
    try:
        add_instance(platform, "identity2", of="identity")  # straight to the database
        platform.start_process("identity2")
        platform.processes["identity"].env["IDENTITY_DB_URI"] = proxied_pg(platform, pg_proxy)
        platform.restart_process("identity")
        yield platform
    finally:
        pg_proxy.delay(0)
        platform.stop()


@pytest.fixture(scope="module")
def db(platform):
    database = Database(platform.db_uri)
    yield database
    database.dispose()


def identity_instances(platform):
    response = platform.http.get(platform.url("/status.json"), timeout=5)
    assert response.status_code == 200
    return {i["port"]: i["status"] for i in response.json()["services"]["identity"]["instances"]}


def steps(platform):
    user, pair = platform.new_user()
    token = pair["access_token"]
    names = []

    def signing_up(http, base):
        email = new_email(PREFIX)
        return "sign-up", sign_up(http, base, email, timeout=30), {"email": email}

    def renaming(http, base):
        name = f"rename-{uuid.uuid4().hex[:12]}"
        names.append(name)
        return "rename", http.patch(f"{base}{API}/users/me", headers=bearer(token),
                                    json={"display_name": name}, timeout=30), {"name": name}

    def reading(http, base):
        return "read", http.get(f"{base}{API}/users/me", headers=bearer(token), timeout=30), {}

    for step, kind in ((signing_up, "sign-up"), (renaming, "rename"), (reading, "read")):
        step.kind = kind
    return [signing_up, signing_up, renaming, reading], user


def test_a_killed_instance_loses_no_request_applies_nothing_twice_and_leaves_routing(
        platform, pg_proxy, db):
    dead, survivor = platform.processes["identity"].port, platform.processes["identity2"].port
    until(lambda: identity_instances(platform) == {dead: "passing", survivor: "passing"},
          timeout=20, interval=0.2, what="both identity instances passing on the dashboard")
    load_steps, user = steps(platform)
    load = Load(platform.base_url, load_steps, pause=0.05).start()
    try:
        load.wait_samples(60, since=0, timeout=20)
        pg_proxy.delay(0.2)  # the first instance slows down: it holds what it is given
        until(lambda: len(load.outstanding(older_than=0.5)) >= 2, timeout=10,
              what="requests held by the first instance")
        held = len(load.outstanding(older_than=0.3))
        killed_at = time.monotonic()
        platform.kill_process("identity")
        pg_proxy.delay(0)
        (_,), left_after = until(
            lambda: identity_instances(platform).get(dead, "gone") != "passing" and (True,),
            timeout=10, interval=0.1, what="the dead instance out of the routing view")
        assert identity_instances(platform).get(survivor) == "passing"
        time.sleep(2.0)
    finally:
        load.stop()

    samples = load.between()
    # every request answered: no connection error, no 5xx, no timeout
    assert all(s.status is not None for s in samples), load.statuses()
    assert {s.status for s in samples} <= {200, 201, 409}, load.statuses()
    caught = [s for s in samples if s.started < killed_at < s.ended]
    assert len(caught) >= 2, "the kill caught no request in flight"
    slowest_caught = max(s.seconds for s in caught)
    conflicts = [s for s in samples if s.status == 409]
    assert all(s.kind == "sign-up" for s in conflicts), load.statuses()
    # a 409 is a redelivered sign-up whose first run had committed: its user exists
    emails = {s.note["email"]: s.status for s in samples if s.kind == "sign-up"}
    rows = db.rows("SELECT id, email_normalized FROM identity.users "
                   "WHERE email_normalized LIKE :p", p=f"{PREFIX}-%")
    per_email = {}
    for row in rows:
        per_email[row["email_normalized"]] = per_email.get(row["email_normalized"], 0) + 1
    assert set(per_email.values()) == {1}
    for email, status in emails.items():
        if status in (201, 409):
            assert per_email.get(email) == 1, (email, status)

    # one audit entry per change, however many times its request ran
    ids = [r["id"] for r in rows]

    def entries():
        created = db.rows("SELECT subject, count(*) AS n FROM audit.entries WHERE action = "
                          "'user.created' AND subject = ANY(:ids) GROUP BY subject", ids=ids)
        renamed = db.rows("SELECT data FROM audit.entries WHERE action = 'user.updated' "
                          "AND subject = :u", u=user["id"])
        return len(created) == len(ids) and (created, renamed)

    (created, renamed), _ = until(entries, timeout=15, interval=0.2,
                                  what="the audit entries of every committed user")
    assert {r["n"] for r in created} == {1}
    names = [r["data"]["changes"]["display_name"] for r in renamed]
    assert len(names) == len(set(names)), "a rename was applied twice"
    answered = {s.note["name"] for s in samples if s.kind == "rename" and s.status == 200}
    assert answered <= set(names)

    assert left_after <= 5.0, left_after
    record("instance_crash", {
        "requests": len(samples),
        "answers": load.statuses(),
        "requests in flight at the kill": len(caught),
        "held by the killed instance (waiting > 0.3 s)": held,
        "slowest answer to a request caught by the kill (s)": round(slowest_caught, 3),
        "409 for a sign-up the dead instance had committed": len(conflicts),
        "users committed / user.created entries": f"{len(ids)} / {len(created)}",
        "renames answered 200 / user.updated entries": f"{len(answered)} / {len(names)}",
        "dead instance out of the routing view after (s)": round(left_after, 2),
    })
