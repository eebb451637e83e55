"""Administrators through real processes and the gateway: the bootstrap admin is made once and
never from an account the bootstrap did not create; the last active administrator stays."""

import uuid

import requests

from tests.support.platform import API, Platform, bearer, platform_fixture, wait_for

platform = platform_fixture(name="administrators")

PASSWORD = "violet-Lantern-42-orbit"


def user_id_of(platform, email):
    client = platform.rpc_client()
    return client.call("identity", "get_user_by_email", kwargs={"email": email})["id"]


def global_admins(platform):
    return platform.rpc_client().call("authz", "global_admins")


def bootstrap_health(platform, settled=True):
    """authz's /health once its bootstrap is no longer pending."""
    def report():
        body = requests.get(platform.service_url("authz", "/health"), timeout=5).json()
        return body if not settled or body["bootstrap_admin"] != "pending" else None
    return wait_for(report, timeout=20, interval=0.2, what="authz's bootstrap")


def sign_up(platform, email=None):
    email = email or f"adm-{uuid.uuid4().hex[:10]}@example.test"
    response = platform.http.post(platform.url(f"{API}/users"), timeout=10, json={
        "email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    return response.json()


def as_admin_of(platform, user, admin_token):
    """Make ``user`` admin through the gateway; their own (fresh) access token."""
    done = platform.http.put(platform.url(f"{API}/users/{user['id']}/roles/admin"),
                             headers=bearer(admin_token), timeout=10)
    assert done.status_code == 200, done.text
    token = platform.login(user["email"], PASSWORD)["access_token"]
    wait_for(lambda: platform.http.get(platform.url(f"{API}/users"), headers=bearer(token),
                                       timeout=10).status_code == 200,
             timeout=10, what="the new admin's permissions at the gateway")
    return token


def test_the_only_administrator_can_neither_disable_nor_delete_nor_demote_themselves(platform):
    token = platform.admin_token()
    me = user_id_of(platform, platform.admin_email)
    auth = bearer(token)
    http = platform.http
    for method, path in [("POST", f"/users/{me}/disable"), ("DELETE", f"/users/{me}"),
                         ("DELETE", f"/users/{me}/roles/admin")]:
        refused = http.request(method, platform.url(API + path), headers=auth, timeout=10)
        assert refused.status_code == 409, (path, refused.text)
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "last active administrator" in refused.json()["detail"]
    assert http.get(platform.url(f"{API}/users/me"), headers=auth, timeout=10).status_code == 200
    # an ordinary user is disabled and deleted as before
    other = sign_up(platform)
    assert http.post(platform.url(f"{API}/users/{other['id']}/disable"), headers=auth,
                     timeout=10).status_code == 200
    assert http.delete(platform.url(f"{API}/users/{other['id']}"), headers=auth,
                       timeout=10).status_code == 204


def test_a_stranger_signing_up_with_a_deleted_bootstrap_admins_email_is_not_admin_after_restart(
        platform):
    """The reproduced takeover: a second admin deletes the bootstrap admin, a stranger signs
    up with the freed email, authz restarts."""
    bootstrap_admin = user_id_of(platform, platform.admin_email)
    second = sign_up(platform)
    second_token = as_admin_of(platform, second, platform.admin_token())
    deleted = platform.http.delete(platform.url(f"{API}/users/{bootstrap_admin}"),
                                   headers=bearer(second_token), timeout=10)
    assert deleted.status_code == 204, deleted.text
    stranger = sign_up(platform, email=platform.admin_email)
    wait_for(lambda: global_admins(platform) == [second["id"]], timeout=10,
             what="the deleted admin's assignment to go")

    platform.restart_process("authz")
    assert bootstrap_health(platform)["bootstrap_admin"] == "done"
    stranger_token = platform.login(platform.admin_email, PASSWORD)["access_token"]
    assert platform.http.get(platform.url(f"{API}/users"), headers=bearer(stranger_token),
                             timeout=10).status_code == 403
    assert global_admins(platform) == [second["id"]]
    assert stranger["id"] not in global_admins(platform)
    # and the administrator left is now the last one
    refused = platform.http.delete(platform.url(f"{API}/users/{second['id']}"),
                                   headers=bearer(second_token), timeout=10)
    assert refused.status_code == 409


def test_an_email_a_stranger_registered_before_the_first_start_is_refused_loudly():
    email = f"root-{uuid.uuid4().hex[:8]}@example.test"
    with Platform(name="bootstrap-squat", services=("identity", "auth", "authz"),
                  admin_email=None) as squat:
        stranger = sign_up(squat, email=email)
        assert bootstrap_health(squat)["bootstrap_admin"] == "disabled"
        squat.processes["authz"].env.update({"BOOTSTRAP_ADMIN_EMAIL": email,
                                             "BOOTSTRAP_ADMIN_PASSWORD": "Another-Secret-77"})
        squat.restart_process("authz")  # the first start with a bootstrap configured
        report = bootstrap_health(squat)
        assert report["bootstrap_admin"] == "refused"
        assert "did not create" in report["bootstrap_admin_problem"]
        assert any(r.get("level") == "error" and "bootstrap admin refused" in r.get("msg", "")
                   for r in squat.log_records("authz"))
        token = squat.login(email, PASSWORD)["access_token"]
        assert squat.http.get(squat.url(f"{API}/users"), headers=bearer(token),
                              timeout=10).status_code == 403
        assert global_admins(squat) == []
        assert user_id_of(squat, email) == stranger["id"]
