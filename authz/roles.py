"""Roles and their permissions: plain functions over a unit of work, callable without a
container. Every change recomputes the effective permissions of the users it touches and
queues its event in the same transaction."""

import sqlalchemy as sa

from authz import effective, permissions
from authz.models import ADMIN, Assignment, Role, RoleInclude, RolePermission
from authz.schemas import RoleSchema
from shared.errors import Conflict, Forbidden, Invalid, NotFound

_role_schema = RoleSchema()


def to_dict(role, graph):
    return _role_schema.dump({
        "name": role.name,
        "description": role.description,
        "builtin": role.builtin,
        "permissions": sorted(graph.grants.get(role.name, ())),
        "includes": sorted(graph.includes.get(role.name, ())),
        "effective_permissions": sorted(graph.effective([role.name])),
        "created_at": role.created_at,
        "updated_at": role.updated_at,
    })


def not_found(name):
    return NotFound(f"role {name} not found", {"role": name})


def get(uow, name):
    role = uow.session.get(Role, name)
    if role is None:
        raise not_found(name)
    return role


def describe(uow, name):
    return to_dict(get(uow, name), effective.load_graph(uow.session))


def list_all(uow):
    graph = effective.load_graph(uow.session)
    roles = uow.session.scalars(sa.select(Role).order_by(Role.name)).all()
    return [to_dict(role, graph) for role in roles]


def _require_known(graph, includes):
    unknown = sorted(set(includes) - graph.names)
    if unknown:
        raise Invalid(f"unknown role(s) to include: {', '.join(unknown)}",
                      {"includes": [f"no role named {name}" for name in unknown]})


def _refuse_cycle(graph, name, includes):
    cycle = permissions.find_cycle(graph.includes, name, includes)
    if cycle:
        path = " -> ".join(cycle)
        raise Invalid(f"role {name} cannot include {cycle[1]}: that would make a cycle "
                      f"({path})", {"includes": [f"would make a cycle: {path}"]})


def create(uow, data):
    session = uow.session
    effective.lock_roles(session)
    name = data["name"]
    if session.get(Role, name) is not None:
        raise Conflict(f"a role named {name} already exists", {"name": ["already taken"]})
    graph = effective.load_graph(session)
    _refuse_cycle(graph, name, data["includes"])
    _require_known(graph, data["includes"])
    stamp = effective.now()
    role = Role(name=name, description=data["description"], builtin=False,
                created_at=stamp, updated_at=stamp)
    session.add(role)
    session.flush()
    session.add_all([RolePermission(role=name, permission=p) for p in data["permissions"]])
    session.add_all([RoleInclude(role=name, included=r) for r in data["includes"]])
    graph.grants[name], graph.includes[name] = set(data["permissions"]), set(data["includes"])
    uow.emit("role.created", name, {
        "role": name, "description": role.description,
        "permissions": sorted(data["permissions"]), "includes": sorted(data["includes"]),
        "affected_users": [], "affected_roles": [name],
    })
    uow.commit()
    return to_dict(role, graph)


def _changeable(uow, name):
    role = get(uow, name)
    if role.name == ADMIN:
        raise Forbidden("the built-in role admin holds every permission and cannot be changed",
                        {"role": name})
    return role


def _diff(old, new):
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new))}


def update(uow, name, changes, grant=(), revoke=()):
    """Apply ``changes`` (description, permissions, includes: each replaces what was there),
    then add the permissions in ``grant`` and remove those in ``revoke``.

    Returns the role; nothing is written, and no event is sent, when nothing changes.
    """
    session = uow.session
    effective.lock_roles(session)
    role = _changeable(uow, name)
    graph = effective.load_graph(session)
    applied = {}
    if "description" in changes and changes["description"] != role.description:
        role.description = changes["description"]
        applied["description"] = role.description
    old_permissions = set(graph.grants[name])
    new_permissions = (set(changes.get("permissions", old_permissions)) | set(grant)) \
        - set(revoke)
    if new_permissions != old_permissions:
        applied["permissions"] = _diff(old_permissions, new_permissions)
    old_includes = set(graph.includes[name])
    new_includes = set(changes.get("includes", old_includes))
    if new_includes != old_includes:
        _refuse_cycle(graph, name, new_includes)
        _require_known(graph, new_includes)
        applied["includes"] = _diff(old_includes, new_includes)
    if not applied:
        return to_dict(role, graph)
    _write_changes(session, name, applied)
    graph.grants[name], graph.includes[name] = new_permissions, new_includes
    role.updated_at = effective.now()
    affected_roles = sorted({name} | graph.including(name))
    users = []
    if "permissions" in applied or "includes" in applied:
        users = effective.holders(session, affected_roles)
        effective.recompute(session, users, graph)
    uow.emit("role.updated", name, {
        "role": name, "changes": applied,
        "permissions": sorted(new_permissions), "includes": sorted(new_includes),
        "affected_users": users, "affected_roles": affected_roles,
    })
    uow.commit()
    return to_dict(role, graph)


def _write_changes(session, name, applied):
    if "permissions" in applied:
        removed, added = applied["permissions"]["removed"], applied["permissions"]["added"]
        if removed:
            session.execute(sa.delete(RolePermission).where(
                RolePermission.role == name, RolePermission.permission.in_(removed)))
        session.add_all([RolePermission(role=name, permission=p) for p in added])
    if "includes" in applied:
        removed, added = applied["includes"]["removed"], applied["includes"]["added"]
        if removed:
            session.execute(sa.delete(RoleInclude).where(
                RoleInclude.role == name, RoleInclude.included.in_(removed)))
        session.add_all([RoleInclude(role=name, included=r) for r in added])
    session.flush()


def grant(uow, name, granted):
    return update(uow, name, {}, grant=granted)


def revoke(uow, name, revoked):
    return update(uow, name, {}, revoke=revoked)


def delete(uow, name):
    """Delete a role, its assignments and its place in other roles; returns what was lost."""
    session = uow.session
    effective.lock_roles(session)
    role = get(uow, name)
    if role.builtin:
        raise Forbidden(f"the built-in role {name} cannot be deleted", {"role": name})
    graph = effective.load_graph(session)
    affected_roles = sorted({name} | graph.including(name))
    users = effective.holders(session, affected_roles)
    gone = to_dict(role, graph)
    session.execute(sa.delete(Assignment).where(Assignment.role == name))
    session.execute(sa.delete(RoleInclude).where(
        sa.or_(RoleInclude.role == name, RoleInclude.included == name)))
    session.execute(sa.delete(RolePermission).where(RolePermission.role == name))
    session.delete(role)
    session.flush()
    del graph.grants[name], graph.includes[name]
    for included in graph.includes.values():
        included.discard(name)
    effective.recompute(session, users, graph)
    uow.emit("role.deleted", name, {"role": name, "affected_users": users,
                                    "affected_roles": affected_roles})
    uow.commit()
    return {**gone, "affected_users": users}
