"""The HTTP layer without a broker: each route entry's steps, errors as problem+json, request
ids, headers, CORS, rate limits and docs. The services are stood in for by ``Services``
(their answers are set per test); everything in front of the RPC is the real gateway."""

import json
import logging
import time
import uuid
from dataclasses import dataclass

import jwt
import pytest

from gateway.rpc import RpcTimeout, ServiceNotRunning
from shared.errors import (
    Conflict,
    InternalError,
    Invalid,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from tests.support.gateway_helpers import API, TestKeys, bearer, close_app, make_app

ORIGIN = "https://app.example.test"


@dataclass
class Call:
    service: str
    method: str
    kwargs: dict
    timeout: float
    context: dict


class Services:
    """Answers RPC calls as the services would; records each call."""

    def __init__(self, keys):
        self.keys = keys
        self.calls = []
        self.grants = {}
        self.answers = {("auth", "jwks"): lambda: keys.jwks(),
                        ("auth", "revoked_sessions"): lambda: {"session_ids": [],
                                                               "window": 930},
                        ("authz", "effective_permissions"): self._effective}

    def _effective(self, user_id):
        return {"user_id": user_id, "global": sorted(self.grants.get(user_id, ())),
                "scopes": {}}

    def answer(self, target, value):
        service, method = target.split(".")
        self.answers[(service, method)] = value if callable(value) else (lambda **kw: value)

    def call(self, service, method, kwargs, timeout, context):
        self.calls.append(Call(service, method, kwargs, timeout, context))
        handler = self.answers.get((service, method))
        if handler is None:
            raise ServiceNotRunning(f"no instance of {service} is running",
                                    {"service": service})
        return handler(**kwargs)

    def last(self, target):
        service, method = target.split(".")
        return [c for c in self.calls if (c.service, c.method) == (service, method)][-1]

    def connected(self, wait=0.0):
        return True

    last_error = None

    def close(self):
        pass


@pytest.fixture(scope="module")
def keys():
    return TestKeys()


def build(keys, **config):
    app = make_app(**{"AUTHZ_EVENTS": False, "SESSION_EVENTS": False, "CORS_ORIGINS": ORIGIN,
                      **config})
    services = Services(keys)
    app.extensions["plinth"].rpc.backend = services
    return app, services


@pytest.fixture
def gateway(keys):
    app, services = build(keys)
    yield app.test_client(), services
    close_app(app)


def token_for(keys, services, *permissions, user_id=None):
    user_id = user_id or str(uuid.uuid4())
    services.grants[user_id] = set(permissions)
    return user_id, keys.token(sub=user_id, sid=str(uuid.uuid4()))


def assert_problem(response, status, kind=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    if kind:
        assert body["type"] == f"urn:plinth:problem:{kind}"
    return body


USER = {"id": "0190c0de-0000-7000-8000-000000000001", "email": "ann@example.test",
        "display_name": "Ann", "status": "active", "type": "user",
        "created_at": "2026-11-22T09:00:00+00:00", "updated_at": "2026-11-22T09:00:00+00:00",
        "password_changed_at": None, "deleted_at": None}


# -- the steps of a route ---------------------------------------------------------------------
def test_sign_up_validates_calls_identity_and_answers_201_with_location(gateway):
    client, services = gateway
    services.answer("identity.create_user", lambda data: {**USER, "email": data["email"],
                                                          "password_hash": "$argon2id$..."})
    response = client.post(f"{API}/users", json={"email": "ann@example.test",
                                                 "password": "long-enough-pass"})
    assert response.status_code == 201
    assert response.headers["Location"] == f"{API}/users/{USER['id']}"
    assert "password_hash" not in response.get_json()  # only the response schema's fields
    call = services.last("identity.create_user")
    assert call.kwargs == {"data": {"email": "ann@example.test",
                                    "password": "long-enough-pass"}}
    assert call.context == {"request_id": response.headers["X-Request-ID"]}


def test_bad_bodies_name_their_fields_and_call_nothing(gateway):
    client, services = gateway
    body = assert_problem(client.post(f"{API}/users", json={"email": "nope", "extra": 1}),
                          400, "invalid")
    assert set(body["errors"]) == {"email", "password", "extra"}
    assert_problem(client.post(f"{API}/users", data="{not json",
                               content_type="application/json"), 400)
    body = assert_problem(client.post(f"{API}/users", json=[1, 2]), 400)
    assert body["errors"] == {"_body": ["must be a JSON object"]}
    assert_problem(client.post(f"{API}/users", data="email=a",
                               content_type="application/x-www-form-urlencoded"), 415,
                   "unsupported_media_type")
    assert_problem(client.post(f"{API}/users", json={"email": "a@b.test",
                                                     "password": "x" * 70000}), 413)
    assert [c for c in services.calls if c.service == "identity"] == []


@pytest.mark.parametrize("depth", [33, 1000, 20000])
def test_a_body_nested_too_deep_is_400_not_a_500(gateway, caplog, depth):
    client, services = gateway
    nested = '{"email": "a@b.test", "password": "long-enough-pass", "display_name": ' + \
        "[" * depth + "]" * depth + "}"
    body = assert_problem(client.post(f"{API}/users", data=nested,
                                      content_type="application/json"), 400, "invalid")
    assert body["errors"] == {"_body": ["nested more than 32 levels deep"]}
    assert services.calls == [] and "Traceback" not in caplog.text


def test_a_body_nested_32_deep_is_parsed_and_validated_as_usual(gateway):
    client, _ = gateway
    nested = '{"email": "a@b.test", "password": "long-enough-pass", "display_name": ' + \
        "[" * 31 + "]" * 31 + "}"
    body = assert_problem(client.post(f"{API}/users", data=nested,
                                      content_type="application/json"), 400, "invalid")
    assert set(body["errors"]) == {"display_name"}  # the schema's verdict: not a string


def test_a_nul_character_in_any_input_is_400_naming_the_field_and_calls_nothing(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "roles:write", "users:read")
    body = assert_problem(client.post(f"{API}/users", json={
        "email": "ann@example.test", "password": "long-enough-pass",
        "display_name": "Ann\u0000"}), 400, "invalid")
    assert body["errors"] == {"display_name": ["must not contain the NUL character (\\u0000)"]}
    body = assert_problem(client.post(f"{API}/roles", headers=bearer(token), json={
        "name": "auditors", "description": "\x00"}), 400)
    assert list(body["errors"]) == ["description"]
    body = assert_problem(client.get(f"{API}/users?q=ann%00", headers=bearer(token)), 400)
    assert list(body["errors"]) == ["q"]
    assert [c for c in services.calls if c.service in ("identity", "authz")
            and c.method != "effective_permissions"] == []


def test_login_passes_the_client_address_and_agent(gateway):
    client, services = gateway
    pair = {"access_token": "a", "refresh_token": "r", "token_type": "Bearer",
            "expires_in": 900}
    services.answer("auth.login", pair)
    response = client.post(f"{API}/auth/login", json={"email": "a@b.test", "password": "pw"},
                           headers={"User-Agent": "probe/1.0"})
    assert response.status_code == 200 and response.get_json() == pair
    assert services.last("auth.login").kwargs == {
        "email": "a@b.test", "password": "pw",
        "client": {"ip": "127.0.0.1", "user_agent": "probe/1.0"}}
    services.answer("auth.login", lambda **kw: (_ for _ in ()).throw(
        Unauthorized("invalid email or password")))
    body = assert_problem(client.post(f"{API}/auth/login",
                                      json={"email": "a@b.test", "password": "bad"}), 401)
    assert body["detail"] == "invalid email or password"


def test_caller_path_and_query_become_the_call_arguments(gateway, keys):
    client, services = gateway
    caller, token = token_for(keys, services, "roles:write", "users:read")
    target = str(uuid.uuid4())
    services.answer("authz.assign_role", lambda **kw: {**kw, "assigned_at": None,
                                                       "assigned_by": caller, "created": True})
    response = client.put(f"{API}/users/{target.upper()}/roles/support",
                          query_string={"scope": "billing"}, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    assert services.last("authz.assign_role").kwargs == {
        "user_id": target, "role": "support", "scope": "billing"}
    # the caller's token travels as the proof of the actor (each service checks it again)
    assert services.last("authz.assign_role").context == {
        "request_id": response.headers["X-Request-ID"], "actor_id": caller,
        "actor_type": "user", "access_token": token}
    services.answer("identity.list_users", {"items": [USER], "next_cursor": None})
    response = client.get(f"{API}/users", query_string={"limit": "5", "status": "active"},
                          headers=bearer(token))
    assert response.get_json()["items"][0]["id"] == USER["id"]
    assert services.last("identity.list_users").kwargs == {
        "filters": {"limit": 5, "status": "active"}}
    body = assert_problem(client.get(f"{API}/users", query_string={"limit": "0", "x": "1"},
                                     headers=bearer(token)), 400)
    assert set(body["errors"]) == {"limit", "x"}
    assert_problem(client.get(f"{API}/users?limit=1&limit=2", headers=bearer(token)), 400)
    body = assert_problem(client.get(f"{API}/users/not-a-uuid", headers=bearer(token)), 400)
    assert body["errors"] == {"user_id": ["not a valid UUID"]}


def test_logout_revokes_the_tokens_own_session_and_answers_204(gateway, keys):
    client, services = gateway
    user_id = str(uuid.uuid4())
    session = str(uuid.uuid4())
    token = keys.token(sub=user_id, sid=session)
    services.answer("auth.end_session", {"revoked": True})
    response = client.post(f"{API}/auth/logout", headers=bearer(token))
    assert response.status_code == 204 and response.data == b""
    assert services.last("auth.end_session").kwargs == {"session_id": session,
                                                        "user_id": user_id}


def test_wrapped_results(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "authz:check", "roles:read")
    services.answer("authz.check", True)
    response = client.get(f"{API}/authz/check", query_string={"permission": "users:read"},
                          headers=bearer(token))
    assert response.get_json() == {"allowed": True}
    services.answer("authz.list_roles", [{"name": "user", "builtin": True, "permissions": []}])
    assert client.get(f"{API}/roles", headers=bearer(token)).get_json() == {
        "items": [{"name": "user", "builtin": True, "permissions": []}]}


# -- authentication and authorisation ---------------------------------------------------------
def test_tokens_are_required_and_checked(gateway, keys):
    client, services = gateway
    response = client.get(f"{API}/users/me")
    assert assert_problem(response, 401, "unauthorized")["reason"] == "missing"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    response = client.get(f"{API}/users/me", headers=bearer(keys.token(exp=1)))
    assert assert_problem(response, 401)["reason"] == "expired"
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    response = client.get(f"{API}/users/me", headers={"Authorization": "Basic YTpi"})
    assert assert_problem(response, 401)["reason"] == "malformed"
    assert [c for c in services.calls if c.service == "identity"] == []


def test_a_missing_permission_is_403_before_any_input_is_looked_at(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "profile:read")
    body = assert_problem(client.get(f"{API}/users/not-a-uuid", headers=bearer(token)), 403,
                          "forbidden")
    assert body["detail"] == "this needs the permission users:read"
    assert body["permission"] == "users:read"
    assert [c for c in services.calls if c.service == "identity"] == []


def test_an_invalid_token_on_a_public_route_is_ignored(gateway, keys):
    client, services = gateway
    services.answer("auth.refresh", {"access_token": "a", "refresh_token": "r",
                                     "token_type": "Bearer", "expires_in": 900})
    response = client.post(f"{API}/auth/refresh", json={"refresh_token": "r" * 43},
                           headers=bearer("garbage"))
    assert response.status_code == 200


# -- service errors ---------------------------------------------------------------------------
def fails_with(error):
    def handler(**kwargs):
        raise error
    return handler


@pytest.mark.parametrize("error, status, extra", [
    (NotFound("user x not found", {"user_id": "x"}), 404, {}),
    (Conflict("email taken", {"email": ["already registered"]}), 409,
     {"errors": {"email": ["already registered"]}}),
    (Invalid("bad", {"display_name": ["too long"]}), 400,
     {"errors": {"display_name": ["too long"]}}),
    (TooManyRequests("slow down", {"retry_after": 7.5}), 429, {"retry_after": 7.5}),
    (Unavailable("identity is busy", {"service": "identity"}), 503, {"service": "identity"}),
    (ServiceNotRunning("no instance", {"service": "identity"}), 503, {}),
    (RpcTimeout("identity.get_user did not answer within 5s",
                {"service": "identity", "timeout": 5}), 504, {"timeout": 5}),
    (InternalError("internal error (reference abc123)", {"reference": "abc123"}), 500,
     {"reference": "abc123"}),
])
def test_typed_errors_become_their_status(gateway, keys, error, status, extra):
    client, services = gateway
    _, token = token_for(keys, services, "profile:read")
    services.answer("identity.get_user", fails_with(error))
    response = client.get(f"{API}/users/me", headers=bearer(token))
    body = assert_problem(response, status, error.kind)
    assert body["detail"] == error.message
    for key, value in extra.items():
        assert body[key] == value
    if status == 429:
        assert response.headers["Retry-After"] == "7"
    if status == 503:
        assert response.headers["Retry-After"] == "2"


def test_a_route_may_map_an_error_kind_to_another_status(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "password:write")
    services.answer("identity.change_password",
                    fails_with(Unauthorized("the current password is not correct")))
    response = client.post(f"{API}/users/me/password", headers=bearer(token),
                           json={"old_password": "wrong", "new_password": "whatever-new-1"})
    assert assert_problem(response, 403)["detail"] == "the current password is not correct"


def test_a_gateway_bug_is_a_500_without_internals(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "profile:read")
    services.answer("identity.get_user",
                    fails_with(KeyError("SELECT password_hash FROM identity.users")))
    response = client.get(f"{API}/users/me", headers=bearer(token))
    body = assert_problem(response, 500, "internal")
    assert "SELECT" not in response.get_data(as_text=True) and len(body["reference"]) == 12


def test_a_before_rpc_hook_can_refuse_a_service(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "profile:read")
    services.answer("identity.get_user", USER)
    state = client.application.extensions["plinth"]

    def no_identity(service):
        if service == "identity":
            raise Unavailable("no healthy instance of identity", {"service": "identity"})

    state.rpc.add_before_rpc("no_identity", no_identity)
    response = client.get(f"{API}/users/me", headers=bearer(token))
    assert assert_problem(response, 503)["service"] == "identity"
    assert [c for c in services.calls if c.service == "identity"] == []


def test_flask_errors_are_problems_too(gateway):
    client, _ = gateway
    assert_problem(client.get(f"{API}/nothing-here"), 404, "not_found")
    response = client.delete(f"{API}/auth/login")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "OPTIONS, POST"


# -- request ids and headers ------------------------------------------------------------------
def test_request_ids_are_accepted_when_well_formed_else_replaced(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "profile:read")
    services.answer("identity.get_user", USER)
    response = client.get(f"{API}/users/me", headers={**bearer(token),
                                                      "X-Request-ID": "client-req:42"})
    assert response.headers["X-Request-ID"] == "client-req:42"
    assert services.last("identity.get_user").context["request_id"] == "client-req:42"
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        response = client.get("/health/live", headers={"X-Request-ID": bad})
        assert response.headers["X-Request-ID"] != bad
        uuid.UUID(response.headers["X-Request-ID"])


def test_security_headers_on_every_response(gateway):
    client, _ = gateway
    for response in (client.get("/health/live"), client.get(f"{API}/nope"),
                     client.get("/openapi.json")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert client.get("/health/live").headers["Cache-Control"] == "no-store"


def test_cors_answers_configured_origins_only(gateway):
    client, _ = gateway
    preflight = client.options(f"{API}/users/me", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    simple = client.get("/.well-known/jwks.json", headers={"Origin": ORIGIN})
    assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]
    for origin in ("https://evil.example.test", "null"):
        other = client.options(f"{API}/users/me", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "Access-Control-Allow-Origin" not in client.get(
            "/.well-known/jwks.json", headers={"Origin": origin}).headers


def test_responses_that_cors_may_change_say_they_vary_by_origin(gateway):
    client, _ = gateway  # one configured origin: flask-cors alone sends no Vary then
    for headers in ({}, {"Origin": ORIGIN}, {"Origin": "https://evil.example.test"}):
        response = client.get("/.well-known/jwks.json", headers=headers)
        assert "Origin" in response.vary, (headers, response.headers)
    assert "Origin" in client.get(f"{API}/users/me").vary


def test_no_cors_at_all_without_configured_origins(keys):
    app, _ = build(keys, CORS_ORIGINS="")
    response = app.test_client().options(f"{API}/users/me", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in response.headers
    close_app(app)


# -- rate limits ------------------------------------------------------------------------------
def test_the_auth_class_is_limited_per_ip_with_ratelimit_headers(keys):
    app, services = build(keys, RATE_LIMIT_AUTH_IP="3/minute")
    services.answer("auth.refresh", fails_with(Unauthorized("invalid refresh token")))
    client = app.test_client()
    statuses, remaining = [], []
    for _ in range(4):
        response = client.post(f"{API}/auth/refresh", json={"refresh_token": "r"})
        statuses.append(response.status_code)
        remaining.append(response.headers["RateLimit-Remaining"])
    assert statuses == [401, 401, 401, 429]
    assert remaining == ["2", "1", "0", "0"]
    assert response.headers["RateLimit-Limit"] == "3"
    assert response.headers["RateLimit-Policy"] == "3;w=60"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert 0 <= int(response.headers["RateLimit-Reset"]) <= 60
    assert_problem(response, 429, "too_many_requests")
    other_ip = client.post(f"{API}/auth/refresh", json={"refresh_token": "r"},
                           environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other_ip.status_code == 401
    assert client.get("/health/live").status_code == 200  # not a limited route
    close_app(app)


def test_bearer_routes_are_limited_per_user(keys):
    app, services = build(keys, RATE_LIMIT_READ_USER="2/minute")
    services.answer("identity.get_user", USER)
    client = app.test_client()
    _, ann = token_for(keys, services, "profile:read")
    _, bob = token_for(keys, services, "profile:read")
    assert [client.get(f"{API}/users/me", headers=bearer(ann)).status_code
            for _ in range(3)] == [200, 200, 429]
    assert client.get(f"{API}/users/me", headers=bearer(bob)).status_code == 200
    close_app(app)


# -- docs and keys ----------------------------------------------------------------------------
def test_openapi_documents_every_route_from_its_schemas(gateway):
    client, _ = gateway
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0"
    state = client.application.extensions["plinth"]
    for route in state.routes:
        operation = spec["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.endpoint
        assert str(route.status) in operation["responses"]
        assert operation["responses"]["400"]["content"]["application/problem+json"]
        if route.public:
            assert operation["security"] == []
    sign_up = spec["paths"][f"{API}/users"]["post"]
    body = sign_up["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SignUp"}
    schema = spec["components"]["schemas"]["SignUp"]
    assert schema["required"] == ["email", "password"]
    assert schema["properties"]["email"]["format"] == "email"
    assert spec["components"]["schemas"]["User"]["properties"]["deleted_at"]["type"] == \
        ["string", "null"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    path_param = spec["paths"][f"{API}/users/{{user_id}}"]["get"]["parameters"][0]
    assert path_param["in"] == "path" and path_param["schema"]["format"] == "uuid"


def test_docs_render_from_local_files_only(gateway):
    client, _ = gateway
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "https://" not in html and "http://" not in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "plinth-docs.js"):
        response = client.get(f"/docs/static/{asset}")
        assert response.status_code == 200 and len(response.data) > 100
    assert client.get("/docs/static/../app.py").status_code == 404


def test_jwks_are_served_as_auth_publishes_them(gateway, keys):
    client, _ = gateway
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.get_json() == keys.jwks()
    assert "max-age" in response.headers["Cache-Control"]


def test_health_reports_broker_and_keys(gateway):
    client, _ = gateway
    assert client.get("/health/live").get_json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.get_json()["checks"]["jwks"]["status"] == "up"
    detail = client.get("/health").get_json()
    assert detail["status"] == "healthy" and detail["routes"] > 20


def test_health_is_not_ready_without_keys(keys):
    app, services = build(keys)
    del services.answers[("auth", "jwks")]
    ready = app.test_client().get("/health/ready")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["jwks"]["status"] == "down"
    close_app(app)


# -- ended sessions while the gateway cannot hear of them ------------------------------------
NOWHERE = "amqp://guest:guest@127.0.0.1:1/"  # the listener never connects: never in sync


def test_ended_sessions_unknown_make_the_gateway_not_ready_and_its_tokens_503(keys):
    app, services = build(keys, SESSION_EVENTS=True, AMQP_URI=NOWHERE)
    client = app.test_client()
    del services.answers[("auth", "revoked_sessions")]  # auth cannot say
    user_id, token = token_for(keys, services, "profile:read")
    services.answer("identity.get_user", {**USER, "id": user_id})
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["jwks"]["status"] == "up"
    assert ready.get_json()["checks"]["revocations"]["status"] == "down"
    assert_problem(client.get(f"{API}/users/me", headers=bearer(token)), 503, "unavailable")
    assert client.get("/health").status_code == 503
    # public routes do not need the check
    assert client.get("/.well-known/jwks.json").status_code == 200
    services.answer("auth.revoked_sessions", {"session_ids": [], "window": 930})
    time.sleep(1.05)  # a failed read is retried after SESSION_CHECK_INTERVAL
    assert client.get("/health/ready").status_code == 200
    assert client.get(f"{API}/users/me", headers=bearer(token)).status_code == 200
    close_app(app)


def test_tokens_are_checked_with_auth_at_most_once_per_interval_while_not_listening(keys):
    app, services = build(keys, SESSION_EVENTS=True, AMQP_URI=NOWHERE,
                          SESSION_CHECK_INTERVAL=0.3)
    client = app.test_client()
    ended = str(uuid.uuid4())
    services.answer("auth.revoked_sessions", {"session_ids": [ended], "window": 930})
    user_id, _ = token_for(keys, services, "profile:read")
    services.answer("identity.get_user", {**USER, "id": user_id})
    live = keys.token(sub=user_id, sid=str(uuid.uuid4()))
    body = assert_problem(client.get(f"{API}/users/me",
                                     headers=bearer(keys.token(sub=user_id, sid=ended))), 401)
    assert body["reason"] == "revoked"
    for _ in range(10):
        assert client.get(f"{API}/users/me", headers=bearer(live)).status_code == 200
    reads = [c for c in services.calls if (c.service, c.method) == ("auth", "revoked_sessions")]
    assert len(reads) == 1
    # a session that ends now is refused once the list is read again
    services.answer("auth.revoked_sessions", {"session_ids": [ended, live_sid(live)],
                                              "window": 930})
    time.sleep(0.35)
    assert_problem(client.get(f"{API}/users/me", headers=bearer(live)), 401)
    close_app(app)


def live_sid(token):
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def test_x_forwarded_for_while_no_proxy_is_trusted_is_warned_about_once(keys, caplog):
    app, _ = build(keys)
    client = app.test_client()
    with caplog.at_level("WARNING", logger="gateway"):
        client.get("/health/live")
        for _ in range(3):
            client.get("/health/live", headers={"X-Forwarded-For": "203.0.113.9"})
    warnings = [r for r in caplog.records if "GATEWAY_TRUSTED_PROXIES" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "203.0.113.9" not in warnings[0].getMessage()  # the proxy's peer, not the client
    close_app(app)


def test_x_forwarded_for_from_a_trusted_proxy_is_not_warned_about(keys, caplog):
    app, _ = build(keys, TRUSTED_PROXIES=1)
    with caplog.at_level("WARNING", logger="gateway"):
        app.test_client().get("/health/live", headers={"X-Forwarded-For": "203.0.113.9"})
    assert not [r for r in caplog.records if "GATEWAY_TRUSTED_PROXIES" in r.getMessage()]
    close_app(app)


def test_metrics_count_requests_per_route(gateway):
    client, _ = gateway
    client.get(f"{API}/users/me")
    text = client.get("/metrics").get_data(as_text=True)
    assert ('gateway_http_requests_total{method="GET",route="/api/v1/users/me",status="401"}'
            in text)
    assert "gateway_http_request_duration_seconds_bucket" in text
    assert json.loads(client.get("/openapi.json").data)["info"]["title"] == "Plinth API"


def test_limits_count_in_memory_while_redis_is_unreachable(keys, caplog):
    app, services = build(keys, RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0",
                          RATE_LIMIT_AUTH_IP="2/minute")
    services.answer("auth.refresh", fails_with(Unauthorized("invalid refresh token")))
    client = app.test_client()
    statuses = [client.post(f"{API}/auth/refresh", json={"refresh_token": "r"}).status_code
                for _ in range(3)]
    assert statuses == [401, 401, 429]  # requests are served, and still limited
    assert "counting in memory" in caplog.text
    close_app(app)


def test_memory_windows_reset_when_they_expire():
    from gateway.limits import Windows

    windows = Windows()
    assert [windows.incr("k", 0.05) for _ in range(3)] == [1, 2, 3]
    assert windows.get_expiry("k") > time.time()
    time.sleep(0.06)
    assert windows.incr("k", 0.05) == 1
    windows.SWEEP_EVERY = 1
    windows.incr("other", 0.01)
    time.sleep(0.02)
    windows.incr("k", 10)
    assert "other" not in windows._counts


def test_a_raw_problem_page_is_a_whole_problem_json_response_with_the_headers():
    from gateway.headers import raw_problem

    raw = raw_problem(431, "Request Header Fields Too Large\r\nSet-Cookie: x=1",
                      "Error parsing headers: 'X-Big'", hsts_seconds=600)
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 431 Request Header Fields Too LargeSet-Cookie: x=1"
    assert "Set-Cookie" not in headers
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains"
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    problem = json.loads(body)
    assert problem["type"] == "urn:plinth:problem:headers_too_large"
    assert problem["request_id"] == headers["X-Request-ID"]
    assert problem["detail"] == "Error parsing headers: 'X-Big'"


# -- audit exports: a task, then a streamed download -------------------------------------------
EXPORT_ID = "0190c0de-0000-7000-8000-0000000000e1"


def _pages(text, size):
    """read_export's answers over ``text``, ``size`` characters a page."""

    def read_export(export_id, offset=0):
        end = min(offset + size, len(text))
        return {"id": export_id, "offset": offset, "data": text[offset:end],
                "next_offset": end if end < len(text) else None, "bytes": len(text),
                "count": text.count("\n"), "sha256": "ab" * 32}

    return read_export


def test_an_export_is_asked_for_with_the_query_filters_and_answers_202_with_location(gateway,
                                                                                    keys):
    client, services = gateway
    _, token = token_for(keys, services, "audit:read")
    services.answer("audit.start_export", lambda filters: {
        "id": EXPORT_ID, "status": "pending", "filters": filters, "upto_seq": 9})
    response = client.post(f"{API}/audit/exports", headers=bearer(token),
                           json={"action": "user.*", "since": "2026-01-01T00:00:00Z"})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["Location"] == f"{API}/audit/exports/{EXPORT_ID}"
    assert response.get_json()["status"] == "pending"
    assert services.last("audit.start_export").kwargs == {
        "filters": {"action": "user.*", "since": "2026-01-01T00:00:00Z"}}
    body = assert_problem(client.post(f"{API}/audit/exports", headers=bearer(token),
                                      json={"limit": 5, "outcome": "maybe"}), 400)
    assert set(body["errors"]) == {"limit", "outcome"}
    _, reader = token_for(keys, services)
    assert_problem(client.post(f"{API}/audit/exports", headers=bearer(reader), json={}), 403)


@pytest.fixture
def logged_gateway(keys, caplog):
    """A gateway whose access log is on: it sees every response on its way out."""
    caplog.set_level(logging.INFO, "gateway.access")
    app, services = build(keys, ACCESS_LOG=True)
    yield app.test_client(), services
    close_app(app)


def test_a_download_streams_every_page_with_its_length_declared(logged_gateway, keys, caplog):
    client, services = logged_gateway
    _, token = token_for(keys, services, "audit:read")
    text = "".join(json.dumps({"seq": n}) + "\n" for n in range(50))
    services.answer("audit.read_export", _pages(text, 97))
    response = client.get(f"{API}/audit/exports/{EXPORT_ID}/download", headers=bearer(token),
                          buffered=False)
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    # nothing on the way out (access log, headers) read ahead: one page fetched so far
    assert len([c for c in services.calls if c.method == "read_export"]) == 1
    assert response.headers["Content-Length"] == str(len(text))
    assert response.headers["X-Item-Count"] == "50"
    assert response.get_data(as_text=True) == text
    offsets = [c.kwargs.get("offset", 0) for c in services.calls
               if c.method == "read_export"]
    assert offsets == list(range(0, len(text), 97))
    logged = [r for r in caplog.records if r.name == "gateway.access"]
    assert logged[-1].bytes == len(text)


def test_a_download_before_the_export_is_done_is_a_problem_not_a_stream(gateway, keys):
    client, services = gateway
    _, token = token_for(keys, services, "audit:read")

    def not_done(export_id, offset=0):
        raise Conflict(f"export {export_id} is running, not done", {"status": "running"})

    services.answer("audit.read_export", not_done)
    assert_problem(client.get(f"{API}/audit/exports/{EXPORT_ID}/download",
                              headers=bearer(token)), 409, "conflict")
    assert_problem(client.get(f"{API}/audit/exports/not-an-id/download",
                              headers=bearer(token)), 400)


def test_the_export_routes_are_in_the_openapi_document(gateway):
    client, _ = gateway
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "202" in paths[f"{API}/audit/exports"]["post"]["responses"]
    assert "get" in paths[f"{API}/audit/exports/{{export_id}}"]
    download = paths[f"{API}/audit/exports/{{export_id}}/download"]["get"]["responses"]
    assert "application/x-ndjson" in download["200"]["content"]
    assert "409" in download
