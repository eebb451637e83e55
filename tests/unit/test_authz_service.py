import eventlet
import pytest
import sqlalchemy as sa
from nameko.exceptions import UnknownService
from nameko.testing.services import worker_factory
from sqlalchemy.orm import sessionmaker

from authz.service import AuthzService
from shared.db import UnitOfWork
from shared.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from tests.support.authz_helpers import (
    envelope,
    migrated_sqlite,
    new_role_name,
    new_user_id,
    outbox_events,
)

CONTEXT = {"request_id": "req-authz-unit", "actor_type": "user", "actor_id": "tester"}


@pytest.fixture
def engine(tmp_path_factory):
    engine = migrated_sqlite(tmp_path_factory.getbasetemp())
    yield engine
    engine.dispose()


@pytest.fixture
def make_uow(engine):
    units = []

    def make():
        unit = UnitOfWork(sessionmaker(bind=engine, expire_on_commit=False), "authz",
                          dict(CONTEXT))
        units.append(unit)
        return unit

    yield make
    for unit in units:
        unit.close()


class FakeIdentity:
    """Stands in for the identity service (another service, not our broker or database)."""

    def __init__(self):
        self.known = set()
        self.disabled = set()
        self.failure = None

    def get_user(self, user_id):
        if self.failure:
            raise self.failure
        if user_id not in self.known:
            raise NotFound(f"user {user_id} not found", {"user_id": user_id})
        return {"id": user_id, "status": "disabled" if user_id in self.disabled else "active"}


@pytest.fixture
def identity():
    return FakeIdentity()


@pytest.fixture
def authz(make_uow, identity):
    def make():
        return worker_factory(AuthzService, db=make_uow(), identity_rpc=identity,
                              config={"IDENTITY_RPC_TIMEOUT": 0.5})
    return make


@pytest.fixture
def svc(authz):
    return authz()


@pytest.fixture
def user(identity):
    def make():
        user_id = new_user_id()
        identity.known.add(user_id)
        return user_id
    return make


def events(engine, event_type=None):
    return outbox_events(engine, event_type)


# -- built-in roles ---------------------------------------------------------------------------

def test_built_in_roles_exist_after_the_first_migration(svc):
    roles = {r["name"]: r for r in svc.list_roles()}
    assert roles["admin"]["permissions"] == ["*"] and roles["admin"]["builtin"] is True
    assert roles["user"]["permissions"] == ["authz:check", "password:write", "profile:read",
                                            "profile:write"]
    assert roles["user"]["builtin"] is True


@pytest.mark.parametrize("name", ["admin", "user"])
def test_built_in_roles_cannot_be_deleted(svc, engine, name):
    with pytest.raises(Forbidden) as info:
        svc.delete_role(name)
    assert f"built-in role {name} cannot be deleted" in info.value.message
    assert svc.get_role(name)["name"] == name
    assert events(engine) == []


def test_admin_cannot_be_changed_in_any_way(svc, engine):
    for attempt in (lambda: svc.update_role("admin", permissions=["users:read"]),
                    lambda: svc.update_role("admin", description="less"),
                    lambda: svc.revoke("admin", "*"),
                    lambda: svc.grant("admin", "users:read")):
        with pytest.raises(Forbidden):
            attempt()
    assert svc.get_role("admin")["permissions"] == ["*"]
    assert events(engine) == []


def test_user_role_can_be_extended_by_operators(svc, user):
    svc.grant("user", "blog:comment")
    someone = user()
    svc.assign_role(someone, "user")
    assert svc.check(someone, "blog:comment") is True


# -- roles ------------------------------------------------------------------------------------

def test_create_role_returns_it_and_queues_role_created(svc, engine):
    name = new_role_name()
    role = svc.create_role(name=name, description="reads users",
                           permissions=["users:read", "users:read", "*:*"])
    # stored as granted (deduplicated, canonical spelling); evaluated simplified
    assert role["name"] == name and role["permissions"] == ["*", "users:read"]
    assert role["effective_permissions"] == ["*"]
    assert role["builtin"] is False and role["includes"] == []
    [event] = events(engine, "role.created")
    assert event["subject"] == name and event["request_id"] == "req-authz-unit"
    assert event["actor"] == {"id": "tester", "type": "user"}
    assert event["data"]["role"] == name
    assert event["data"]["permissions"] == ["*", "users:read"]
    assert event["data"]["affected_users"] == []


def test_create_role_accepts_one_dict_as_the_gateway_sends_it(svc):
    name = new_role_name()
    role = svc.create_role({"name": name, "permissions": ["users:read"]})
    assert role["permissions"] == ["users:read"]


def test_duplicate_role_names_conflict(svc, engine):
    name = new_role_name()
    svc.create_role(name=name)
    with pytest.raises(Conflict) as info:
        svc.create_role(name=name, permissions=["users:read"])
    assert info.value.details == {"name": ["already taken"]}
    assert svc.get_role(name)["permissions"] == []
    assert len(events(engine, "role.created")) == 1


@pytest.mark.parametrize("data, field", [
    ({}, "name"),
    ({"name": "A-role"}, "name"),
    ({"name": "x"}, "name"),
    ({"name": "9lives"}, "name"),
    ({"name": "r" * 65}, "name"),
    ({"name": "ok-role", "permissions": ["users"]}, "permissions"),
    ({"name": "ok-role", "permissions": "users:read"}, "permissions"),
    ({"name": "ok-role", "permissions": ["users:re*"]}, "permissions"),
    ({"name": "ok-role", "permissions": [42]}, "permissions"),
    ({"name": "ok-role", "includes": ["Bad Name"]}, "includes"),
    ({"name": "ok-role", "description": "d" * 501}, "description"),
    ({"name": "ok-role", "unexpected": 1}, "unexpected"),
])
def test_bad_role_input_names_the_field_and_changes_nothing(svc, engine, data, field):
    with pytest.raises(Invalid) as info:
        svc.create_role(data)
    assert field in info.value.details
    assert {r["name"] for r in svc.list_roles()} == {"admin", "user"}
    assert events(engine) == []


def test_bad_permission_string_error_says_what_is_wrong(svc):
    with pytest.raises(Invalid) as info:
        svc.create_role(name=new_role_name(), permissions=["users:read", "Users:read"])
    [message] = info.value.details["permissions"][1]
    assert "'Users:read' is not a permission" in message and "lower-case" in message


def test_non_dict_input_is_refused(svc):
    with pytest.raises(Invalid) as info:
        svc.create_role(["not", "a", "dict"])
    assert info.value.details == {"_schema": ["must be an object"]}


def test_update_role_replaces_permissions_and_reports_the_change(svc, engine, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["users:read", "roles:read"])
    holder = user()
    svc.assign_role(holder, name)
    role = svc.update_role(name, permissions=["users:read", "audit:read"],
                           description="now audits")
    assert role["permissions"] == ["audit:read", "users:read"]
    assert role["description"] == "now audits"
    [event] = events(engine, "role.updated")
    assert event["data"]["changes"] == {
        "description": "now audits",
        "permissions": {"added": ["audit:read"], "removed": ["roles:read"]}}
    assert event["data"]["affected_users"] == [holder]
    assert svc.check(holder, "audit:read") and not svc.check(holder, "roles:read")


def test_update_with_nothing_new_writes_no_event(svc, engine):
    name = new_role_name()
    svc.create_role(name=name, permissions=["users:read"], description="same")
    svc.update_role(name, permissions=["users:read"], description="same")
    assert events(engine, "role.updated") == []


def test_update_role_needs_something_to_change(svc):
    name = new_role_name()
    svc.create_role(name=name)
    with pytest.raises(Invalid) as info:
        svc.update_role(name)
    assert "_schema" in info.value.details


def test_unknown_roles_are_not_found(svc, user):
    ghost = new_role_name("ghost")
    for attempt in (lambda: svc.get_role(ghost), lambda: svc.delete_role(ghost),
                    lambda: svc.update_role(ghost, description="x"),
                    lambda: svc.grant(ghost, "users:read"),
                    lambda: svc.revoke(ghost, "users:read"),
                    lambda: svc.assign_role(user(), ghost),
                    lambda: svc.unassign_role(user(), ghost)):
        with pytest.raises(NotFound) as info:
            attempt()
        assert info.value.details == {"role": ghost}


def test_including_an_unknown_role_is_invalid(svc):
    with pytest.raises(Invalid) as info:
        svc.create_role(name=new_role_name(), includes=["user", "no-such-role"])
    assert info.value.details == {"includes": ["no role named no-such-role"]}


def test_grant_and_revoke_are_idempotent(svc, engine):
    name = new_role_name()
    svc.create_role(name=name)
    assert svc.grant(name, ["users:read", "audit:read"])["permissions"] == \
        ["audit:read", "users:read"]
    assert svc.grant(name, "users:read")["permissions"] == ["audit:read", "users:read"]
    assert svc.revoke(name, "audit:read")["permissions"] == ["users:read"]
    assert svc.revoke(name, "audit:read")["permissions"] == ["users:read"]
    assert len(events(engine, "role.updated")) == 2


@pytest.mark.parametrize("permissions, field", [
    ([], "permissions"), (None, "permissions"), ("users", "permissions"),
    (["*:re*"], "permissions"),
])
def test_grant_validates_its_input(svc, permissions, field):
    name = new_role_name()
    svc.create_role(name=name)
    with pytest.raises(Invalid) as info:
        svc.grant(name, permissions)
    assert field in info.value.details
    assert svc.get_role(name)["permissions"] == []


# -- inclusion and cycles ---------------------------------------------------------------------

def test_inclusion_chains_give_every_permission_down_the_chain(svc, user):
    viewer, editor, manager = (new_role_name(n) for n in ("viewer", "editor", "manager"))
    svc.create_role(name=viewer, permissions=["users:read"])
    svc.create_role(name=editor, permissions=["users:write"], includes=[viewer])
    svc.create_role(name=manager, permissions=["roles:write"], includes=[editor])
    holder = user()
    svc.assign_role(holder, manager)
    assert svc.permissions_of(holder) == ["roles:write", "users:read", "users:write"]
    assert svc.get_role(manager)["effective_permissions"] == \
        ["roles:write", "users:read", "users:write"]
    # a change at the bottom of the chain reaches the holder at the top
    svc.grant(viewer, "audit:read")
    assert svc.check(holder, "audit:read") is True


def test_a_change_down_a_chain_names_every_affected_user(svc, engine, user):
    base, middle, top = (new_role_name(n) for n in ("base", "middle", "top"))
    svc.create_role(name=base, permissions=["a:read"])
    svc.create_role(name=middle, includes=[base])
    svc.create_role(name=top, includes=[middle])
    bystander_role = new_role_name("other")
    svc.create_role(name=bystander_role, permissions=["b:read"])
    holders = sorted([user(), user(), user()])
    for holder, role in zip(holders, (base, middle, top), strict=True):
        svc.assign_role(holder, role)
    bystander = user()
    svc.assign_role(bystander, bystander_role)
    svc.grant(base, "a:write")
    event = events(engine, "role.updated")[-1]
    assert event["data"]["affected_users"] == holders
    assert event["data"]["affected_roles"] == sorted([base, middle, top])


@pytest.mark.parametrize("chain_length", [1, 2, 4])
def test_a_cycle_is_refused_with_the_path_it_would_take(svc, engine, chain_length):
    names = [new_role_name(f"r{i}") for i in range(chain_length)]
    svc.create_role(name=names[0])
    for previous, name in zip(names, names[1:], strict=False):
        svc.create_role(name=name, includes=[previous])
    before = len(events(engine))
    with pytest.raises(Invalid) as info:
        svc.update_role(names[0], includes=[names[-1]])
    path = " -> ".join([names[0], *reversed(names)])
    assert info.value.details == {"includes": [f"would make a cycle: {path}"]}
    assert "cycle" in info.value.message and names[0] in info.value.message
    assert svc.get_role(names[0])["includes"] == []
    assert len(events(engine)) == before


def test_a_role_cannot_include_itself(svc):
    name = new_role_name()
    with pytest.raises(Invalid) as info:
        svc.create_role(name=name, includes=[name])
    assert "cycle" in info.value.details["includes"][0]


def test_removing_an_inclusion_takes_its_permissions_away(svc, user):
    inner, outer = new_role_name("inner"), new_role_name("outer")
    svc.create_role(name=inner, permissions=["x:read"])
    svc.create_role(name=outer, includes=[inner])
    holder = user()
    svc.assign_role(holder, outer)
    assert svc.check(holder, "x:read")
    svc.update_role(outer, includes=[])
    assert not svc.check(holder, "x:read")


# -- assignments, scopes, checks --------------------------------------------------------------

def test_assign_role_grants_and_announces_it(svc, engine, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["users:*"])
    holder = user()
    assignment = svc.assign_role(holder, name)
    assert assignment["created"] is True and assignment["scope"] is None
    assert assignment["assigned_by"] == "tester"
    assert svc.check(holder, "users:delete") is True
    assert svc.check(holder, "audit:read") is False
    [event] = events(engine, "role.assigned")
    assert event["subject"] == holder
    assert {k: event["data"][k] for k in ("user_id", "role", "scope", "affected_users")} == \
        {"user_id": holder, "role": name, "scope": None, "affected_users": [holder]}


def test_assigning_twice_changes_nothing(svc, engine, user):
    holder = user()
    svc.assign_role(holder, "user")
    again = svc.assign_role(holder, "user")
    assert again["created"] is False
    assert len(svc.roles_of(holder)) == 1 and len(events(engine, "role.assigned")) == 1


def test_scoped_assignment_grants_only_within_its_scope(svc, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["invoices:*"])
    holder = user()
    svc.assign_role(holder, "user")
    svc.assign_role(holder, name, scope="billing")
    assert svc.check(holder, "invoices:refund", scope="billing") is True
    assert svc.check(holder, "invoices:refund") is False
    assert svc.check(holder, "invoices:refund", scope="blog") is False
    # global grants apply in every scope
    assert svc.check(holder, "profile:read", scope="billing") is True
    assert svc.permissions_of(holder) == ["authz:check", "password:write", "profile:read",
                                          "profile:write"]
    assert svc.permissions_of(holder, scope="billing") == [
        "authz:check", "invoices:*", "password:write", "profile:read", "profile:write"]
    assert svc.effective_permissions(holder) == {
        "user_id": holder,
        "global": ["authz:check", "password:write", "profile:read", "profile:write"],
        "scopes": {"billing": ["invoices:*"]},
    }


def test_the_same_role_global_and_scoped_are_two_assignments(svc, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["posts:write"])
    holder = user()
    svc.assign_role(holder, name, scope="blog")
    svc.assign_role(holder, name)
    assert [(a["role"], a["scope"]) for a in svc.roles_of(holder)] == \
        [(name, None), (name, "blog")]
    assert svc.unassign_role(holder, name)["removed"] is True
    assert svc.check(holder, "posts:write") is False
    assert svc.check(holder, "posts:write", scope="blog") is True


def test_unassign_role_takes_the_permissions_away_and_announces_it(svc, engine, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["users:read"])
    holder = user()
    svc.assign_role(holder, name, scope="billing")
    result = svc.unassign_role(holder, name, scope="billing")
    assert result == {"user_id": holder, "role": name, "scope": "billing", "removed": True}
    assert svc.check(holder, "users:read", scope="billing") is False
    [event] = events(engine, "role.unassigned")
    assert event["data"]["scope"] == "billing" and event["data"]["affected_users"] == [holder]
    # again: nothing to remove, nothing announced
    assert svc.unassign_role(holder, name, scope="billing")["removed"] is False
    assert len(events(engine, "role.unassigned")) == 1


def test_wildcard_grants_through_check(svc, user):
    reader, everything = new_role_name("reader"), new_role_name("all")
    svc.create_role(name=reader, permissions=["*:read"])
    svc.create_role(name=everything, permissions=["*"])
    r, a = user(), user()
    svc.assign_role(r, reader)
    svc.assign_role(a, everything)
    assert svc.check(r, "audit:read") and svc.check(r, "users:read")
    assert not svc.check(r, "users:write")
    assert svc.check(a, "anything:goes") and svc.check(a, "users:*") and svc.check(a, "*")
    assert not svc.check(r, "*")


def test_unknown_users_have_no_roles_and_no_permissions(svc):
    stranger = new_user_id()
    assert svc.roles_of(stranger) == []
    assert svc.permissions_of(stranger) == []
    assert svc.check(stranger, "profile:read") is False
    assert svc.effective_permissions(stranger) == {"user_id": stranger, "global": [],
                                                   "scopes": {}}


def test_assigning_to_a_user_identity_does_not_know_is_not_found(svc, engine):
    with pytest.raises(NotFound):
        svc.assign_role(new_user_id(), "user")
    assert events(engine) == []


def test_assigning_while_identity_is_down_is_unavailable(svc, identity, user):
    holder = user()
    identity.failure = UnknownService("identity")
    with pytest.raises(Unavailable) as info:
        svc.assign_role(holder, "user")
    assert "identity is not running" in info.value.message
    assert svc.roles_of(holder) == []


def test_assigning_while_identity_hangs_times_out_as_unavailable(svc, identity, user):
    holder = user()
    identity.get_user = lambda user_id: eventlet.sleep(5)
    with pytest.raises(Unavailable) as info:
        svc.assign_role(holder, "user")
    assert "did not answer within 0.5s" in info.value.message


@pytest.mark.parametrize("call, field", [
    (lambda s: s.check("not-a-uuid", "users:read"), "user_id"),
    (lambda s: s.check(None, "users:read"), "user_id"),
    (lambda s: s.check(new_user_id(), "users"), "permission"),
    (lambda s: s.check(new_user_id(), "users:read", scope="Bad Scope"), "scope"),
    (lambda s: s.check(new_user_id(), None), "permission"),
    (lambda s: s.permissions_of("12345"), "user_id"),
    (lambda s: s.permissions_of(new_user_id(), scope=""), "scope"),
    (lambda s: s.roles_of(42), "user_id"),
    (lambda s: s.assign_role("nope", "user"), "user_id"),
    (lambda s: s.assign_role(new_user_id(), "User"), "role"),
    (lambda s: s.assign_role(new_user_id(), "user", scope="x"), "scope"),
    (lambda s: s.unassign_role(new_user_id(), "user", scope=7), "scope"),
    (lambda s: s.delete_role("Bad!"), "role"),
])
def test_bad_ids_permissions_and_scopes_are_invalid(svc, call, field):
    with pytest.raises(Invalid) as info:
        call(svc)
    assert field in info.value.details


def test_upper_case_user_ids_are_the_same_user(svc, user):
    holder = user()
    svc.assign_role(holder, "user")
    assert svc.check(holder.upper(), "profile:read") is True


# -- deleting roles ---------------------------------------------------------------------------

def test_deleting_an_assigned_role_removes_its_assignments_and_permissions(svc, engine, user):
    doomed, keeper = new_role_name("doomed"), new_role_name("keeper")
    svc.create_role(name=doomed, permissions=["users:write"])
    svc.create_role(name=keeper, permissions=["users:read"], includes=[doomed])
    direct, indirect = user(), user()
    svc.assign_role(direct, doomed, scope="billing")
    svc.assign_role(indirect, keeper)
    result = svc.delete_role(doomed)
    assert result["name"] == doomed and result["affected_users"] == sorted([direct, indirect])
    assert svc.roles_of(direct) == []
    assert svc.check(direct, "users:write", scope="billing") is False
    assert svc.check(indirect, "users:write") is False
    assert svc.check(indirect, "users:read") is True
    assert svc.get_role(keeper)["includes"] == []
    [event] = events(engine, "role.deleted")
    assert event["subject"] == doomed
    assert event["data"] == {"role": doomed, "affected_users": sorted([direct, indirect]),
                             "affected_roles": sorted([doomed, keeper])}
    with pytest.raises(NotFound):
        svc.get_role(doomed)


def test_a_deleted_role_name_can_be_used_again_without_old_holders(svc, user):
    name = new_role_name()
    svc.create_role(name=name, permissions=["users:write"])
    holder = user()
    svc.assign_role(holder, name)
    svc.delete_role(name)
    svc.create_role(name=name, permissions=["users:write"])
    assert svc.check(holder, "users:write") is False


# -- the last administrator -------------------------------------------------------------------

def test_the_last_global_admin_cannot_be_unassigned(svc, user, engine):
    first, second = user(), user()
    svc.assign_role(first, "admin")
    with pytest.raises(Conflict) as info:
        svc.unassign_role(first, "admin")
    assert "last active administrator" in info.value.message
    assert svc.check(first, "anything:at-all")
    svc.assign_role(second, "admin")
    assert svc.unassign_role(first, "admin")["removed"] is True
    assert not svc.check(first, "anything:at-all")
    assert len(events(engine, "role.unassigned")) == 1


@pytest.mark.parametrize("gone", ["disabled", "deleted"])
def test_a_disabled_or_deleted_admin_does_not_count_as_the_one_left(svc, user, identity,
                                                                     engine, gone):
    active, other = user(), user()
    svc.assign_role(active, "admin")
    svc.assign_role(other, "admin")
    if gone == "disabled":
        identity.disabled.add(other)
    else:
        identity.known.discard(other)  # identity answers NotFound for a deleted user
    with pytest.raises(Conflict) as info:
        svc.unassign_role(active, "admin")
    assert info.value.details == {"role": ["last active global admin"]}
    assert svc.check(active, "anything:at-all")
    assert events(engine, "role.unassigned") == []


def test_taking_admin_away_waits_for_identity_when_it_cannot_say_who_is_active(svc, user,
                                                                              identity, engine):
    first, second = user(), user()
    svc.assign_role(first, "admin")
    svc.assign_role(second, "admin")
    identity.failure = UnknownService("identity")
    with pytest.raises(Unavailable):
        svc.unassign_role(first, "admin")
    assert svc.check(first, "anything:at-all")
    assert events(engine, "role.unassigned") == []


def test_scoped_admin_and_other_roles_are_not_guarded_and_ask_identity_nothing(svc, user,
                                                                              identity):
    holder = user()
    svc.assign_role(holder, "admin", scope="billing")
    identity.failure = UnknownService("identity")
    assert svc.unassign_role(holder, "admin", scope="billing")["removed"] is True


def test_global_admins_lists_only_global_admin_holders(svc, user):
    first, second, scoped, plain = user(), user(), user(), user()
    for holder in (second, first):
        svc.assign_role(holder, "admin")
    svc.assign_role(scoped, "admin", scope="billing")
    svc.assign_role(plain, "user")
    assert svc.global_admins() == sorted([first, second])


# -- identity's events ------------------------------------------------------------------------

def test_user_created_assigns_the_user_role_once_per_event(authz, engine, identity):
    user_id = new_user_id()
    identity.known.add(user_id)
    event = envelope("user.created", user_id, {"email": "a@example.test", "type": "user"})
    authz().on_user_created(event)
    svc = authz()
    assert [(a["role"], a["scope"]) for a in svc.roles_of(user_id)] == [("user", None)]
    assert svc.check(user_id, "profile:write") is True
    [assigned] = events(engine, "role.assigned")
    assert assigned["data"]["user_id"] == user_id and assigned["data"]["role"] == "user"
    # an operator takes the role away; a redelivery of the old event must not give it back
    authz().unassign_role(user_id, "user")
    authz().on_user_created(event)
    assert authz().roles_of(user_id) == []
    assert len(events(engine, "role.assigned")) == 1


def test_user_deleted_removes_every_assignment_once_per_event(authz, engine, user):
    svc = authz()
    name = new_role_name()
    svc.create_role(name=name, permissions=["posts:write"])
    holder = user()
    svc.assign_role(holder, "user")
    svc.assign_role(holder, name, scope="blog")
    event = envelope("user.deleted", holder)
    authz().on_user_deleted(event)
    authz().on_user_deleted(event)
    svc = authz()
    assert svc.roles_of(holder) == []
    assert svc.permissions_of(holder, scope="blog") == []
    unassigned = events(engine, "role.unassigned")
    assert sorted((e["data"]["role"], e["data"]["scope"]) for e in unassigned) == \
        sorted([("user", None), (name, "blog")])
    assert all(e["data"]["reason"] == "user.deleted" for e in unassigned)


def test_a_deleted_user_gets_no_role_again(authz, engine, identity, user):
    holder = user()
    authz().on_user_deleted(envelope("user.deleted", holder))
    # a late user.created (handled after the deletion) assigns nothing
    authz().on_user_created(envelope("user.created", holder))
    # nor does a stale assignment request whose identity check passed
    with pytest.raises(NotFound) as info:
        authz().assign_role(holder, "user")
    assert "was deleted" in info.value.message
    assert authz().roles_of(holder) == []
    assert events(engine, "role.assigned") == []


@pytest.mark.parametrize("payload", [
    {"event_id": "e-1", "subject": None},
    {"event_id": "e-2", "subject": "not-a-uuid"},
    {"event_id": "e-3"},
    "not an envelope",
])
def test_identity_events_without_a_user_id_are_ignored(authz, engine, payload):
    authz().on_user_created(payload)
    authz().on_user_deleted(payload)
    assert events(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM assignments")).scalar() == 0
