"""Effective permissions, materialised: recomputed when roles or assignments change, so a
check reads one or two rows and evaluates them with ``authz.permissions``.

Writers serialise on PostgreSQL advisory locks held until their transaction ends: a change
to roles takes the roles lock exclusively; a change to one user's assignments takes it shared
plus that user's own lock. So a recomputation never works from a role graph or an assignment
list that another transaction is changing at the same moment.
"""

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

from authz import permissions
from authz.models import (
    GLOBAL,
    Assignment,
    EffectivePermissions,
    Role,
    RoleInclude,
    RolePermission,
)

CHUNK = 500


def now():
    return datetime.now(UTC)


def _int32(text):
    value = zlib.crc32(text.encode())
    return value - 2**32 if value >= 2**31 else value


ROLES_LOCK = zlib.crc32(b"plinth:authz:roles")
USERS_LOCK_CLASS = _int32("plinth:authz:user")


def _postgres(session):
    return session.get_bind().dialect.name == "postgresql"


def lock_roles(session):
    """Exclusive right to change roles until the transaction ends (PostgreSQL only: SQLite
    already lets one writer at a time)."""
    if _postgres(session):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROLES_LOCK})


def lock_user(session, user_id):
    """Right to change ``user_id``'s assignments, with roles held steady meanwhile."""
    if _postgres(session):
        session.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": ROLES_LOCK})
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :o)"),
                        {"c": USERS_LOCK_CLASS, "o": _int32(user_id)})


@dataclass
class Graph:
    """Every role's own permissions and inclusions, as ``authz.permissions`` takes them."""

    grants: dict = field(default_factory=dict)
    includes: dict = field(default_factory=dict)

    @property
    def names(self):
        return set(self.grants)

    def effective(self, roles):
        return permissions.effective(self.grants, self.includes, roles)

    def including(self, role):
        return permissions.including_roles(self.includes, role)


def load_graph(session):
    graph = Graph()
    for (name,) in session.execute(sa.select(Role.name)):
        graph.grants[name], graph.includes[name] = set(), set()
    for role, permission in session.execute(sa.select(RolePermission.role,
                                                      RolePermission.permission)):
        graph.grants[role].add(permission)
    for role, included in session.execute(sa.select(RoleInclude.role, RoleInclude.included)):
        graph.includes[role].add(included)
    return graph


def _chunks(items, size=CHUNK):
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def holders(session, roles):
    """Sorted ids of the users assigned any of ``roles`` (in any scope)."""
    users = set()
    for chunk in _chunks(sorted(roles)):
        users.update(session.scalars(
            sa.select(Assignment.user_id).where(Assignment.role.in_(chunk)).distinct()))
    return sorted(users)


def recompute(session, user_ids, graph=None):
    """Rewrite the effective permissions of ``user_ids`` from their current assignments.

    Users sharing the same roles in a scope share one evaluation, so recomputing everyone who
    holds the ``user`` role costs one evaluation plus the writes.
    """
    graph = graph if graph is not None else load_graph(session)
    memo = {}
    stamp = now()
    for chunk in _chunks(sorted(set(user_ids))):
        roles_by_key = {}
        rows = session.execute(sa.select(Assignment.user_id, Assignment.scope, Assignment.role)
                               .where(Assignment.user_id.in_(chunk)))
        for user_id, scope, role in rows:
            roles_by_key.setdefault((user_id, scope), set()).add(role)
        session.execute(sa.delete(EffectivePermissions)
                        .where(EffectivePermissions.user_id.in_(chunk)))
        values = []
        for (user_id, scope), roles in roles_by_key.items():
            key = frozenset(roles)
            if key not in memo:
                memo[key] = sorted(graph.effective(key))
            if memo[key]:
                values.append({"user_id": user_id, "scope": scope, "permissions": memo[key],
                               "updated_at": stamp})
        if values:
            session.execute(sa.insert(EffectivePermissions), values)


def read(session, user_id, scope=None, every_scope=False):
    """``Grants`` of ``user_id``: the global set and ``scope``'s, or every scope's."""
    query = sa.select(EffectivePermissions.scope, EffectivePermissions.permissions) \
        .where(EffectivePermissions.user_id == user_id)
    if not every_scope:
        query = query.where(EffectivePermissions.scope.in_({GLOBAL, scope or GLOBAL}))
    global_, scopes = (), {}
    for row_scope, perms in session.execute(query):
        if row_scope == GLOBAL:
            global_ = perms
        else:
            scopes[row_scope] = perms
    return permissions.Grants(global_, scopes)
