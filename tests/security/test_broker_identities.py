"""Per-process broker identities: what RabbitMQ refuses to each process's own user.

The platform runs every process as its own RabbitMQ user (tests/support/platform.py), with
the permissions deploy/broker_users.py derives from the code. Here a process's credential is
used directly, as an attacker holding it would.
"""

import io
import json
import time
import uuid

import amqp
import pytest
from amqp.exceptions import AccessRefused

from deploy import broker_users
from tests.support.platform import RABBIT_API, SERVICES, platform_fixture

platform = platform_fixture(name="sec-broker")


def _connect(platform, name):
    from shared.rpc_client import amqp_connection_params

    conn = amqp.Connection(**amqp_connection_params(platform.amqp_uri_of(name), 5))
    conn.connect()
    return conn


def _attempt(platform, name, action):
    """Run ``action(channel)`` as ``name``'s broker user, then a synchronous call (a refused
    publish only shows on the channel's next round trip); None, or the refusal."""
    conn = _connect(platform, name)
    try:
        channel = conn.channel()
        action(channel)
        channel.basic_qos(0, 1, False)
        return None
    except (AccessRefused, amqp.exceptions.PreconditionFailed) as exc:
        return exc
    finally:
        try:
            conn.collect()
        except Exception:  # noqa: BLE001 - the connection is being discarded
            pass


def _publish(exchange, routing_key, body=None):
    message = amqp.Message(json.dumps(body or {"forged": True}), content_type="application/json")
    return lambda channel: channel.basic_publish(message, exchange=exchange,
                                                 routing_key=routing_key)


def test_the_gateways_user_cannot_consume_rpc_authz(platform):
    refused = _attempt(platform, "gateway", lambda ch: ch.basic_consume("rpc-authz"))
    assert refused is not None and "rpc-authz" in str(refused)


def test_the_gateways_user_cannot_publish_on_identity_events(platform):
    refused = _attempt(platform, "gateway", _publish("identity.events", "user.created"))
    assert refused is not None and "identity.events" in str(refused)


def test_the_gateways_user_cannot_bind_a_queue_of_its_own_to_authzs_requests(platform):
    queue = f"gateway-snoop-{uuid.uuid4().hex[:8]}"

    def snoop(channel):
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        channel.queue_bind(queue, "nameko-rpc", routing_key="authz.*")

    refused = _attempt(platform, "gateway", snoop)
    assert refused is not None and "authz.*" in str(refused)


def test_the_gateways_user_cannot_reach_a_queue_through_the_default_exchange(platform):
    refused = _attempt(platform, "gateway", _publish("", "rpc-authz"))
    assert refused is not None and "amq.default" in str(refused)


def test_the_gateways_user_may_publish_the_calls_its_route_table_makes(platform):
    # the control: the same kind of publish as above goes through for a declared call
    assert _attempt(platform, "gateway", _publish("nameko-rpc", "auth.jwks")) is None
    assert _attempt(platform, "gateway", _publish("nameko-rpc", "authz.assign_role")) is None
    # a malformed request without reply_to once killed the service that took it
    time.sleep(0.5)
    assert platform.rpc_client().call("authz", "roles_of",
                                      kwargs={"user_id": str(uuid.uuid4())}) == []


def test_a_services_user_cannot_publish_on_another_services_events(platform):
    refused = _attempt(platform, "auth", _publish("identity.events", "user.password_changed"))
    assert refused is not None and "identity.events" in str(refused)


def test_a_services_user_cannot_call_a_method_it_does_not_declare(platform):
    refused = _attempt(platform, "auth", _publish("nameko-rpc", "authz.assign_role"))
    assert refused is not None and "authz.assign_role" in str(refused)
    assert _attempt(platform, "auth", _publish("nameko-rpc", "identity.get_user")) is None


def test_a_services_user_cannot_consume_another_services_requests(platform):
    refused = _attempt(platform, "auth", lambda ch: ch.basic_consume("rpc-authz"))
    assert refused is not None


@pytest.fixture
def scratch_vhost():
    """A vhost and user prefix of its own: the drift test must not disturb the platform."""
    import requests

    vhost, prefix = f"plinth_drift_{uuid.uuid4().hex[:8]}", f"drift{uuid.uuid4().hex[:6]}-"
    requests.put(f"{RABBIT_API}/api/vhosts/{vhost}", timeout=10).raise_for_status()
    yield vhost, prefix
    requests.delete(f"{RABBIT_API}/api/vhosts/{vhost}", timeout=10)
    for name in (*SERVICES, "gateway"):
        requests.delete(f"{RABBIT_API}/api/users/{prefix}{name}", timeout=10)


def test_the_drift_check_finds_a_missing_permission_and_apply_restores_it(scratch_vhost,
                                                                          tmp_path):
    vhost, prefix = scratch_vhost
    identities = broker_users.derive(SERVICES, tmp_path, prefix)
    api = broker_users.ManagementApi(RABBIT_API)
    passwords = {i.name: uuid.uuid4().hex for i in identities}
    broker_users.apply(api, vhost, identities, SERVICES, passwords)
    assert broker_users.drift(api, vhost, identities, SERVICES) == []
    where = f"{broker_users._q(vhost)}/{broker_users._q(prefix + 'auth')}"
    api.request("DELETE", f"/topic-permissions/{where}")  # e.g. an operator's slip
    problems = broker_users.drift(api, vhost, identities, SERVICES)
    assert any("no topic permission on nameko-rpc" in p for p in problems), problems
    out = io.StringIO()
    code = broker_users.main(["--check", "--api", RABBIT_API, "--vhost", vhost,
                              "--prefix", prefix, "--routes-dir", str(tmp_path),
                              "--services", ",".join(SERVICES)], out=out)
    assert code == 1 and "drift: e" not in out.getvalue() and "drift:" in out.getvalue()
    broker_users.apply(api, vhost, identities, SERVICES)  # no passwords: users keep theirs
    assert broker_users.drift(api, vhost, identities, SERVICES) == []


@pytest.mark.parametrize("name", ["identity", "auth", "authz", "audit", "gateway"])
def test_every_process_runs_as_its_own_broker_user(platform, name):
    import requests

    from tests.support.platform import wait_for

    def users():  # the management API lists a connection's user once its stats come in
        connections = requests.get(f"{RABBIT_API}/api/connections", timeout=10).json()
        return {c.get("user") for c in connections if c.get("vhost") == platform.vhost}

    wait_for(lambda: platform.broker_user(name) in users(), timeout=15,
             what=f"a connection of {platform.broker_user(name)}")


# -- event authenticity (shared.senders) ------------------------------------------------------

def _envelope(event_type, subject, source):
    return {"event_id": str(uuid.uuid4()), "event_type": event_type, "source": source,
            "version": 1, "occurred_at": "2026-12-04T00:00:00+00:00",
            "actor": {"type": "system", "id": "forger"}, "request_id": None,
            "subject": subject, "data": {"user_id": subject}}


def _dropped(platform, name, metric):
    import requests

    text = requests.get(platform.service_url(name, "/metrics"), timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + "_total{"))


def test_an_event_with_another_identitys_user_id_is_refused_by_the_broker(platform):
    # auth's user may publish on its own exchange, but not in identity's name
    forged = amqp.Message(json.dumps(_envelope("session.revoked", "x", "auth")),
                          content_type="application/json",
                          user_id=platform.broker_user("identity"))
    refused = _attempt(platform, "auth", lambda ch: ch.basic_publish(
        forged, exchange="auth.events", routing_key="session.revoked"))
    assert refused is not None and "user_id" in str(refused)




def test_an_event_not_sent_by_its_sources_identity_is_dropped_and_counted(platform):
    """A publisher allowed on identity.events that is not identity (here the test's own
    administrative user): auth must not revoke sessions on its word, audit must not record
    it; both count it."""
    from tests.support.platform import wait_for

    user, pair = platform.new_user()
    before = _dropped(platform, "auth", "plinth_events_dropped_sender")
    from kombu import Connection, Producer

    with Connection(platform.amqp_uri) as conn:  # guest: user_id "guest"
        Producer(conn.channel()).publish(
            _envelope("user.password_changed", user["id"], "identity"),
            exchange="identity.events", routing_key="user.password_changed",
            serializer="json", user_id="guest", retry=False)
    wait_for(lambda: _dropped(platform, "auth", "plinth_events_dropped_sender") > before,
             timeout=15, what="auth to drop the forged event")
    refreshed = platform.http.post(platform.url("/api/v1/auth/refresh"), timeout=10,
                                   json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text  # the session was not revoked

    def audit_dropped():
        import requests

        health = requests.get(platform.service_url("audit", "/health"), timeout=10).json()
        return _find(health, "consumer").get("dropped_sender", 0) >= 1

    wait_for(audit_dropped, timeout=15, what="audit to drop the forged event")


def _find(tree, key):
    """The first value under ``key`` anywhere in a JSON document ({} when none)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    for item in tree if isinstance(tree, list) else ():
        found = _find(item, key)
        if found != {}:
            return found
    return {}


def test_the_gateways_event_listeners_run_under_its_own_identity(platform):
    """The gateway may not declare the exchanges it listens to: its listeners must bind
    without (else its permission cache is never trusted and every check asks authz)."""
    from tests.support.platform import wait_for

    def listening():
        text = platform.http.get(platform.url("/health"), timeout=10).text
        return "event(s) received" in text and "listening;" in text

    wait_for(listening, timeout=15, what="the gateway's listeners to bind")
