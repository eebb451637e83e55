"""Security: authorisation on every route, and the headers of every response (issue 9,
items 9 and 11).

The sweep is generated from the gateway's own route table (``gateway.routes.load_routes``, as
the test platform serves it: the core routes; feature services are swept by their own tests,
tests/e2e/test_make_service.py): a route added to the table is covered without touching this
file. Each route is called without a token, with the
token of an ordinary user ("mallory", role ``user`` only) and, where the route works on the
caller's own data, with another user's id smuggled into the query and the body. Whatever the
answer, it never carries the other user's data, and every response has the security headers.
"""

import json
import re
import socket
import uuid
from types import SimpleNamespace

import pytest
import requests
from marshmallow import fields

from gateway import routes as routes_module
from gateway import schemas as s
from shared.contracts import Grants
from tests.support.fault_helpers import PASSWORD, new_email
from tests.support.platform import API, bearer, platform_fixture, wait_for

ALLOWED_ORIGIN = "https://app.example.test"
platform = platform_fixture(name="sec-access", gateway_env={
    "GATEWAY_RPC_TIMEOUT": "3", "GATEWAY_CORS_ORIGINS": ALLOWED_ORIGIN})

ROUTES = routes_module.load_routes(None)  # what the platform's gateway serves
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer"}
VERSION_LEAK = re.compile(r"\d|gunicorn|werkzeug|python|flask|nameko|eventlet", re.I)


def route_id(route):
    return f"{route.method} {route.path}"


# -- the cast ---------------------------------------------------------------------------------
class Cast:
    """The victim (whose data must not leak), mallory (an ordinary user) and the admin."""

    def __init__(self, platform):
        self.platform = platform
        marker = uuid.uuid4().hex[:10]
        self.victim_name = f"Victim-{marker}"
        self.victim, self.victim_pair = platform.new_user(display_name=self.victim_name)
        self.mallory_email = new_email("mallory")
        self.mallory, _ = platform.new_user(email=self.mallory_email)
        self.admin = bearer(platform.admin_token())
        client = platform.rpc_client()
        self.mallory_grants = Grants.from_dict(client.call(
            "authz", "effective_permissions", kwargs={"user_id": self.mallory["id"]}))
        self.victim_entry = self._victim_audit_entry()

    def _victim_audit_entry(self):
        def found():
            response = self.platform.http.get(
                self.platform.url(f"{API}/audit/events"), headers=self.admin, timeout=10,
                params={"subject": self.victim["id"], "action": "user.created"})
            return response.ok and response.json()["items"]

        return wait_for(found, timeout=10, what="the victim's audit entry")[0]["id"]

    def mallory_token(self):
        """A fresh session each time: a route may end the session it is called with."""
        return self.platform.login(self.mallory_email, PASSWORD)["access_token"]

    def secrets(self):
        """What of the victim must never reach mallory or an anonymous caller."""
        return [self.victim["email"], self.victim_name, self.victim["id"]]

    def snapshot(self):
        """The victim's state as the admin sees it (to prove nothing changed)."""
        http, url = self.platform.http, self.platform.url
        user = http.get(url(f"{API}/users/{self.victim['id']}"), headers=self.admin,
                        timeout=10).json()
        roles = http.get(url(f"{API}/users/{self.victim['id']}/roles"), headers=self.admin,
                         timeout=10).json()
        return ({k: user[k] for k in ("email", "display_name", "status")},
                sorted(a["role"] for a in roles["items"]))


@pytest.fixture(scope="module")
def cast(platform):
    return Cast(platform)


@pytest.fixture(scope="module")
def victim_before(cast):
    return cast.snapshot()


# -- building requests from a route -----------------------------------------------------------
def path_for(route, cast, unknown=False):
    values = {}
    for name in route.path_names:
        if name == "user_id":
            values[name] = str(uuid.uuid4()) if unknown else cast.victim["id"]
        elif name == "entry_id":
            values[name] = str(uuid.uuid4()) if unknown else cast.victim_entry
        elif name == "name":
            values[name] = f"no-such-{uuid.uuid4().hex[:8]}" if unknown else "user"
        else:  # a feature service's parameter: any value will do
            values[name] = str(uuid.uuid4())
    return route.path.format(**values)


def sample_value(name, field):
    if isinstance(field, fields.Email):
        return new_email("probe")
    if isinstance(field, s.Uuid):
        return str(uuid.uuid4())
    if isinstance(field, s.Name):
        return f"probe-{uuid.uuid4().hex[:8]}"
    if isinstance(field, fields.List):
        return []
    if isinstance(field, fields.Integer | fields.Float):
        return 1
    if isinstance(field, fields.Boolean):
        return False
    if isinstance(field, fields.Dict):
        return {}
    return "probe-value" if "password" not in name else "probe-Password-123"


def body_for(route, extra=None):
    """A body the route's schema accepts: its required fields and one optional one."""
    if route.body is None:
        return None
    schema_fields = route.body().fields
    body = {n: sample_value(n, f) for n, f in schema_fields.items() if f.required}
    optional = [n for n, f in schema_fields.items() if not f.required]
    if not body and optional:
        body[optional[0]] = sample_value(optional[0], schema_fields[optional[0]])
    return {**body, **(extra or {})}


def query_for(route):
    if route.query is None:
        return None
    return {n: sample_value(n, f) if n != "permission" else "users:read"
            for n, f in route.query().fields.items() if f.required}


def call(platform, route, path, token=None, params=None, body=None, headers=None):
    sent = dict(headers or {})
    if token:
        sent.update(bearer(token))
    return requests.request(route.method, platform.url(path), headers=sent, params=params,
                            json=body, timeout=15)


def visible(response, cast):
    """The response as a client sees it, minus the request's own echoed path."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "instance"}
    return str(body)


def assert_no_leak(response, cast):
    shown = visible(response, cast)
    for secret in cast.secrets():
        assert secret not in shown, f"{secret} leaked: {shown[:300]}"


def assert_security_headers(response):
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, dict(headers))
    assert "Content-Security-Policy" in headers and "frame-ancestors 'none'" in \
        headers["Content-Security-Policy"]
    assert "Cache-Control" in headers
    server = headers.get("Server", "")
    assert not VERSION_LEAK.search(server), f"Server header leaks: {server!r}"
    assert "X-Powered-By" not in headers
    assert headers.get("X-Request-ID")


# -- item 9: the sweep --------------------------------------------------------------------------
def test_the_route_table_is_what_the_gateway_serves(platform):
    """Every /api rule of the gateway app is in the table this module sweeps."""
    from gateway import create_app

    app = create_app({"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/", "AUTHZ_EVENTS": False,
                      "ROUTES_DIR": str(platform.run_dir / "routes.d")})
    served = {(m, re.sub(r"<(\w+)>", r"{\1}", rule.rule)) for rule in app.url_map.iter_rules()
              for m in rule.methods - {"HEAD", "OPTIONS"} if rule.rule.startswith(API)}
    assert served == {(r.method, r.path) for r in ROUTES}
    assert len(ROUTES) >= 25


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_without_a_token_every_private_route_answers_401(platform, cast, route):
    response = call(platform, route, path_for(route, cast), params=query_for(route),
                    body=body_for(route))
    assert_security_headers(response)
    assert_no_leak(response, cast)
    if route.public:
        # public: no token asked for (a 401 here is about the credentials in the body)
        assert response.status_code != 403, response.text
        assert response.json().get("reason") != "missing", response.text
        return
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public], ids=route_id)
def test_with_a_token_lacking_the_permission_every_route_answers_403(platform, cast, route):
    allowed = not route.needs_permission or cast.mallory_grants.allows(route.permission,
                                                                       route.scope)
    response = call(platform, route, path_for(route, cast), token=cast.mallory_token(),
                    params=query_for(route), body=body_for(route))
    assert_security_headers(response)
    assert_no_leak(response, cast)
    if allowed:
        # self-service: whatever the answer, it is about mallory, never an authorisation
        # error (a 403 may say that her current password was wrong, not that she lacks a
        # permission)
        assert response.status_code != 401, response.text
        assert not (response.status_code == 403 and "permission" in response.json()), \
            response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["permission"] == route.permission


SELF_SERVICE = [r for r in ROUTES if not r.public and "caller.id" in (r.args or {}).values()]


@pytest.mark.parametrize("route", SELF_SERVICE, ids=route_id)
def test_another_users_id_smuggled_into_a_self_service_route_is_not_obeyed(platform, cast,
                                                                           route):
    victim_id = cast.victim["id"]
    params = {**(query_for(route) or {}), "user_id": victim_id}
    body = body_for(route, {"user_id": victim_id}) if route.body is not None else None
    response = call(platform, route, path_for(route, cast), token=cast.mallory_token(),
                    params=params, body=body)
    assert_security_headers(response)
    assert_no_leak(response, cast)
    # an unknown field is bad input: refused whole, not half-applied
    assert response.status_code == 400, response.text
    assert "user_id" in response.json()["errors"]


def test_self_service_routes_answer_about_the_caller_only(platform, cast):
    token = cast.mallory_token()
    me = platform.http.get(platform.url(f"{API}/users/me"), headers=bearer(token), timeout=10)
    assert me.status_code == 200 and me.json()["id"] == cast.mallory["id"]
    assert_no_leak(me, cast)
    check = platform.http.get(platform.url(f"{API}/authz/check"), headers=bearer(token),
                              params={"permission": "users:read"}, timeout=10)
    assert check.json() == {"allowed": False}


ADDRESSED = [r for r in ROUTES if r.path_names and not r.public and r.body is None]
# authz knows users only through their assignments: an unknown user simply has none
EMPTY_FOR_UNKNOWN = {"authz.roles_of"}


@pytest.mark.parametrize("route", ADDRESSED, ids=route_id)
def test_an_unknown_id_is_404_even_for_the_admin(platform, cast, route):
    response = call(platform, route, path_for(route, cast, unknown=True),
                    token=platform.admin_token(), params=query_for(route))
    assert_security_headers(response)
    if route.target in EMPTY_FOR_UNKNOWN:
        assert response.status_code == 200 and response.json()["items"] == []
    else:
        assert response.status_code == 404, response.text


def test_nothing_of_the_victim_changed(platform, cast, victim_before):
    """Runs after the sweep: no refused call changed the victim's account or roles."""
    assert cast.snapshot() == victim_before
    me = platform.http.get(platform.url(f"{API}/users/me"),
                           headers=bearer(cast.victim_pair["access_token"]), timeout=10)
    assert me.status_code == 200 and me.json()["display_name"] == cast.victim_name


# -- item 11: headers and CORS ------------------------------------------------------------------
OTHER_RESPONSES = [
    ("GET", "/health/live", None), ("GET", "/health/ready", None), ("GET", "/health", None),
    ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("GET", "/docs", None),
    ("GET", "/.well-known/jwks.json", None), ("GET", "/no/such/path", 404),
    ("DELETE", "/health/live", 405), ("GET", f"{API}/users/not-a-uuid", None),
    ("POST", f"{API}/auth/login", 415),
]


@pytest.mark.parametrize("method,path,status", OTHER_RESPONSES)
def test_every_other_response_has_the_security_headers_and_no_version(platform, method, path,
                                                                      status):
    kwargs = {"data": "email=a", "headers": {"Content-Type": "text/plain"}} \
        if status == 415 else {}
    response = requests.request(method, platform.url(path), timeout=10, **kwargs)
    if status is not None:
        assert response.status_code == status
    assert_security_headers(response)
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/problem+json"
        assert "Traceback" not in response.text


def raw_exchange(platform, data):
    """Send ``data`` as it is and read the whole answer: (status, headers, body)."""
    port = platform.processes["gateway"].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = requests.structures.CaseInsensitiveDict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("data, status", [
    (b"NOT AN HTTP REQUEST LINE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
     + b"\r\n", 431),
], ids=["bad-request-line", "uri-too-long", "header-too-large", "too-many-headers"])
def test_gunicorns_own_refusals_are_problems_with_the_security_headers(platform, data, status):
    answered, headers, body = raw_exchange(platform, data)
    assert answered == status
    assert headers["Content-Type"] == "application/problem+json"
    assert_security_headers(SimpleNamespace(headers=headers))
    problem = json.loads(body)
    assert problem["status"] == status and problem["request_id"] == headers["X-Request-ID"]
    assert problem["type"].startswith("urn:plinth:problem:")
    assert b"<html" not in body


@pytest.mark.parametrize("service", ["identity", "auth", "authz", "audit"])
def test_the_services_own_health_servers_name_no_version(platform, service):
    response = requests.get(platform.service_url(service, "/health"), timeout=10)
    assert response.status_code == 200
    server = response.headers.get("Server", "")
    assert not VERSION_LEAK.search(server), f"{service} Server header leaks: {server!r}"
    assert response.headers.get("Cache-Control") == "no-store"


def preflight(platform, origin, method="GET", path=f"{API}/users/me"):
    return requests.options(platform.url(path), timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "Authorization, Content-Type"})


def test_cors_allows_the_listed_origin(platform):
    allowed = preflight(platform, ALLOWED_ORIGIN, "PATCH")
    assert allowed.status_code in (200, 204)
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "PATCH" in allowed.headers["Access-Control-Allow-Methods"]
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    simple = requests.get(platform.url("/.well-known/jwks.json"), timeout=10,
                          headers={"Origin": ALLOWED_ORIGIN})
    assert simple.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert simple.headers.get("Access-Control-Allow-Credentials") != "true"


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://app.example.test", "https://app.example.test.evil.example",
    "https://evil-app.example.test", "null", "*"])
def test_cors_refuses_unlisted_origins(platform, cast, origin):
    refused = preflight(platform, origin)
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers
    # nor is a real request's answer readable by that origin
    response = requests.get(platform.url(f"{API}/users/me"), timeout=10, headers={
        "Origin": origin, **bearer(cast.mallory_token())})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert_security_headers(response)
