"""Who holds which role, where: plain functions over a unit of work, callable without a
container. Every change recomputes the user's effective permissions and queues its event in
the same transaction."""

import sqlalchemy as sa

from authz import effective
from authz.models import (
    ADMIN,
    GLOBAL,
    USER,
    Assignment,
    DeletedUser,
    EffectivePermissions,
    Role,
)
from shared.context import ACTOR_ID_KEY
from shared.errors import Conflict, NotFound


def _scope_out(scope):
    return None if scope == GLOBAL else scope


def to_dict(assignment):
    return {"user_id": assignment.user_id, "role": assignment.role,
            "scope": _scope_out(assignment.scope),
            "assigned_at": assignment.assigned_at.isoformat(),
            "assigned_by": assignment.assigned_by}


def _event_data(user_id, role, scope, **extra):
    return {"user_id": user_id, "role": role, "scope": scope, "affected_users": [user_id],
            **extra}


def is_deleted(session, user_id):
    return session.get(DeletedUser, user_id) is not None


def _require_role(session, role):
    if session.get(Role, role) is None:
        raise NotFound(f"role {role} not found", {"role": role})


def assign(uow, user_id, role, scope=None):
    """Give ``user_id`` the role, globally (scope None) or in one service's scope.

    Returns ``(assignment, created)``; assigning what the user already holds changes nothing.
    """
    session = uow.session
    effective.lock_user(session, user_id)
    _require_role(session, role)
    if is_deleted(session, user_id):
        raise NotFound(f"user {user_id} was deleted", {"user_id": user_id})
    key = (user_id, role, scope or GLOBAL)
    existing = session.get(Assignment, key)
    if existing is not None:
        return to_dict(existing), False
    assignment = Assignment(user_id=user_id, role=role, scope=scope or GLOBAL,
                            assigned_at=effective.now(),
                            assigned_by=_actor_id(uow))
    session.add(assignment)
    session.flush()
    effective.recompute(session, [user_id])
    uow.emit("role.assigned", user_id, _event_data(user_id, role, scope))
    uow.commit()
    return to_dict(assignment), True


def _actor_id(uow):
    actor_id = uow.context_data.get(ACTOR_ID_KEY)
    return str(actor_id)[:64] if actor_id is not None else None


def global_admins(uow):
    """Sorted ids of the users holding ``admin`` globally."""
    return list(uow.session.scalars(
        sa.select(Assignment.user_id).where(Assignment.role == ADMIN, Assignment.scope == GLOBAL)
        .order_by(Assignment.user_id)))


def _another_active_admin(session, user_id, is_active):
    others = session.scalars(
        sa.select(Assignment.user_id).where(
            Assignment.role == ADMIN, Assignment.scope == GLOBAL, Assignment.user_id != user_id)
        .order_by(Assignment.user_id))
    return any(is_active(other) for other in others)


def unassign(uow, user_id, role, scope=None, *, is_active):
    """Take the role from ``user_id`` in that scope; returns whether the user held it.

    The last active global administrator keeps the role: removing it would leave nobody able
    to manage roles (make someone else admin first). ``is_active(user_id)`` says whether
    identity counts that user as active (a disabled or deleted admin administers nothing);
    it raises when identity cannot answer, and then nothing is removed.
    """
    session = uow.session
    effective.lock_user(session, user_id)
    _require_role(session, role)
    assignment = session.get(Assignment, (user_id, role, scope or GLOBAL))
    if assignment is None:
        return False
    if role == ADMIN and not scope:
        # two admins taking the role from each other at once must not both see the other as
        # the one left: lock the admin rows, so the second waits and then counts afresh
        session.execute(sa.select(Assignment.user_id).where(Assignment.role == ADMIN)
                        .with_for_update())
        if not _another_active_admin(session, user_id, is_active):
            raise Conflict("cannot remove the last active administrator; make someone else "
                           "admin first", {"role": ["last active global admin"]})
    session.delete(assignment)
    session.flush()
    effective.recompute(session, [user_id])
    uow.emit("role.unassigned", user_id, _event_data(user_id, role, scope))
    uow.commit()
    return True


def roles_of(uow, user_id):
    rows = uow.session.scalars(sa.select(Assignment).where(Assignment.user_id == user_id)
                               .order_by(Assignment.scope, Assignment.role))
    return [to_dict(row) for row in rows]


def on_user_created(uow, user_id):
    """A new user gets the self-service role ``user`` (not when they are already deleted:
    the deletion may be handled before the creation)."""
    try:
        assignment, _ = assign(uow, user_id, USER)
    except NotFound:
        assignment = None
    uow.commit()
    return assignment


def on_user_deleted(uow, user_id):
    """A deleted user loses every assignment, each announced as role.unassigned."""
    session = uow.session
    effective.lock_user(session, user_id)
    if not is_deleted(session, user_id):
        session.add(DeletedUser(user_id=user_id, deleted_at=effective.now()))
    held = session.scalars(sa.select(Assignment).where(Assignment.user_id == user_id)
                           .order_by(Assignment.scope, Assignment.role)).all()
    for assignment in held:
        session.delete(assignment)
        uow.emit("role.unassigned", user_id,
                 _event_data(user_id, assignment.role, _scope_out(assignment.scope),
                             reason="user.deleted"))
    session.execute(sa.delete(EffectivePermissions)
                    .where(EffectivePermissions.user_id == user_id))
    uow.commit()
    return len(held)
