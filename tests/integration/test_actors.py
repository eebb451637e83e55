"""Proven actors between real containers (shared/actors.py): identity, authz and auth with
proofs enforced; a caller's token travels in the context data and each service checks it."""

import pytest

from authz.service import AuthzService
from identity.service import IdentityService
from shared.errors import Forbidden, Unauthorized
from tests.support.audit_helpers import wait_until
from tests.support.auth_helpers import start_auth, user_and_login

ENFORCE = {"ACTOR_PROOF": "enforce"}


@pytest.fixture
def services(start_service):
    start_service(IdentityService, **ENFORCE)
    start_service(AuthzService, **ENFORCE)
    start_auth(start_service, **ENFORCE)


def context_of(user, token):
    return {"request_id": "req-actors", "actor_id": user["id"], "actor_type": "user",
            "access_token": token}


def roles(rpc, user):
    return {r["role"] for r in rpc.call("authz", "roles_of", kwargs={"user_id": user["id"]})}


def test_a_users_proof_is_checked_by_the_service_itself(services, rpc):
    user, pair = user_and_login(rpc)
    other, _ = user_and_login(rpc)
    wait_until(lambda: roles(rpc, user) and roles(rpc, other), 10)
    mine = context_of(user, pair["access_token"])
    # non-sensitive calls go on as before, the token verified on the way
    assert {r["role"] for r in rpc.call("authz", "roles_of", kwargs={"user_id": user["id"]},
                                        context=mine)} == {"user"}
    assign = {"user_id": other["id"], "role": "admin"}
    with pytest.raises(Forbidden):
        rpc.call("authz", "assign_role", kwargs=assign, context=mine)
    with pytest.raises(Unauthorized):
        rpc.call("authz", "assign_role", kwargs=assign, context={**mine, "access_token": None})
    assert roles(rpc, other) == {"user"}
    # their own profile needs profile:write, which the user role holds; another's users:write
    changes = {"display_name": "Me"}
    assert rpc.call("identity", "update_user", kwargs={"user_id": user["id"],
                                                       "changes": changes},
                    context=mine)["display_name"] == "Me"
    with pytest.raises(Forbidden):
        rpc.call("identity", "update_user", kwargs={"user_id": other["id"], "changes": changes},
                 context=mine)


def test_a_service_acts_with_its_own_token_from_auth(services, rpc):
    from shared.proof import development_service_secret

    issued = rpc.call("auth", "issue_service_token", kwargs={
        "service": "identity", "secret": development_service_secret("identity")})
    assert issued["expires_in"] == 300 and issued["token_type"] == "Bearer"
    with pytest.raises(Unauthorized):
        rpc.call("auth", "issue_service_token", kwargs={
            "service": "identity", "secret": development_service_secret("authz")})
