"""The platform on a three-node RabbitMQ cluster with AMQP_QUEUE_TYPE=quorum (SPEC §11).

One platform for the module (every process given all three nodes in ``AMQP_URI``), under
steady sign-ups through the gateway while the cluster loses nodes:

- the node leading the busiest queues stops: no request hangs (each answers 2xx, 503 or 504
  within its timeout), sign-ups succeed again within 10 s, and every user created has exactly
  one ``user.created`` audit entry and the ``user`` role;
- all three nodes restart one at a time: zero lost, zero duplicated audit entries.
"""

import time

import pytest

from audit.consumer import DEFAULT_QUEUE as AUDIT_QUEUE
from tests.support.fault_helpers import Database, Load, new_email, sign_up, until
from tests.support.platform import Platform

RPC_TIMEOUT = 5.0
CLIENT_TIMEOUT = 30.0
SLOWEST_ANSWER = RPC_TIMEOUT + 3.0  # an RPC timeout plus the gateway's own work, on 2 cores
RESUMED_WITHIN = 10.0


@pytest.fixture(scope="module")
def platform(rabbit_cluster):
    with Platform(broker=rabbit_cluster, name="cluster", env={"AMQP_QUEUE_TYPE": "quorum"},
                  gateway_env={"GATEWAY_RPC_TIMEOUT": str(RPC_TIMEOUT),
                               "GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute"},
                  startup_timeout=120.0) as running:
        yield running


@pytest.fixture(scope="module")
def db(platform):
    database = Database(platform.db_uri)
    yield database
    database.dispose()


def sign_ups(prefix, clients=2, pause=0.3):
    def signing_up(http, base):
        return "sign-up", sign_up(http, base, new_email(prefix), timeout=CLIENT_TIMEOUT), {}

    signing_up.kind = "sign-up"
    return Load(None, [signing_up] * clients, pause=pause)


def start(load, platform):
    load.base_url = platform.base_url
    load.start()
    load.wait_samples(6, since=0, timeout=60)
    return load


def busiest_queues(platform, cluster):
    """The queues every sign-up goes through: identity's RPC queue, authz's handler of
    user.created and audit's queue."""
    names = list(cluster.queues(platform.vhost))
    handler = next(n for n in names if n.startswith("evt-identity-user.created--authz"))
    return ["rpc-identity", handler, AUDIT_QUEUE]


def leader_of_most(platform, cluster, queues):
    leaders = [cluster.queue_leader(platform.vhost, name) for name in queues]
    return max(set(leaders), key=leaders.count)


def assert_no_request_hung(load, since=None):
    samples = load.between(since)
    unanswered = [s for s in samples if s.status is None]
    assert not unanswered, [(s.error, round(s.seconds, 1)) for s in unanswered]
    assert {s.status for s in samples} <= {201, 503, 504}, load.statuses(since)
    slowest = max(s.seconds for s in samples)
    assert slowest <= SLOWEST_ANSWER, f"a sign-up took {slowest:.1f}s: {load.timeline(since)}"


def assert_each_user_once_in_audit_with_role(db, prefix, load):
    answered = len([s for s in load.between(kind="sign-up") if s.status == 201])

    def settled():
        users = [r["id"] for r in db.rows(
            "SELECT id FROM identity.users WHERE email_normalized LIKE :p", p=f"{prefix}-%")]
        created = {r["subject"]: r["n"] for r in db.rows(
            "SELECT subject, count(*) AS n FROM audit.entries WHERE action = 'user.created' "
            "AND subject = ANY(:s) GROUP BY subject", s=users)}
        roles = {r["user_id"] for r in db.rows(
            "SELECT user_id FROM authz.assignments WHERE role = 'user' AND user_id = ANY(:s)",
            s=users)}
        done = len(created) == len(users) and roles == set(users)
        return done and (users, created, roles)

    (users, created, _), _ = until(settled, timeout=60, interval=0.5,
                                   what="an audit entry and a role for every new user")
    assert len(users) >= answered > 0  # every 201 was committed
    assert set(created.values()) == {1}  # no user.created entry lost or duplicated


def test_every_durable_queue_is_a_quorum_queue_and_reply_queues_stay_classic(
        platform, cluster):
    platform.new_user()
    queues = cluster.queues(platform.vhost)
    durable = {name for name, q in queues.items()
               if q["durable"] and not q["exclusive"] and not q["auto_delete"]
               and not name.startswith("rpc.reply-")}
    assert {"rpc-identity", "rpc-auth", "rpc-authz", "rpc-audit", AUDIT_QUEUE} <= durable
    assert any(name.startswith("evt-identity-user.created--authz") for name in durable)
    assert not [name for name in durable if queues[name]["type"] != "quorum"]
    others = [q for name, q in queues.items() if name not in durable]
    assert others and all(q["type"] == "classic" for q in others)


def test_stopping_the_node_leading_the_busiest_queues_loses_no_sign_up(platform, cluster, db):
    prefix = "leaderloss"
    load = start(sign_ups(prefix), platform)
    try:
        victim = leader_of_most(platform, cluster, busiest_queues(platform, cluster))
        stopped_at = time.monotonic()
        cluster.stop_node(victim)
        try:
            recovered, _ = until(lambda: load.recovered_at(stopped_at, ["sign-up"]),
                                 timeout=30, what="sign-ups to succeed again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {load.timeline(stopped_at)}") from None
        time.sleep(5)
        cluster.start_node(victim)
        time.sleep(3)
    finally:
        load.stop()
    assert recovered - stopped_at <= RESUMED_WITHIN, load.timeline(stopped_at)
    assert_no_request_hung(load)
    assert_each_user_once_in_audit_with_role(db, prefix, load)


def test_a_rolling_restart_of_all_three_nodes_loses_and_duplicates_nothing(
        platform, cluster, db):
    prefix = "rolling"
    load = start(sign_ups(prefix), platform)
    try:
        for index in range(3):
            cluster.stop_node(index)
            time.sleep(3)
            cluster.start_node(index)  # and waits until it is back in the cluster
        restarted_at = time.monotonic()
        until(lambda: load.recovered_at(restarted_at, ["sign-up"]), timeout=30,
              what="sign-ups to succeed after the restart")
    finally:
        load.stop()
    assert_no_request_hung(load)
    assert_each_user_once_in_audit_with_role(db, prefix, load)
