"""shared.actors without a broker: which proof a guarded method accepts, and what a refusal
leaves behind (a log line and an ``access.refused`` event, nothing else)."""

import logging
import uuid

import pytest

from shared.actors import Proven, guarded
from shared.errors import Forbidden, Unauthorized, Unavailable
from shared.proof import Principal

ADMIN, USER = str(uuid.uuid4()), str(uuid.uuid4())


class Provider:
    """What Proven asks of the Proof provider: a verdict per token, sessions, grants."""

    enforced = True

    def __init__(self, tokens, grants=None, ended=()):
        self.tokens, self.grants, self.ended = tokens, grants or {}, set(ended)
        self.asked = []

    def verify(self, token):
        if token is None:
            return Unauthorized("no proof", {"reason": "missing"})
        return self.tokens.get(token) or Unauthorized("bad", {"reason": "signature"})

    def ensure_active(self, principal):
        if principal.session_id in self.ended:
            raise Unauthorized("ended", {"reason": "revoked"})

    def allows(self, user_id, permission, scope=None):
        self.asked.append((user_id, permission))
        return permission in self.grants.get(user_id, ())


def user(user_id, session=None):
    return Principal(user_id, "user", session or f"s-{uuid.uuid4().hex}", {})


def service(name):
    return Principal(name, "service", None, {})


class Db:
    def __init__(self):
        self.events, self.commits, self.rollbacks = [], 0, 0

    def emit(self, event_type, subject, data=None, actor=None):
        self.events.append((event_type, subject, data, actor))

    def commit(self):
        self.commits += 1

    def rollback(self):
        self.rollbacks += 1


class Service:
    name = "probe"

    def __init__(self, provider, context):
        self.proof = Proven(provider, context)
        self.db = Db()
        self.done = []

    @guarded("roles:write")
    def assign(self, user_id, role):
        self.done.append((user_id, role))
        return "assigned"

    @guarded("users:write", own=("user_id", "profile:write"))
    def update(self, user_id, changes=None):
        self.done.append(user_id)
        return "updated"

    @guarded("sessions:write", own=("user_id", None))
    def logout_all(self, user_id):
        self.done.append(user_id)
        return "out"

    @guarded(("users:write", "roles:write"))
    def provision(self, data=None):
        self.done.append(data)
        return "provisioned"


def context(actor_id, token=None, actor_type="user"):
    data = {"request_id": "req-1", "actor_id": actor_id, "actor_type": actor_type}
    if token is not None:
        data["access_token"] = token
    return data


GRANTS = {ADMIN: {"roles:write", "users:write"}, USER: {"profile:write"}}


def test_a_claimed_admin_without_proof_is_unauthorized_logged_and_audited(caplog):
    provider = Provider({}, GRANTS)
    svc = Service(provider, context(ADMIN))
    with caplog.at_level(logging.WARNING, "shared.actors"), pytest.raises(Unauthorized):
        svc.assign(USER, "admin")
    assert svc.done == [] and provider.asked == []
    [(event, subject, data, actor)] = svc.db.events
    assert (event, subject, data["reason"]) == ("access.refused", "probe.assign", "missing")
    assert data["claimed_actor"] == {"id": ADMIN, "type": "user"} and svc.db.commits == 1
    assert any(r.event == "access_refused" for r in caplog.records)


def test_a_forged_token_is_refused_and_never_written_down():
    svc = Service(Provider({}, GRANTS), context(ADMIN, "forged.token.value"))
    with pytest.raises(Unauthorized):
        svc.assign(USER, "admin")
    assert "forged.token.value" not in repr(svc.db.events)


def test_a_proven_user_without_the_permission_is_forbidden():
    svc = Service(Provider({"t": user(USER)}, GRANTS), context(ADMIN, "t"))
    with pytest.raises(Forbidden):
        svc.assign(USER, "admin")
    assert svc.done == [] and svc.db.events[0][2]["outcome"] == "Forbidden"


def test_a_proven_admin_is_obeyed_and_nothing_is_audited_as_refused():
    svc = Service(Provider({"t": user(ADMIN)}, GRANTS), context(ADMIN, "t"))
    assert svc.assign(USER, "admin") == "assigned" and svc.db.events == []


def test_an_ended_session_is_unauthorized_even_for_an_admin():
    admin = user(ADMIN, session="gone")
    svc = Service(Provider({"t": admin}, GRANTS, ended={"gone"}), context(ADMIN, "t"))
    with pytest.raises(Unauthorized) as refused:
        svc.assign(USER, "admin")
    assert refused.value.details["reason"] == "revoked"


def test_own_account_rules_apply_only_to_the_proven_user():
    provider = Provider({"u": user(USER)}, GRANTS)
    svc = Service(provider, context(USER, "u"))
    assert svc.update(USER, {"display_name": "me"}) == "updated"
    assert (USER, "profile:write") in provider.asked
    with pytest.raises(Forbidden):
        svc.update(ADMIN, {"display_name": "not me"})
    assert svc.logout_all(USER) == "out"
    with pytest.raises(Forbidden):
        svc.logout_all(ADMIN)


def test_every_permission_of_a_tuple_is_needed():
    provider = Provider({"t": user(ADMIN)}, {ADMIN: {"users:write"}})
    with pytest.raises(Forbidden):
        Service(provider, context(ADMIN, "t")).provision({})


def test_a_service_acts_only_within_its_delegation_for_a_user_who_may():
    tokens = {"id": service("identity"), "audit": service("audit")}
    provider = Provider(tokens, GRANTS)
    # identity may assign roles for the admin it acts for (its provisioning saga)
    assert Service(provider, context(ADMIN, "id")).assign(USER, "admin") == "assigned"
    with pytest.raises(Forbidden):  # ... not for a user who may not
        Service(provider, context(USER, "id")).assign(USER, "admin")
    with pytest.raises(Forbidden):  # ... nor as itself, on nobody's behalf
        Service(provider, context("identity", "id", "service")).assign(USER, "admin")
    with pytest.raises(Forbidden):  # audit has no such delegation, whoever it names
        Service(provider, context(ADMIN, "audit")).assign(USER, "admin")


def test_an_unreachable_authority_is_unavailable_not_a_refusal():
    class Down(Provider):
        def allows(self, *args, **kwargs):
            raise Unavailable("authz is down")

    svc = Service(Down({"t": user(ADMIN)}, GRANTS), context(ADMIN, "t"))
    with pytest.raises(Unavailable):
        svc.assign(USER, "admin")
    assert svc.db.events == [] and svc.done == []


def test_a_method_whose_effects_are_checked_later_may_go_on_while_authz_is_down():
    class Down(Provider):
        def allows(self, *args, **kwargs):
            raise Unavailable("authz is down", {"service": "authz"})

    class Provisioning(Service):
        @guarded("users:write", authz_down_defers=True)
        def provision(self, data=None):
            return "started"

    assert Provisioning(Down({"t": user(ADMIN)}, GRANTS), context(ADMIN, "t")).provision() \
        == "started"
    with pytest.raises(Unauthorized):  # ... but never without a valid proof
        Provisioning(Down({}, GRANTS), context(ADMIN, "forged")).provision()

    class AuthDown(Down):
        def ensure_active(self, principal):
            raise Unavailable("auth is down", {"service": "auth"})

    with pytest.raises(Unavailable):  # ... nor while auth cannot say the session is live
        Provisioning(AuthDown({"t": user(ADMIN)}, GRANTS), context(ADMIN, "t")).provision()


def test_with_proofs_off_a_guarded_method_runs_as_before():
    provider = Provider({}, GRANTS)
    provider.enforced = False
    assert Service(provider, context(ADMIN)).assign(USER, "admin") == "assigned"


def test_a_principal_never_shows_its_claims():
    principal = Principal(USER, "user", "s", {"secret": "x"})
    assert repr(principal) == f"Principal(user:{USER})"
