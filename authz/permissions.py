"""Roles and their permissions: the role graph (inclusions, cycles, effective sets), pure
functions with no nameko and no database.

Permission strings and their evaluation (``problem``, ``parse``, ``allows``, ``Grants``...)
are a contract the gateway shares, so they live in ``shared.contracts`` and are re-exported
here for authz's own modules.

Roles and scopes
    A role holds permissions and may include other roles; a user's effective permissions in a
    scope are those of every role assigned to them in that scope, with inclusions followed.
    Global assignments apply everywhere; an assignment scoped to a service applies only when
    that scope is asked for.
"""

from shared.contracts import (
    WILDCARD,
    Grants,
    InvalidPermission,
    allows,
    covers,
    is_valid,
    normalise,
    parse,
    problem,
    simplify,
)

__all__ = [
    "WILDCARD",
    "InvalidPermission",
    "problem",
    "is_valid",
    "parse",
    "normalise",
    "covers",
    "allows",
    "simplify",
    "expand_roles",
    "including_roles",
    "effective",
    "find_cycle",
    "Grants",
]


def expand_roles(includes, roles):
    """``roles`` and every role they include, directly or through others (cycle-safe)."""
    seen = set()
    stack = list(roles)
    while stack:
        role = stack.pop()
        if role in seen:
            continue
        seen.add(role)
        stack.extend(includes.get(role, ()))
    return seen


def including_roles(includes, role):
    """Every role that includes ``role``, directly or through others (not ``role`` itself,
    unless a cycle leads back to it)."""
    parents = {}
    for parent, children in includes.items():
        for child in children:
            parents.setdefault(child, set()).add(parent)
    found = set()
    stack = list(parents.get(role, ()))
    while stack:
        current = stack.pop()
        if current in found:
            continue
        found.add(current)
        stack.extend(parents.get(current, ()))
    return found


def effective(grants, includes, roles):
    """The simplified permissions of ``roles`` with inclusions followed.

    ``grants`` maps a role to its own permissions, ``includes`` maps a role to the roles it
    includes; roles missing from either simply contribute nothing.
    """
    permissions = set()
    for role in expand_roles(includes, roles):
        permissions.update(grants.get(role, ()))
    return simplify(permissions)


def find_cycle(includes, role, new_includes):
    """The cycle that giving ``role`` the inclusions ``new_includes`` would create, as a path
    ``[role, ..., role]``, or None when there would be none."""
    graph = dict(includes)
    graph[role] = list(new_includes)
    # depth-first search from role's children for a way back to role, remembering the path
    path = [role]
    visited = set()

    def walk(current):
        for child in sorted(graph.get(current, ())):
            if child == role:
                return path + [child]
            if child in visited:
                continue
            visited.add(child)
            path.append(child)
            found = walk(child)
            if found:
                return found
            path.pop()
        return None

    return walk(role)
