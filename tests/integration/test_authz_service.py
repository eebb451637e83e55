import eventlet
import pytest
import sqlalchemy as sa

from authz.service import AuthzService
from identity.service import IdentityService
from shared.db import make_engine
from shared.errors import Conflict, Invalid, NotFound, Unavailable
from tests.helpers import new_user
from tests.support.authz_helpers import (
    envelope,
    new_role_name,
    new_user_id,
    outbox_events,
    publish_identity_event,
    wait_until,
)
from tests.support.events import EventTap

ADMIN_CONTEXT = {"request_id": "req-authz-int", "actor_type": "user", "actor_id": "operator-1"}


@pytest.fixture
def platform(start_service):
    start_service(IdentityService)
    return start_service(AuthzService)


@pytest.fixture
def authz_tap(amqp_uri):
    tap = EventTap(amqp_uri, "authz")
    yield tap
    tap.close()


@pytest.fixture
def authz_db(pg_uri):
    engine = make_engine(pg_uri, "authz", pool_size=1)
    yield engine
    engine.dispose()


def call(rpc, method, *args, **kwargs):
    return rpc.call("authz", method, args=args, kwargs=kwargs, context=ADMIN_CONTEXT)


def test_roles_assignments_and_checks_over_rpc(platform, rpc, authz_tap):
    name = new_role_name("support")
    role = call(rpc, "create_role", name=name, permissions=["users:read", "tickets:*"])
    assert role["permissions"] == ["tickets:*", "users:read"]
    user = new_user(rpc)
    assert call(rpc, "assign_role", user["id"], name, scope="helpdesk")["created"] is True
    assert call(rpc, "check", user["id"], "tickets:close", scope="helpdesk") is True
    assert call(rpc, "check", user["id"], "tickets:close") is False
    assert call(rpc, "check", user["id"], "users:write", "helpdesk") is False
    assert "tickets:*" in call(rpc, "permissions_of", user["id"], scope="helpdesk")
    assert (name, "helpdesk") in {(a["role"], a["scope"])
                                  for a in call(rpc, "roles_of", user["id"])}
    assert name in {r["name"] for r in call(rpc, "list_roles")}

    [created] = authz_tap.wait_for(1, event_type="role.created")
    assert created["subject"] == name and created["source"] == "authz"
    assert created["request_id"] == "req-authz-int"
    assert created["actor"] == {"id": "operator-1", "type": "user"}
    assigned = [e for e in authz_tap.wait_for(2, event_type="role.assigned")
                if e["data"]["role"] == name]
    assert assigned[0]["data"] == {"user_id": user["id"], "role": name, "scope": "helpdesk",
                                   "affected_users": [user["id"]]}


def test_typed_errors_cross_rpc(platform, rpc):
    with pytest.raises(Invalid) as info:
        call(rpc, "check", new_user_id(), "not a permission")
    assert "permission" in info.value.details
    with pytest.raises(NotFound):
        call(rpc, "get_role", new_role_name("ghost"))
    with pytest.raises(NotFound):  # identity's own answer: no such user
        call(rpc, "assign_role", new_user_id(), "user")
    name = new_role_name()
    call(rpc, "create_role", name=name)
    with pytest.raises(Conflict):
        call(rpc, "create_role", name=name)


def test_assigning_without_identity_running_is_unavailable(start_service, rpc):
    start_service(AuthzService)
    with pytest.raises(Unavailable) as info:
        call(rpc, "assign_role", new_user_id(), "user")
    assert "identity is not running" in info.value.message
    # reads and checks do not need identity
    assert call(rpc, "check", new_user_id(), "profile:read") is False


def test_a_new_user_gets_the_user_role_and_a_deleted_one_loses_every_role(platform, rpc,
                                                                          authz_tap):
    user = new_user(rpc)
    roles = wait_until(lambda: call(rpc, "roles_of", user["id"]))
    assert [(r["role"], r["scope"]) for r in roles] == [("user", None)]
    assert call(rpc, "check", user["id"], "profile:read") is True
    name = new_role_name()
    call(rpc, "create_role", name=name, permissions=["posts:write"])
    call(rpc, "assign_role", user["id"], name, scope="blog")

    rpc.call("identity", "delete_user", [user["id"]])
    assert wait_until(lambda: call(rpc, "roles_of", user["id"]) == [])
    assert call(rpc, "check", user["id"], "profile:read") is False
    assert call(rpc, "permissions_of", user["id"], scope="blog") == []
    unassigned = authz_tap.wait_for(2, event_type="role.unassigned")
    assert sorted((e["data"]["role"], e["data"]["scope"]) for e in unassigned
                  if e["subject"] == user["id"]) == sorted([("user", None), (name, "blog")])
    with pytest.raises(NotFound):
        call(rpc, "assign_role", user["id"], "user")


def handled_after(amqp_uri, rpc):
    """Publish a marker event and wait until it is handled, so the events published before
    it have been taken too."""
    marker = new_user_id()
    publish_identity_event(amqp_uri, "user.created", envelope("user.created", marker))
    assert wait_until(lambda: call(rpc, "roles_of", marker))


def test_identity_events_are_handled_once_per_event_id(start_service, rpc, amqp_uri,
                                                       authz_db):
    start_service(AuthzService)
    user_id = new_user_id()
    created = envelope("user.created", user_id)
    for _ in range(3):
        publish_identity_event(amqp_uri, "user.created", created)
    assert wait_until(lambda: call(rpc, "roles_of", user_id))

    # an operator takes the role away; the old event redelivered must not give it back
    call(rpc, "unassign_role", user_id, "user")
    publish_identity_event(amqp_uri, "user.created", created)
    handled_after(amqp_uri, rpc)
    assert call(rpc, "roles_of", user_id) == []

    deleted = envelope("user.deleted", user_id)
    for _ in range(2):
        publish_identity_event(amqp_uri, "user.deleted", deleted)
    handled_after(amqp_uri, rpc)
    assert call(rpc, "roles_of", user_id) == []
    mine = [e for e in outbox_events(authz_db) if e["subject"] == user_id]
    assert [e["event_type"] for e in mine] == ["role.assigned", "role.unassigned"]
    assert "reason" not in mine[1]["data"]  # the operator's, not the deletion's (nothing left)
    with authz_db.connect() as conn:
        processed = conn.execute(sa.text(
            "SELECT count(*) FROM authz.processed_events WHERE event_id IN (:a, :b)"),
            {"a": created["event_id"], "b": deleted["event_id"]}).scalar()
    assert processed == 2


def test_role_events_name_exactly_the_users_to_invalidate(platform, rpc, authz_tap):
    inner, outer, other = (new_role_name(n) for n in ("inner", "outer", "other"))
    call(rpc, "create_role", name=inner, permissions=["reports:read"])
    call(rpc, "create_role", name=outer, includes=[inner])
    call(rpc, "create_role", name=other, permissions=["x:read"])
    direct, indirect, bystander = (new_user(rpc)["id"] for _ in range(3))
    call(rpc, "assign_role", direct, inner)
    call(rpc, "assign_role", indirect, outer, scope="reports")
    call(rpc, "assign_role", bystander, other)

    call(rpc, "grant", inner, "reports:export")
    assert call(rpc, "check", indirect, "reports:export", scope="reports") is True
    updated = [e for e in authz_tap.wait_for(1, event_type="role.updated")
               if e["subject"] == inner]
    assert updated[0]["data"]["affected_users"] == sorted([direct, indirect])
    assert updated[0]["data"]["changes"] == {
        "permissions": {"added": ["reports:export"], "removed": []}}

    call(rpc, "delete_role", inner)
    [deleted] = [e for e in authz_tap.wait_for(1, event_type="role.deleted")
                 if e["subject"] == inner]
    assert deleted["data"]["affected_users"] == sorted([direct, indirect])
    assert deleted["data"]["affected_roles"] == sorted([inner, outer])
    assert call(rpc, "check", indirect, "reports:read", scope="reports") is False
    assert all(r["role"] != inner for r in call(rpc, "roles_of", direct))


def test_concurrent_grants_to_one_role_are_all_kept(platform, rpc):
    name = new_role_name()
    call(rpc, "create_role", name=name)
    holder = new_user(rpc)["id"]
    call(rpc, "assign_role", holder, name)
    wanted = [f"res{i}:read" for i in range(12)]
    pool = eventlet.GreenPool(12)
    list(pool.imap(lambda perm: call(rpc, "grant", name, perm), wanted))
    assert call(rpc, "get_role", name)["permissions"] == sorted(wanted)
    assert all(call(rpc, "check", holder, perm) for perm in wanted)


def test_assignments_racing_a_role_change_end_with_the_new_permissions(platform, rpc):
    name = new_role_name()
    call(rpc, "create_role", name=name, permissions=["old:read"])
    users = [new_user(rpc)["id"] for _ in range(6)]
    pool = eventlet.GreenPool(8)
    jobs = [pool.spawn(call, rpc, "assign_role", u, name) for u in users]
    jobs.append(pool.spawn(call, rpc, "update_role", name, permissions=["new:read"]))
    for job in jobs:
        job.wait()
    for user_id in users:
        assert call(rpc, "check", user_id, "new:read") is True
        assert call(rpc, "check", user_id, "old:read") is False


def test_two_admins_removing_each_other_at_once_leave_one(start_service, rpc, fresh_pg_uri):
    start_service(IdentityService, db_uri=fresh_pg_uri)
    start_service(AuthzService, db_uri=fresh_pg_uri)
    first, second = new_user(rpc)["id"], new_user(rpc)["id"]
    call(rpc, "assign_role", first, "admin")
    call(rpc, "assign_role", second, "admin")
    pool = eventlet.GreenPool(2)

    def remove(user_id):
        try:
            return call(rpc, "unassign_role", user_id, "admin")["removed"]
        except Conflict:
            return "refused"

    outcomes = sorted(map(str, pool.imap(remove, [first, second])))
    assert outcomes == ["True", "refused"]
    admins = [u for u in (first, second) if call(rpc, "check", u, "*")]
    assert len(admins) == 1
