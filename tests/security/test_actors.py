"""Security: proven actors (issue 18, items 2 and 3; shared/actors.py).

An attacker holding the broker's credential talks to the services directly with a standalone
nameko ``ClusterRpcProxy``, naming the administrator as the actor in the context data. Without
a proof, with a token signed by a key of their own, with an expired token of the real key, or
with the token of a session that has ended, ``authz.assign_role`` and
``identity.set_password`` refuse, nothing changes, and the refusal is logged and audited. The
control cases show the refusals are not blanket ones: the administrator's real token does the
same calls, and a service's token acts on behalf of a user only within its delegations and
only for a user who could do it, until its credential is rotated out.
"""

import time
import uuid

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy.orm import sessionmaker

from auth import credentials
from shared.errors import Forbidden, Unauthorized
from shared.proof import development_service_secret
from tests.support.fault_helpers import (
    PASSWORD,
    SigningKey,
    claims_for,
    mint,
    signing_key,
)
from tests.support.platform import API, bearer, platform_fixture, wait_for

platform = platform_fixture(name="sec-actors")
NEW_PASSWORD = "cobalt-Harbor-93-lantern"


@pytest.fixture(scope="module")
def admin(platform):
    """(admin's user id, a valid access token of theirs)."""
    token = platform.admin_token()
    user = platform.rpc_client().call("identity", "get_user_by_email",
                                      kwargs={"email": platform.admin_email})
    return user["id"], token


@pytest.fixture
def victim(platform):
    """A fresh ordinary user (and their token pair): the target of the forged calls."""
    email = f"victim-{uuid.uuid4().hex[:10]}@example.test"
    user, pair = platform.new_user(email=email, password=PASSWORD)
    return {**user, "email": email}, pair


def call(platform, service, method, context, **kwargs):
    """``service.method(**kwargs)`` through a standalone nameko proxy with ``context``."""
    with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, context_data=context,
                         timeout=15) as proxy:
        return getattr(getattr(proxy, service), method)(**kwargs)


def as_admin(admin_id, token=None):
    context = {"request_id": f"forged-{uuid.uuid4().hex[:8]}", "actor_id": admin_id,
               "actor_type": "user"}
    if token is not None:
        context["access_token"] = token
    return context


def roles_of(platform, user_id):
    return {r["role"] for r in platform.rpc_client().call("authz", "roles_of",
                                                          kwargs={"user_id": user_id})}


def can_log_in(platform, email, password):
    response = platform.http.post(platform.url(f"{API}/auth/login"),
                                  json={"email": email, "password": password}, timeout=10)
    return response.status_code == 200


def foreign_key(kid):
    """A signing key of the attacker's own, named like auth's real one."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid, "RS256", private, {}, "")


def forged_proofs(db, admin_id):
    real = signing_key(db)
    now = time.time()
    return {
        "no proof": None,
        "not a token": "not-a-token",
        "signed by another key": mint(foreign_key(real.kid), claims_for(admin_id)),
        "expired": mint(real, claims_for(admin_id, now=now - 3600)),
    }


PROOF_CASES = ["no proof", "not a token", "signed by another key", "expired"]


@pytest.mark.parametrize("case", PROOF_CASES)
def test_a_forged_admin_context_cannot_assign_a_role_and_nothing_changes(platform, db, admin,
                                                                         victim, case):
    admin_id, _ = admin
    user, _ = victim
    proof = forged_proofs(db, admin_id)[case]
    with pytest.raises(Unauthorized):
        call(platform, "authz", "assign_role", as_admin(admin_id, proof),
             user_id=user["id"], role="admin")
    assert roles_of(platform, user["id"]) == {"user"}


@pytest.mark.parametrize("case", PROOF_CASES)
def test_a_forged_admin_context_cannot_set_a_password_and_nothing_changes(platform, db, admin,
                                                                          victim, case):
    admin_id, _ = admin
    user, _ = victim
    proof = forged_proofs(db, admin_id)[case]
    with pytest.raises(Unauthorized):
        call(platform, "identity", "set_password", as_admin(admin_id, proof),
             user_id=user["id"], password=NEW_PASSWORD)
    assert can_log_in(platform, user["email"], PASSWORD)
    assert not can_log_in(platform, user["email"], NEW_PASSWORD)


def test_the_token_of_an_ended_session_is_refused(platform, admin, victim):
    admin_id, _ = admin
    user, _ = victim
    pair = platform.login(platform.admin_email, platform.admin_password)
    logout = platform.http.post(platform.url(f"{API}/auth/logout"), timeout=10,
                                headers=bearer(pair["access_token"]))
    assert logout.status_code == 204
    with pytest.raises(Unauthorized) as refused:
        call(platform, "authz", "assign_role", as_admin(admin_id, pair["access_token"]),
             user_id=user["id"], role="admin")
    assert refused.value.details.get("reason") == "revoked"
    assert roles_of(platform, user["id"]) == {"user"}


def test_an_ordinary_users_own_token_is_forbidden_and_the_admins_is_obeyed(platform, admin,
                                                                            victim):
    admin_id, admin_token = admin
    user, pair = victim
    with pytest.raises(Forbidden):
        call(platform, "authz", "assign_role", as_admin(user["id"], pair["access_token"]),
             user_id=user["id"], role="admin")
    assert roles_of(platform, user["id"]) == {"user"}
    # the control: the very same call with the administrator's real token goes through
    assigned = call(platform, "authz", "assign_role", as_admin(admin_id, admin_token),
                    user_id=user["id"], role="admin")
    assert assigned["created"] is True and "admin" in roles_of(platform, user["id"])
    call(platform, "identity", "set_password", as_admin(admin_id, admin_token),
         user_id=user["id"], password=NEW_PASSWORD)
    assert can_log_in(platform, user["email"], NEW_PASSWORD)


def test_a_claimed_actor_does_not_outweigh_the_token(platform, admin, victim):
    """A user's real token with the admin named as actor acts as that user, not the admin."""
    admin_id, _ = admin
    user, pair = victim
    with pytest.raises(Forbidden):
        call(platform, "identity", "disable_user", as_admin(admin_id, pair["access_token"]),
             user_id=admin_id)


def test_refusals_are_logged_and_audited_without_the_token(platform, db, admin, victim):
    admin_id, admin_token = admin
    user, _ = victim
    forged = forged_proofs(db, admin_id)["signed by another key"]
    context = as_admin(admin_id, forged)
    with pytest.raises(Unauthorized):
        call(platform, "authz", "assign_role", context, user_id=user["id"], role="admin")

    def audited():
        return db.rows("SELECT action, data, request_id FROM audit.entries WHERE "
                       "action = 'access.refused' AND request_id = :r",
                       r=context["request_id"])
    [entry] = wait_for(audited, timeout=15, what="the refusal's audit entry")
    assert entry["data"]["method"] == "authz.assign_role"
    assert entry["data"]["reason"] == "signature"
    logged = [r for r in platform.log_records("authz") if r.get("event") == "access_refused"
              and r.get("request_id") == context["request_id"]]
    assert logged
    for name in ("authz", "identity", "auth", "audit"):
        assert forged not in platform.log(name)
    assert forged not in str(db.rows("SELECT * FROM audit.entries WHERE request_id = :r",
                                     r=context["request_id"]))
    # audit's own read of the trail is guarded too
    with pytest.raises(Unauthorized):
        call(platform, "audit", "query", as_admin(admin_id), action="access.refused")
    found = call(platform, "audit", "query", as_admin(admin_id, admin_token),
                 action="access.refused")
    assert found["items"]


# -- service tokens ---------------------------------------------------------------------------
def service_token(platform, service, secret):
    return platform.rpc_client().call("auth", "issue_service_token",
                                      kwargs={"service": service, "secret": secret})


def test_a_service_token_acts_for_a_user_only_within_its_delegation(platform, admin, victim):
    admin_id, _ = admin
    user, _ = victim
    identity = service_token(platform, "identity",
                             development_service_secret("identity"))["access_token"]
    # on behalf of someone who may not assign roles: refused
    with pytest.raises(Forbidden):
        call(platform, "authz", "assign_role", as_admin(user["id"], identity),
             user_id=user["id"], role="admin")
    # a service without that delegation, even on behalf of the admin: refused
    audit = service_token(platform, "audit", development_service_secret("audit"))["access_token"]
    with pytest.raises(Forbidden):
        call(platform, "authz", "assign_role", as_admin(admin_id, audit),
             user_id=user["id"], role="admin")
    assert roles_of(platform, user["id"]) == {"user"}
    # identity on behalf of the admin (what its provisioning saga does): allowed
    call(platform, "authz", "assign_role", as_admin(admin_id, identity),
         user_id=user["id"], role="admin")
    assert "admin" in roles_of(platform, user["id"])


def test_a_rotated_out_credential_stops_working(platform, admin, victim):
    admin_id, _ = admin
    user, _ = victim
    engine = sa.create_engine(platform.db_uri.replace("postgresql://", "postgresql+psycopg2://",
                                                      1), poolclass=sa.pool.NullPool)
    try:
        with sessionmaker(bind=engine)() as session:
            session.execute(sa.text("SET search_path TO auth"))
            first = credentials.add(session, "identity")[1]
            session.commit()
            token = service_token(platform, "identity", first)
            second = credentials.add(session, "identity")[1]
            session.commit()
            assert service_token(platform, "identity", first)["access_token"]  # both valid
            third = credentials.add(session, "identity")[1]
            session.commit()
    finally:
        engine.dispose()
    with pytest.raises(Unauthorized):
        service_token(platform, "identity", first)
    for secret in (second, third):
        assert service_token(platform, "identity", secret)["access_token"]
    with pytest.raises(Unauthorized):
        service_token(platform, "identity", "guessed-" + uuid.uuid4().hex)
    # a token issued before the rotation lives out its few minutes, as any token does
    assert token["expires_in"] <= 600
    call(platform, "authz", "assign_role", as_admin(admin_id, token["access_token"]),
         user_id=user["id"], role="admin")
