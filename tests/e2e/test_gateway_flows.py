"""The platform as users meet it: four `nameko run` services and the gateway under gunicorn
(two workers), over HTTP only."""

import time
import uuid

import requests

from tests.support.platform import API, bearer, platform_fixture, wait_for

# short RPC timeouts: the test that stops identity waits for one
platform = platform_fixture(name="gateway-flows", workers=2, threads=4,
                            gateway_env={"GATEWAY_RPC_TIMEOUT": "2"})

PASSWORD = "violet-Lantern-42-orbit"


def fresh(platform, method, path, **kwargs):
    """A request on a new connection, so that any gunicorn worker may take it."""
    return requests.request(method, platform.url(path), timeout=10, **kwargs)


def pids_serving(platform, path):
    return {r["pid"] for r in platform.log_records("gateway")
            if r.get("logger") == "gateway.access" and r.get("path") == path}


def test_sign_up_login_me_refresh_reuse_and_logout(platform):
    http = platform.http
    email = f"flow-{uuid.uuid4().hex[:8]}@example.test"
    signed_up = http.post(platform.url(f"{API}/users"), json={
        "email": email, "password": PASSWORD, "display_name": "Flow"})
    assert signed_up.status_code == 201
    user = signed_up.json()
    assert signed_up.headers["Location"] == f"{API}/users/{user['id']}"
    assert PASSWORD not in signed_up.text and "hash" not in signed_up.text
    first = platform.login(email, PASSWORD)
    assert first["token_type"].lower() == "bearer" and first["expires_in"] > 0

    me = wait_for(lambda: (r := http.get(platform.url(f"{API}/users/me"),
                                         headers=bearer(first["access_token"]))).ok and r,
                  timeout=5, what="the new user's role")
    assert me.json()["id"] == user["id"] and me.json()["email"] == email

    renamed = http.patch(platform.url(f"{API}/users/me"), json={"display_name": "Renamed"},
                         headers=bearer(first["access_token"]))
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "Renamed"

    second = http.post(platform.url(f"{API}/auth/refresh"),
                       json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert http.get(platform.url(f"{API}/users/me"),
                    headers=bearer(second["access_token"])).status_code == 200

    reused = http.post(platform.url(f"{API}/auth/refresh"),
                       json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert reused.headers["Content-Type"] == "application/problem+json"
    # reuse revoked the whole family: the newer token is dead too
    assert http.post(platform.url(f"{API}/auth/refresh"),
                     json={"refresh_token": second["refresh_token"]}).status_code == 401

    third = platform.login(email, PASSWORD)
    out = http.post(platform.url(f"{API}/auth/logout"), headers=bearer(third["access_token"]))
    assert out.status_code == 204 and out.content == b""
    assert http.post(platform.url(f"{API}/auth/refresh"),
                     json={"refresh_token": third["refresh_token"]}).status_code == 401

    one, two = platform.login(email, PASSWORD), platform.login(email, PASSWORD)
    assert http.post(platform.url(f"{API}/auth/logout-all"),
                     headers=bearer(one["access_token"])).status_code == 204
    for pair in (one, two):
        assert http.post(platform.url(f"{API}/auth/refresh"),
                         json={"refresh_token": pair["refresh_token"]}).status_code == 401

    wrong = http.post(platform.url(f"{API}/auth/login"),
                      json={"email": email, "password": "not-the-password"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid email or password"


def test_password_change_through_the_gateway(platform):
    user, pair = platform.new_user(password=PASSWORD)
    auth = bearer(pair["access_token"])
    wrong = platform.http.post(platform.url(f"{API}/users/me/password"), headers=auth,
                               json={"old_password": "not-it", "new_password": "x" * 12})
    assert wrong.status_code == 403
    changed = platform.http.post(platform.url(f"{API}/users/me/password"), headers=auth,
                                 json={"old_password": PASSWORD,
                                       "new_password": "amber-Falcon-77-river"})
    assert changed.status_code == 204
    platform.login(user["email"], "amber-Falcon-77-river")
    # every session was revoked by the change (auth hears identity's event)
    wait_for(lambda: platform.http.post(platform.url(f"{API}/auth/refresh"), json={
        "refresh_token": pair["refresh_token"]}).status_code == 401, timeout=5,
        what="the old session's revocation")


def test_an_admin_lists_users_grants_a_role_and_the_grantee_is_allowed(platform):
    admin = bearer(platform.admin_token())
    user, pair = platform.new_user()
    grantee = bearer(pair["access_token"])
    listed = platform.http.get(platform.url(f"{API}/users"),
                               params={"email": user["email"]}, headers=admin)
    assert listed.status_code == 200
    assert [u["id"] for u in listed.json()["items"]] == [user["id"]]
    page = platform.http.get(platform.url(f"{API}/users"), params={"limit": 1},
                             headers=admin).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert platform.http.get(platform.url(f"{API}/users"), headers=grantee).status_code == 403

    role = f"viewer-{uuid.uuid4().hex[:6]}"
    created = platform.http.post(platform.url(f"{API}/roles"), headers=admin, json={
        "name": role, "description": "reads users", "permissions": ["users:read"]})
    assert created.status_code == 201 and created.json()["permissions"] == ["users:read"]
    assigned = platform.http.put(platform.url(f"{API}/users/{user['id']}/roles/{role}"),
                                 headers=admin)
    assert assigned.status_code == 200 and assigned.json()["role"] == role
    granted = time.monotonic()
    wait_for(lambda: fresh(platform, "GET", f"{API}/users",
                           headers=grantee).status_code == 200,
             timeout=1.0, what="the grantee's next request to be allowed")
    assert time.monotonic() - granted < 1.0
    roles = platform.http.get(platform.url(f"{API}/users/{user['id']}/roles"), headers=admin)
    assert {a["role"] for a in roles.json()["items"]} == {"user", role}
    assert fresh(platform, "GET", f"{API}/authz/check", params={"permission": "users:read"},
                 headers=grantee).json() == {"allowed": True}


def test_a_revoked_permission_is_refused_within_one_second_by_every_worker(platform):
    admin = bearer(platform.admin_token())
    user, pair = platform.new_user()
    auth = bearer(pair["access_token"])
    role = f"reader-{uuid.uuid4().hex[:6]}"
    platform.http.post(platform.url(f"{API}/roles"), headers=admin,
                       json={"name": role, "permissions": ["audit:read"]})
    platform.http.put(platform.url(f"{API}/users/{user['id']}/roles/{role}"), headers=admin)
    path = f"{API}/audit/verify"
    # until both workers have answered (and so cached the grant)
    wait_for(lambda: fresh(platform, "GET", path, headers=auth).status_code == 200 and
             len(pids_serving(platform, path)) == 2, timeout=5, what="both workers allowing")

    revoked = platform.http.delete(platform.url(f"{API}/users/{user['id']}/roles/{role}"),
                                   headers=admin)
    assert revoked.status_code == 204
    started = time.monotonic()
    wait_for(lambda: fresh(platform, "GET", path, headers=auth).status_code == 403,
             timeout=1.0, interval=0.01, what="the revocation")
    assert time.monotonic() - started < 1.0
    # from then on, whichever worker answers
    assert [fresh(platform, "GET", path, headers=auth).status_code
            for _ in range(10)] == [403] * 10


def test_the_audit_trail_holds_the_http_request_id(platform):
    admin = bearer(platform.admin_token())
    request_id = f"e2e-audit-{uuid.uuid4().hex[:10]}"
    email = f"audit-{uuid.uuid4().hex[:8]}@x.test"
    signed_up = platform.http.post(platform.url(f"{API}/users"), json={
        "email": email, "password": PASSWORD}, headers={"X-Request-ID": request_id})
    assert signed_up.status_code == 201
    assert signed_up.headers["X-Request-ID"] == request_id
    user_id = signed_up.json()["id"]

    def entries():
        found = platform.http.get(platform.url(f"{API}/audit/events"), headers=admin,
                                  params={"request_id": request_id})
        assert found.status_code == 200, found.text
        return found.json()["items"]

    found = wait_for(lambda: (items := entries()) and
                     {(e["action"], e["subject"]) for e in items} >=
                     {("user.created", user_id), ("role.assigned", user_id)} and items,
                     timeout=5, what="the audit entries of the sign-up")
    # identity's event and the role authz gave on it both carry the HTTP request's id
    assert {e["request_id"] for e in found} == {request_id}
    entry = platform.http.get(platform.url(f"{API}/audit/events/{found[0]['id']}"),
                              headers=admin)
    assert entry.status_code == 200 and entry.json()["request_id"] == request_id
    assert any(r.get("request_id") == request_id and r.get("status") == 201
               for r in platform.log_records("gateway"))

    # and in the services' log lines: a refused duplicate sign-up is logged by identity
    duplicate_id = request_id + "-dup"
    duplicate = platform.http.post(platform.url(f"{API}/users"), json={
        "email": email, "password": PASSWORD}, headers={"X-Request-ID": duplicate_id})
    assert duplicate.status_code == 409
    assert duplicate.json()["request_id"] == duplicate_id
    wait_for(lambda: any(r.get("request_id") == duplicate_id
                         for r in platform.log_records("identity")),
             timeout=3, what="identity's log line")


def test_the_gateway_speaks_problem_json_and_sends_its_headers(platform):
    response = fresh(platform, "GET", f"{API}/users/me", headers={"X-Request-ID": "bad id!"})
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["X-Request-ID"] != "bad id!"
    assert response.headers["Server"] == "plinth"  # no product version
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert fresh(platform, "GET", "/docs").status_code == 200
    assert fresh(platform, "GET", "/openapi.json").json()["openapi"] == "3.1.0"
    keys = fresh(platform, "GET", "/.well-known/jwks.json").json()["keys"]
    assert keys and all(k["use"] == "sig" and "d" not in k for k in keys)
    huge = fresh(platform, "POST", f"{API}/auth/login", data=b"{" + b" " * 70000 + b"}",
                 headers={"Content-Type": "application/json"})
    assert huge.status_code == 413


def test_metrics_add_up_across_workers(platform):
    def served():
        text = fresh(platform, "GET", "/metrics").text
        for line in text.splitlines():
            if line.startswith('gateway_http_requests_total{method="GET",route="/health/live"'
                               ',status="200"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = served()
    sent = 0
    while sent < 20 or len(pids_serving(platform, "/health/live")) < 2:
        assert fresh(platform, "GET", "/health/live").status_code == 200
        sent += 1
        assert sent < 500, "one worker took every request"
    # whichever worker answers /metrics, it counts both workers' requests
    assert served() == before + sent
    text = fresh(platform, "GET", "/metrics").text
    assert 'gateway_rpc_duration_seconds_count{outcome="ok",service="identity"}' in text
    assert "gateway_http_request_duration_seconds_bucket" in text


def test_a_stopped_service_times_out_and_its_restart_is_picked_up(platform):
    """Runs last: it stops and restarts processes through the harness."""
    _, pair = platform.new_user()
    auth = bearer(pair["access_token"])
    assert platform.stop_process("identity") == 0  # SIGTERM: a clean exit
    started = time.monotonic()
    response = fresh(platform, "GET", f"{API}/users/me", headers=auth)
    assert response.status_code == 504 and response.json()["service"] == "identity"
    assert 1.5 < time.monotonic() - started < 5
    platform.start_process("identity")
    wait_for(lambda: fresh(platform, "GET", f"{API}/users/me", headers=auth).ok, timeout=10,
             what="identity back")
    platform.restart_process("gateway")  # a new gateway: keys and permissions fetched afresh
    assert fresh(platform, "GET", f"{API}/users/me", headers=auth).status_code == 200
    assert "--- start 2" in platform.log("gateway")
