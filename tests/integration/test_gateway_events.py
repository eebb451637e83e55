"""The gateway's event listeners (permissions, ended sessions) on a connection that dies
without a word, against the real services on RabbitMQ and PostgreSQL."""

import time
import uuid

from authz.service import AuthzService
from identity.service import IdentityService
from tests.support.auth_helpers import start_auth
from tests.support.gateway_helpers import (
    API,
    admin_with_token,
    bearer,
    close_app,
    make_app,
    user_with_token,
    wait_until,
)

CONTEXT = {"request_id": "gw-events", "actor_type": "system"}
DETECTED_WITHIN = 7.0  # seconds: a heartbeat (3 s) and 1.5 s of silence, checked every second


def test_a_half_open_listener_connection_is_found_within_seconds_and_nothing_is_trusted_meanwhile(
        start_service, fault_proxy, amqp_uri, rpc):
    start_service(IdentityService)
    start_auth(start_service)
    start_service(AuthzService)
    app = make_app(amqp_uri)
    try:
        client, state = app.test_client(), app.extensions["plinth"]
        # only the listeners go through the proxy: requests still reach the services
        proxy = fault_proxy(5672)
        events_uri = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{amqp_uri.rsplit('/', 1)[1]}"
        state.listener.amqp_uri = state.sessions.amqp_uri = events_uri
        reads, fetch = [], state.sessions.fetch
        state.sessions.fetch = lambda: reads.append(time.monotonic()) or fetch()
        state.ensure_started()
        wait_until(lambda: state.listener.connected and state.sessions.in_sync, timeout=5,
                   what="both listeners")

        _, admin = admin_with_token(client, rpc)
        alice, alice_pair = user_with_token(client)
        _, bob_pair = user_with_token(client)
        alice_auth, bob_auth = bearer(alice_pair["access_token"]), bearer(bob_pair["access_token"])
        role = f"reader-{uuid.uuid4().hex[:8]}"
        admin_auth = bearer(admin["access_token"])
        assert client.post(f"{API}/roles", headers=admin_auth, json={
            "name": role, "permissions": ["users:read"]}).status_code == 201
        assert client.put(f"{API}/users/{alice['id']}/roles/{role}",
                          headers=admin_auth).status_code == 200
        wait_until(lambda: client.get(f"{API}/users", headers=alice_auth).status_code == 200,
                   timeout=2, what="alice's role")  # and now cached

        proxy.blackhole()
        silenced = time.monotonic()
        # both changes are announced into the void
        rpc.call("authz", "unassign_role", kwargs={"user_id": alice["id"], "role": role},
                 context=CONTEXT)
        rpc.call("auth", "logout", kwargs={"refresh_token": bob_pair["refresh_token"]},
                 context=CONTEXT)
        wait_until(lambda: not state.listener.connected and not state.sessions.connected,
                   timeout=DETECTED_WITHIN + 4, interval=0.05, what="the dead connection")
        detected = time.monotonic() - silenced
        assert detected < DETECTED_WITHIN, detected

        # meanwhile permissions are asked of authz, and tokens checked with auth
        before = len(reads)
        assert client.get(f"{API}/users", headers=alice_auth).status_code == 403
        refused = client.get(f"{API}/users/me", headers=bob_auth)
        assert refused.status_code == 401 and refused.get_json()["reason"] == "revoked"
        assert client.get(f"{API}/users/me", headers=alice_auth).status_code == 200
        assert len(reads) > before  # auth's list was read again for these tokens
        # at most once per SESSION_CHECK_INTERVAL, whatever the traffic
        for _ in range(20):
            client.get(f"{API}/users/me", headers=alice_auth)
        assert len(reads) <= before + 2
        health = client.get("/health").get_json()
        assert health["status"] == "degraded"
        assert health["checks"]["revocations"]["status"] == "down"
        assert client.get("/health/ready").status_code == 200  # it serves, checking

        proxy.restore()
        wait_until(lambda: state.listener.connected and state.sessions.in_sync, timeout=10,
                   what="both listeners again")
        quiet = len(reads)
        assert client.get(f"{API}/users/me", headers=alice_auth).status_code == 200
        assert len(reads) == quiet  # in sync again: tokens are checked locally
        assert client.get("/health").get_json()["status"] == "healthy"
    finally:
        close_app(app)
