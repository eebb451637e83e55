"""The provisioning saga through real processes and the gateway: 201 when every step is done;
authz stopped → 202 + Location, completed once authz is back; identity killed -9 mid-saga →
resumed after its restart with no duplicate user and no duplicate assignment."""

import uuid

from tests.support.platform import API, bearer, platform_fixture, wait_for

PASSWORD = "violet-Lantern-42-orbit"

platform = platform_fixture(name="provisioning", service_env={"identity": {
    "SAGA_LEASE": "3", "SAGA_POLL_INTERVAL": "0.3", "PROVISIONING_WAIT": "2"}})


def _role(platform, token):
    name = f"prov-{uuid.uuid4().hex[:8]}"
    created = platform.http.post(platform.url(f"{API}/roles"), headers=bearer(token),
                                 json={"name": name, "permissions": ["reports:read"]},
                                 timeout=10)
    assert created.status_code == 201, created.text
    return name


def _provision(platform, token, **fields):
    body = {"email": f"prov-{uuid.uuid4().hex[:10]}@example.test", "password": PASSWORD,
            "display_name": "Provisioned", **fields}
    return body["email"], platform.http.post(platform.url(f"{API}/admin/users"), json=body,
                                             headers=bearer(token), timeout=30)


def _saga(platform, token, location):
    response = platform.http.get(platform.url(location), headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _users_with(platform, email):
    client = platform.rpc_client()
    return client.call("identity", "list_users", kwargs={"filters": {"email": email}})["items"]


def test_provisioning_through_the_gateway_answers_201_with_the_user_and_roles(platform):
    token = platform.admin_token()
    role = _role(platform, token)
    email, response = _provision(platform, token, roles=[role],
                                 scoped_roles=[{"role": role, "scope": "billing"}])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == email and body["roles"] == [
        {"role": role, "scope": None}, {"role": role, "scope": "billing"}]
    assert response.headers["Location"] == f"{API}/users/{body['id']}"
    saga = _saga(platform, token, f"{API}/sagas/{body['saga_id']}")
    assert saga["status"] == "completed" and PASSWORD not in str(saga)
    spec = platform.http.get(platform.url("/openapi.json"), timeout=10).json()
    assert "202" in spec["paths"][f"{API}/admin/users"]["post"]["responses"]
    assert "get" in spec["paths"][f"{API}/sagas/{{saga_id}}"]


def test_an_unknown_role_is_a_422_naming_it_with_the_saga_id(platform):
    token = platform.admin_token()
    email, response = _provision(platform, token, roles=["no-such-role"])
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert problem["role"] == "no-such-role" and problem["saga_status"] == "compensated"
    assert _saga(platform, token, f"{API}/sagas/{problem['saga_id']}")["status"] == \
        "compensated"
    again = platform.http.post(platform.url(f"{API}/users"), timeout=10,
                               json={"email": email, "password": PASSWORD})
    assert again.status_code == 201, again.text


def test_a_caller_without_both_permissions_is_refused(platform):
    _user, pair = platform.new_user()
    _email, response = _provision(platform, pair["access_token"])
    assert response.status_code == 403
    saga = platform.http.get(platform.url(f"{API}/sagas/{uuid.uuid4()}"),
                             headers=bearer(pair["access_token"]), timeout=10)
    assert saga.status_code == 403


def test_authz_down_answers_202_and_the_saga_completes_when_it_returns(platform):
    token = platform.admin_token()
    role = _role(platform, token)
    platform.stop_process("authz")
    try:
        email, response = _provision(platform, token, roles=[role])
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        assert location == f"{API}/sagas/{response.json()['saga_id']}"
        assert _saga(platform, token, location)["status"] == "running"
    finally:
        platform.start_process("authz")
    saga = wait_for(lambda: (s := _saga(platform, token, location))["status"] != "running"
                    and s, timeout=40, interval=0.3, what="the saga to end")
    assert saga["status"] == "completed", saga
    user_id = saga["results"]["create_user"]["id"]
    roles = platform.rpc_client().call("authz", "roles_of", kwargs={"user_id": user_id})
    assert role in [r["role"] for r in roles]


def test_identity_killed_mid_saga_resumes_it_without_duplicates(platform):
    token = platform.admin_token()
    role = _role(platform, token)
    platform.stop_process("authz")  # the saga waits on its second step
    try:
        email, response = _provision(platform, token, roles=[role])
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        saga = _saga(platform, token, location)
        assert saga["current_step"] == "assign_roles" and "create_user" in saga["results"]
        platform.kill_process("identity")  # SIGKILL: it holds the saga's lease
    finally:
        platform.start_process("authz")
    platform.start_process("identity")
    saga = wait_for(lambda: (s := _saga(platform, token, location))["status"] != "running"
                    and s, timeout=40, interval=0.3, what="the resumed saga to end")
    assert saga["status"] == "completed", saga
    user_id = saga["results"]["create_user"]["id"]
    assert [u["id"] for u in _users_with(platform, email)] == [user_id]
    roles = platform.rpc_client().call("authz", "roles_of", kwargs={"user_id": user_id})
    assert [r["role"] for r in roles].count(role) == 1
