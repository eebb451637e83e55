"""The gateway in front of the real services (nameko containers on the test's vhost and the
session's PostgreSQL): errors from real services, live permission changes, feature-service
routes from a route file, both RPC backends, key rotation, and a broker outage."""

import time
import uuid

import pytest

from audit.service import AuditService
from authz.service import AuthzService
from identity.service import IdentityService
from tests.bench.nameko_backend import install as install_nameko_backend
from tests.helpers import STRONG_PASSWORD, new_email
from tests.support.auth_helpers import start_auth
from tests.support.gateway_helpers import (
    API,
    FeatureService,
    admin_with_token,
    bearer,
    close_app,
    log_in,
    make_app,
    sign_up,
    user_with_token,
    wait_until,
    write_feature_routes,
)

CONTEXT = {"request_id": "gw-int", "actor_type": "system"}


@pytest.fixture
def core(start_service):
    start_service(IdentityService)
    start_auth(start_service)
    start_service(AuthzService)


@pytest.fixture
def apps(amqp_uri):
    made = []

    def make(**config):
        app = make_app(amqp_uri, **config)
        made.append(app)
        return app.test_client()

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def client(core, apps):
    client = apps()
    state = client.application.extensions["plinth"]
    state.ensure_started()
    assert state.listener.wait_connected(5)
    return client


def test_real_service_errors_keep_their_meaning(client):
    user = sign_up(client)
    taken = client.post(f"{API}/users", json={"email": user["email"].upper(),
                                              "password": STRONG_PASSWORD})
    assert taken.status_code == 409 and "email" in taken.get_json()["errors"]
    weak = client.post(f"{API}/users", json={"email": new_email(), "password": "password"})
    assert weak.status_code == 400 and "password" in weak.get_json()["errors"]
    bad = client.post(f"{API}/auth/login", json={"email": user["email"], "password": "nope"})
    assert bad.status_code == 401
    assert bad.get_json()["detail"] == "invalid email or password"
    _, admin = admin_with_token(client, client.application.extensions["plinth"].rpc)
    missing = client.get(f"{API}/users/{uuid.uuid4()}", headers=bearer(admin["access_token"]))
    assert missing.status_code == 404
    role = client.put(f"{API}/users/{user['id']}/roles/no-such-role",
                      headers=bearer(admin["access_token"]))
    assert role.status_code == 404


def test_a_granted_role_bites_at_once_and_a_revoked_one_within_a_second(client, rpc):
    _, admin = admin_with_token(client, rpc)
    admin_auth = bearer(admin["access_token"])
    user, pair = user_with_token(client)
    auth = bearer(pair["access_token"])
    role = f"auditor-{uuid.uuid4().hex[:8]}"
    assert client.post(f"{API}/roles", headers=admin_auth, json={
        "name": role, "permissions": ["audit:read", "users:read"]}).status_code == 201
    assert client.get(f"{API}/users", headers=auth).status_code == 403  # now cached: denied
    assert client.put(f"{API}/users/{user['id']}/roles/{role}",
                      headers=admin_auth).status_code == 200
    granted = time.monotonic()
    wait_until(lambda: client.get(f"{API}/users", headers=auth).status_code == 200,
               timeout=1.0, what="the granted role")
    assert time.monotonic() - granted < 1.0
    assert client.delete(f"{API}/users/{user['id']}/roles/{role}",
                         headers=admin_auth).status_code == 204
    revoked = time.monotonic()
    wait_until(lambda: client.get(f"{API}/users", headers=auth).status_code == 403,
               timeout=1.0, what="the revoked role")
    assert time.monotonic() - revoked < 1.0
    # a change to the role itself reaches its holders too
    client.put(f"{API}/users/{user['id']}/roles/{role}", headers=admin_auth)
    wait_until(lambda: client.get(f"{API}/users", headers=auth).status_code == 200,
               timeout=1.0, what="the role again")
    assert client.patch(f"{API}/roles/{role}", headers=admin_auth,
                        json={"permissions": ["audit:read"]}).status_code == 200
    wait_until(lambda: client.get(f"{API}/users", headers=auth).status_code == 403,
               timeout=1.0, what="the narrowed role")
    state = client.application.extensions["plinth"]
    assert state.listener.received >= 4


def test_every_gateway_process_hears_every_event(core, apps, rpc):
    first, second = apps(), apps()
    for client in (first, second):
        state = client.application.extensions["plinth"]
        state.ensure_started()
        assert state.listener.wait_connected(5)
    _, admin = admin_with_token(first, rpc)
    user, pair = user_with_token(first)
    auth = bearer(pair["access_token"])
    for client in (first, second):
        assert client.get(f"{API}/roles", headers=auth).status_code == 403
    first.put(f"{API}/users/{user['id']}/roles/admin", headers=bearer(admin["access_token"]))
    for client in (first, second):
        wait_until(lambda c=client: c.get(f"{API}/roles", headers=auth).status_code == 200,
                   timeout=1.0, what="the grant on both gateways")


def test_feature_service_routes_from_a_route_file(start_service, core, apps, tmp_path, rpc):
    start_service(FeatureService)
    client = apps(ROUTES_DIR=str(write_feature_routes(tmp_path)))
    _, admin = admin_with_token(client, rpc)
    user, pair = user_with_token(client)
    auth = bearer(pair["access_token"])
    invoice = str(uuid.uuid4())
    url = f"{API}/feature/echo/{invoice}"
    assert client.post(url, headers=auth, json={"amount": 3}).status_code == 403
    role = f"billing-clerk-{uuid.uuid4().hex[:6]}"
    admin_auth = bearer(admin["access_token"])
    client.post(f"{API}/roles", headers=admin_auth,
                json={"name": role, "permissions": ["invoices:write"]})
    # scoped to the feature service: the permission holds there, not globally
    assert client.put(f"{API}/users/{user['id']}/roles/{role}?scope=gwfeature",
                      headers=admin_auth).status_code == 200
    response = wait_until(lambda: (r := client.post(
        url, query_string={"expand": "true"}, json={"amount": "9.5", "lines": [{"n": 1}]},
        headers={**auth, "X-Request-ID": "feature-req-1"})).status_code == 200 and r,
        timeout=1.0, what="the scoped grant")
    body = response.get_json()
    assert body["kwargs"] == {"invoice_id": invoice, "expand": True,
                              "data": {"amount": 9.5, "currency": "EUR",
                                       "lines": [{"n": 1}]},
                              "user_id": user["id"],
                              "client": {"ip": "127.0.0.1", "user_agent": body["kwargs"][
                                  "client"]["user_agent"]}}
    assert body["request_id"] == "feature-req-1"
    assert body["actor"] == {"id": user["id"], "type": "user"}
    bad = client.post(url, headers=auth, json={"amount": -1, "currency": "GBP"})
    assert bad.status_code == 400 and set(bad.get_json()["errors"]) == {"amount", "currency"}
    slow = client.get(f"{API}/feature/slow", query_string={"seconds": 2})
    assert slow.status_code == 504 and slow.get_json()["service"] == "gwfeature"
    assert client.get(f"{API}/feature/slow", query_string={"seconds": 0}).status_code == 200
    internal = client.get(f"{API}/feature/fail/internal", headers=auth)
    assert internal.status_code == 500
    assert "passwd" not in internal.get_data(as_text=True)
    assert internal.get_json()["reference"]
    assert client.get(f"{API}/feature/fail/conflict", headers=auth).status_code == 422
    assert client.get(f"{API}/feature/fail/not_found", headers=auth).status_code == 404
    assert client.get(f"{API}/feature/fail/other", headers=auth).status_code == 400
    spec = client.get("/openapi.json").get_json()
    assert "post" in spec["paths"][f"{API}/feature/echo/{{invoice_id}}"]


def test_a_service_that_is_not_running_is_a_503_at_once(core, apps):
    client = apps(ROUTES_DIR=str(write_feature_routes_dir()))
    started = time.monotonic()
    response = client.get(f"{API}/feature/slow", query_string={"seconds": 0})
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert time.monotonic() - started < 0.3  # not the route's timeout: nobody consumes


def write_feature_routes_dir():
    import tempfile
    from pathlib import Path

    return write_feature_routes(Path(tempfile.mkdtemp(prefix="gwroutes-")))


@pytest.mark.parametrize("backend", ["pooled", "nameko"])
def test_both_rpc_backends_answer_alike(start_service, core, apps, backend):
    start_service(FeatureService)
    client = apps(ROUTES_DIR=str(write_feature_routes_dir()))
    if backend == "nameko":
        install_nameko_backend(client.application)
    user, pair = user_with_token(client)
    me = client.get(f"{API}/users/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200 and me.get_json()["id"] == user["id"]
    assert client.get(f"{API}/feature/slow", query_string={"seconds": 1}).status_code == 504
    again = client.get(f"{API}/feature/slow", query_string={"seconds": 0})
    assert again.status_code == 200 and again.get_json() == {"slept": 0.0}
    failed = client.post(f"{API}/auth/login", json={"email": user["email"], "password": "x"})
    assert failed.status_code == 401


def test_a_rotated_signing_key_is_fetched_on_its_first_token(client, rpc):
    user, pair = user_with_token(client)
    state = client.application.extensions["plinth"]
    before = {k["kid"] for k in state.jwks.document()["keys"]}
    rotated = rpc.call("auth", "rotate_keys", context=CONTEXT)
    assert rotated["kid"] not in before
    fresh = wait_until(lambda: (p := log_in(client, user["email"])) and
                       jwt_kid(p["access_token"]) == rotated["kid"] and p,
                       timeout=10, what="tokens signed by the new key")
    time.sleep(0.25)  # past JWKS_REFETCH_INTERVAL of the test apps
    assert client.get(f"{API}/users/me",
                      headers=bearer(fresh["access_token"])).status_code == 200
    assert rotated["kid"] in {k["kid"] for k in state.jwks.document()["keys"]}
    # the old key stays published until its tokens expire
    assert client.get(f"{API}/users/me",
                      headers=bearer(pair["access_token"])).status_code == 200
    served = client.get("/.well-known/jwks.json").get_json()
    assert {rotated["kid"]} | before <= {k["kid"] for k in served["keys"]}


def jwt_kid(token):
    import jwt

    return jwt.get_unverified_header(token)["kid"]


def test_the_audit_trail_holds_the_http_request_id(start_service, client, rpc):
    start_service(AuditService, AUDIT_BATCH_WAIT_MS=20)
    _, admin = admin_with_token(client, rpc)
    request_id = f"gw-audit-{uuid.uuid4().hex[:8]}"
    response = client.post(f"{API}/users", headers={"X-Request-ID": request_id},
                           json={"email": new_email(), "password": STRONG_PASSWORD})
    assert response.status_code == 201
    user_id = response.get_json()["id"]

    def entries():
        found = client.get(f"{API}/audit/events", query_string={"request_id": request_id},
                           headers=bearer(admin["access_token"]))
        assert found.status_code == 200, found.get_json()
        return found.get_json()["items"]

    found = wait_until(entries, timeout=5, what="the audit entry")
    assert {(e["action"], e["subject"]) for e in found} >= {("user.created", user_id)}
    entry = client.get(f"{API}/audit/events/{found[0]['id']}",
                       headers=bearer(admin["access_token"]))
    assert entry.status_code == 200 and entry.get_json()["request_id"] == request_id
    report = client.get(f"{API}/audit/verify", headers=bearer(admin["access_token"]))
    assert report.status_code == 200 and report.get_json()["ok"] is True


def test_a_broker_outage_is_a_503_and_the_gateway_recovers(core, apps, fault_proxy,
                                                           amqp_uri, rpc):
    vhost = amqp_uri.rsplit("/", 1)[1]
    proxy = fault_proxy(5672)
    client = apps(AMQP_URI=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                  RPC_CONNECT_TIMEOUT=0.5)
    state = client.application.extensions["plinth"]
    state.ensure_started()
    assert state.listener.wait_connected(5)
    user, pair = user_with_token(client)
    auth = bearer(pair["access_token"])
    assert client.get(f"{API}/users/me", headers=auth).status_code == 200
    assert len(state.permissions) == 1
    cleared = state.permissions._cleared
    proxy.cut()
    wait_until(lambda: not state.listener.connected and not state.rpc.connected(),
               timeout=5, what="the gateway to notice")
    outage = client.get(f"{API}/users/me", headers=auth)
    assert outage.status_code == 503 and outage.headers["Retry-After"]
    assert client.get("/health/ready").status_code == 503
    proxy.restore()
    wait_until(lambda: client.get(f"{API}/users/me", headers=auth).status_code == 200,
               timeout=10, what="the gateway to reconnect")
    assert state.listener.wait_connected(5)
    # events may have been missed meanwhile: the reconnected listener dropped the cache
    assert state.permissions._cleared > cleared
    assert client.get("/health/ready").status_code == 200
