"""The route table: the core entries, route files of feature services, and what is refused."""

import pytest
from marshmallow import ValidationError

from gateway import routes as r
from gateway import settings
from gateway.routes import CORE_ROUTES, Route, load_routes, routes_from_file, schema_from_spec
from shared.config import ConfigError
from tests.support.gateway_helpers import FEATURE_ROUTES


def test_core_table_covers_the_spec_http_api():
    table = {(route.method, route.path) for route in CORE_ROUTES}
    spec = [("POST", "/users"), ("POST", "/auth/login"), ("POST", "/auth/refresh"),
            ("POST", "/auth/logout"), ("POST", "/auth/logout-all"), ("GET", "/users/me"),
            ("PATCH", "/users/me"), ("POST", "/users/me/password"), ("GET", "/users"),
            ("GET", "/users/{user_id}"), ("PATCH", "/users/{user_id}"),
            ("DELETE", "/users/{user_id}"), ("GET", "/roles"), ("POST", "/roles"),
            ("PATCH", "/roles/{name}"), ("DELETE", "/roles/{name}"),
            ("PUT", "/users/{user_id}/roles/{name}"), ("DELETE", "/users/{user_id}/roles/{name}"),
            ("GET", "/authz/check"), ("GET", "/audit/events"),
            ("GET", "/audit/events/{entry_id}"), ("GET", "/audit/verify")]
    missing = [(m, p) for m, p in spec if (m, "/api/v1" + p) not in table]
    assert missing == []


def test_core_permissions_follow_the_spec():
    by_key = {(route.method, route.path[len("/api/v1"):]): route for route in CORE_ROUTES}
    assert by_key[("POST", "/users")].permission == r.PUBLIC
    assert by_key[("POST", "/auth/login")].rate_limit == "auth"
    assert by_key[("GET", "/users")].permission == "users:read"
    assert by_key[("DELETE", "/users/{user_id}")].permission == "users:write"
    assert by_key[("GET", "/roles")].permission == "roles:read"
    assert by_key[("PUT", "/users/{user_id}/roles/{name}")].permission == "roles:write"
    assert by_key[("GET", "/audit/verify")].permission == "audit:read"
    assert by_key[("POST", "/auth/logout")].permission == r.AUTHENTICATED
    assert by_key[("GET", "/users/me")].args == {"user_id": "caller.id"}


def test_every_core_route_passes_its_own_checks():
    assert len(load_routes(None)) == len(CORE_ROUTES)
    for route in CORE_ROUTES:
        assert route.check() is route


def test_flask_rule_and_path_names():
    route = Route("PUT", "/api/v1/users/{user_id}/roles/{name}", "authz.assign_role")
    assert route.rule == "/api/v1/users/<user_id>/roles/<name>"
    assert route.path_names == ["user_id", "name"]
    assert (route.service, route.rpc_method) == ("authz", "assign_role")


@pytest.mark.parametrize("changes, message", [
    ({"method": "FETCH"}, "method"),
    ({"path": "no-slash"}, "path"),
    ({"target": "just_a_name"}, "target"),
    ({"permission": "users:re*"}, "wildcard"),
    ({"permission": "Users:Read"}, "lower-case"),
    ({"rate_limit": "gold"}, "rate_limit"),
    ({"timeout": 0}, "timeout"),
    ({"status": 302}, "2xx"),
    ({"args": {"x": "cookie.session"}}, "unknown source"),
    ({"args": {"x": "path.nope"}}, "unknown source"),
])
def test_a_broken_entry_is_refused_at_start(changes, message):
    fields = {"method": "GET", "path": "/api/v1/things/{thing_id}", "target": "things.get",
              "permission": "things:read"}
    fields.update(changes)
    with pytest.raises(ConfigError, match=message):
        Route(**fields).check()


def test_an_entry_without_a_permission_is_refused_not_opened_to_every_user():
    with pytest.raises(ConfigError, match="route GET /api/v1/things: permission is required"):
        Route("GET", "/api/v1/things", "things.list").check()


def test_duplicate_routes_are_refused(tmp_path):
    (tmp_path / "clash.yaml").write_text(
        "service: clash\nroutes:\n  - {method: GET, path: '/api/v1/users/{x}', target: get, "
        "permission: public}\n")
    with pytest.raises(ConfigError, match="two routes for GET /api/v1/users/{x}"):
        load_routes(tmp_path)


def test_feature_routes_load_from_a_file(tmp_path):
    path = tmp_path / "gwfeature.yaml"
    path.write_text(FEATURE_ROUTES)
    echo, slow, fail = routes_from_file(path)
    assert echo.target == "gwfeature.echo" and echo.scope == "gwfeature"
    assert echo.permission == "invoices:write" and echo.rate_limit == "default"
    assert slow.public and slow.timeout == 0.3
    assert fail.error_status == {"conflict": 422}
    body = echo.body().load({"amount": "12.5", "lines": [{"sku": "a"}]})
    assert body == {"amount": 12.5, "currency": "EUR", "lines": [{"sku": "a"}]}
    with pytest.raises(ValidationError) as info:
        echo.body().load({"amount": 0, "currency": "GBP", "lines": [{}, {}, {}, {}]})
    assert set(info.value.messages) == {"amount", "currency", "lines"}
    assert echo.path_params().load({"invoice_id": "0F8B5D5E-1C7A-4B4B-9C1E-2A3B4C5D6E7F"}) == \
        {"invoice_id": "0f8b5d5e-1c7a-4b4b-9c1e-2a3b4c5d6e7f"}
    with pytest.raises(ValidationError):
        echo.path_params().load({"invoice_id": "12"})
    assert len(load_routes(tmp_path)) == len(CORE_ROUTES) + 3


def test_route_files_may_name_a_schema_by_its_dotted_path(tmp_path):
    (tmp_path / "people.yaml").write_text(
        "service: people\nroutes:\n"
        "  - method: POST\n    path: /api/v1/people\n    target: add\n"
        "    permission: people:write\n    body: gateway.schemas:SignUpSchema\n"
        "    response: gateway.schemas.UserSchema\n")
    [route] = routes_from_file(tmp_path / "people.yaml")
    assert route.body.__name__ == "SignUpSchema" and route.response.__name__ == "UserSchema"


# one GET /x entry of a billing route file, its mapping left open for one more key
ENTRY = "service: billing\nroutes:\n  - {method: GET, path: /x, target: get, permission: public"


@pytest.mark.parametrize("text, message", [
    ("routes: []\n", "'service'"),
    ("service: billing\nroutes:\n  - {method: GET, path: /x/{y}}\n", "not valid YAML"),
    ("service: Billing\nroutes: []\n", "'service'"),
    ("service: billing\nroutes: {a: 1}\n", "must be a list"),
    ("service: billing\nroutes:\n  - {path: /x, target: get, permission: public}\n",
     "method is required"),
    (ENTRY + ", colour: red}\n", "unknown keys"),
    (ENTRY + ", body: os.path}\n", "not a marshmallow Schema"),
    (ENTRY + ", body: no.such:X}\n", "cannot import"),
    (ENTRY + ",\n      query: {n: {type: decimal}}}\n", "type must be one of"),
    (ENTRY + ",\n      query: {n: {type: integer, minimum: 1}}}\n", "unknown spec"),
    (ENTRY + ", timeout: soon}\n", "must be numbers"),
    ("service: billing\nroutes:\n  - {method: GET, path: /x, target: get}\n",
     r"billing.yaml route 1 \(GET /x\): permission is required: 'public'"),
    ("service: billing\nroutes:\n  - {method: GET, path: /x, target: get, permission: }\n",
     "permission is required"),
    ("service: billing\nroutes:\n  - {method: GET, path: /x, target: get, permission: ''}\n",
     "permission is required"),
])
def test_a_broken_route_file_is_refused_with_its_reason(tmp_path, text, message):
    path = tmp_path / "billing.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        routes_from_file(path)


def test_field_specs_build_schemas_with_bounds():
    schema = schema_from_spec({
        "n": {"type": "integer", "min": 1, "max": 9, "required": True},
        "name": {"type": "string", "max": 3, "pattern": "^[a-z]+$"},
        "when": "date-time", "maybe": {"type": "string", "nullable": True},
    }, "Thing")()
    assert schema.load({"n": "3", "name": "abc", "when": "2026-01-01T00:00:00Z",
                        "maybe": None}) == {"n": 3, "name": "abc",
                                            "when": "2026-01-01T00:00:00Z", "maybe": None}
    with pytest.raises(ValidationError) as info:
        schema.load({"n": 10, "name": "ABCD", "when": "yesterday"})
    assert set(info.value.messages) == {"n", "name", "when"}


def test_settings_expand_environment_variables(tmp_path, monkeypatch):
    path = tmp_path / "gateway.yaml"
    path.write_text("RPC_TIMEOUT: ${GW_TEST_TIMEOUT:7}\nCORS_ORIGINS: ${GW_TEST_ORIGINS:}\n"
                    "JWT_ISSUER: ${GW_TEST_ISSUER:plinth}\nACCESS_LOG: ${GW_TEST_LOG:true}\n")
    monkeypatch.setenv("GW_TEST_ISSUER", "https://id.example.test")
    monkeypatch.setenv("GW_TEST_LOG", "false")
    loaded = settings.load({settings.CONFIG_FILE_KEY: str(path), "RPC_POOL_SIZE": 2})
    assert loaded.get_as("RPC_TIMEOUT", float) == 7.0
    assert loaded["JWT_ISSUER"] == "https://id.example.test"
    assert loaded.get_as("ACCESS_LOG", bool) is False
    assert loaded.get_list("CORS_ORIGINS") == []  # empty in the file: the default stays
    assert loaded["RPC_POOL_SIZE"] == 2
    with pytest.raises(ConfigError, match="RPC_TIMEOUT"):
        settings.Settings(RPC_TIMEOUT="soon").get_as("RPC_TIMEOUT", float)


def test_the_repository_config_file_loads():
    loaded = settings.load()
    assert loaded.get_as("RPC_POOL_SIZE", int) == 4
    assert loaded.get_as("MAX_CONTENT_LENGTH", int) == 65536
    assert loaded.get_list("JWT_ALGORITHMS") == ["RS256", "ES256", "EdDSA"]


def test_a_route_file_may_stream_its_answer_but_then_has_no_response_schema(tmp_path):

    path = tmp_path / "reports.yaml"
    path.write_text("service: reports\nroutes:\n"
                    "  - {method: GET, path: '/api/v1/reports/{id}/csv', target: read_csv,\n"
                    "     permission: reports:read, stream: text/csv}\n")
    (route,) = routes_from_file(path)
    assert route.stream == "text/csv"
    path.write_text("service: reports\nroutes:\n"
                    "  - {method: GET, path: '/api/v1/reports/{id}/csv', target: read_csv,\n"
                    "     permission: reports:read, stream: text/csv, response: {a: string}}\n")
    with pytest.raises(ConfigError, match="stream"):
        routes_from_file(path)
    path.write_text("service: reports\nroutes:\n"
                    "  - {method: GET, path: '/api/v1/reports/{id}/csv', target: read_csv,\n"
                    "     permission: reports:read, stream: 'not a type'}\n")
    with pytest.raises(ConfigError, match="stream"):
        routes_from_file(path)
