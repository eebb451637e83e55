"""Permission strings and their evaluation: pure functions, no nameko, no database.

This is the one module of ``authz`` that other packages may import: the gateway evaluates a
user's permissions from its local cache with it, in well under a microsecond per check.

Permission strings
    ``<resource>:<action>``, for example ``users:read``, ``audit:read``,
    ``billing.invoices:refund``. Each segment is lower-case ASCII: a letter, then letters,
    digits, ``_``, ``-`` or ``.`` (at most 64 characters). A segment may instead be the
    wildcard ``*``, as a whole: ``users:*`` (every action on users), ``*:read`` (read
    anything), and ``*`` alone (everything; ``*:*`` means the same and is written ``*``).
    Partial wildcards such as ``users:re*`` are refused.

Evaluation
    A granted pattern covers a requested permission when each of its segments is ``*`` or
    equal to the requested segment. A requested permission may hold wildcards too: asking for
    ``users:*`` is allowed only by a grant covering every action on users (``users:*`` or
    ``*``). ``allows(effective, permission)`` answers that for a set of granted patterns.

Roles and scopes
    A role holds permissions and may include other roles; a user's effective permissions in a
    scope are those of every role assigned to them in that scope, with inclusions followed.
    Global assignments apply everywhere; an assignment scoped to a service applies only when
    that scope is asked for. ``Grants`` holds one user's global and per-scope sets, in the
    shape authz's ``effective_permissions`` RPC returns, and answers ``allows`` for a scope.
"""

import re
from functools import lru_cache

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

WILDCARD = "*"
MAX_SEGMENT = 64
_SEGMENT = re.compile(r"[a-z][a-z0-9_.\-]{0,63}\Z")


class InvalidPermission(ValueError):
    """A string that is not a permission; ``reason`` says what is wrong with it."""

    def __init__(self, permission, reason):
        self.permission = permission
        self.reason = reason
        super().__init__(f"{permission!r} is not a permission: {reason}")


def _segment_problem(name, segment):
    if segment == WILDCARD:
        return None
    if segment == "":
        return f"the {name} is empty"
    if WILDCARD in segment:
        return "a wildcard must be a whole segment (users:* or *), not part of one"
    if len(segment) > MAX_SEGMENT:
        return f"the {name} is longer than {MAX_SEGMENT} characters"
    if not _SEGMENT.match(segment):
        return (f"the {name} {segment!r} must start with a lower-case letter and hold only "
                "lower-case letters, digits, '_', '-' or '.'")
    return None


def problem(permission):
    """Why ``permission`` is not a valid permission string, or None when it is."""
    if not isinstance(permission, str):
        return "must be a string"
    if permission == WILDCARD:
        return None
    if permission.count(":") != 1:
        return "must be <resource>:<action> (exactly one ':') or *"
    resource, action = permission.split(":")
    return _segment_problem("resource", resource) or _segment_problem("action", action)


def is_valid(permission):
    return problem(permission) is None


@lru_cache(maxsize=8192)
def parse(permission):
    """``(resource, action)`` of a permission (``*`` is ``("*", "*")``); raises
    ``InvalidPermission`` for anything else."""
    reason = problem(permission)
    if reason is not None:
        raise InvalidPermission(permission, reason)
    if permission == WILDCARD:
        return WILDCARD, WILDCARD
    resource, action = permission.split(":")
    return resource, action


def _join(resource, action):
    return WILDCARD if resource == action == WILDCARD else f"{resource}:{action}"


def normalise(permission):
    """The canonical spelling of a valid permission (``*:*`` becomes ``*``)."""
    return _join(*parse(permission))


@lru_cache(maxsize=8192)
def _covering(permission):
    """Every canonical grant that covers ``permission`` (at most four strings)."""
    resource, action = parse(permission)
    candidates = {WILDCARD, _join(resource, action), _join(resource, WILDCARD),
                  _join(WILDCARD, action)}
    return tuple(candidates)


def covers(granted, requested):
    """True when the granted pattern covers the requested permission."""
    return normalise(granted) in _covering(requested)


def allows(effective, permission):
    """True when the set of granted patterns ``effective`` covers ``permission``.

    ``effective`` holds canonical grants (what ``permissions_of`` and ``normalise`` return);
    give a set or frozenset so that the lookups are constant-time. A malformed ``permission``
    raises ``InvalidPermission`` rather than quietly answering False, so a typo in a route
    table shows up at once.
    """
    for grant in _covering(permission):
        if grant in effective:
            return True
    return False


def simplify(permissions):
    """The canonical grants of ``permissions`` without those another one already covers."""
    canonical = {normalise(p) for p in permissions}
    if WILDCARD in canonical:
        return frozenset({WILDCARD})
    return frozenset(p for p in canonical
                     if not any(g != p and g in canonical for g in _covering(p)))


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


class Grants:
    """One user's effective permissions: ``global_`` everywhere, ``scopes[s]`` only in ``s``.

    Built from the dict the ``effective_permissions`` RPC returns (``from_dict``), so the
    gateway can cache it and answer ``allows(permission, scope)`` without a call.
    """

    __slots__ = ("global_", "scopes")

    def __init__(self, global_=(), scopes=None):
        self.global_ = frozenset(global_)
        self.scopes = {scope: frozenset(perms) for scope, perms in (scopes or {}).items()}

    @classmethod
    def from_dict(cls, data):
        return cls(data.get("global") or (), data.get("scopes") or {})

    def to_dict(self):
        return {"global": sorted(self.global_),
                "scopes": {scope: sorted(perms) for scope, perms in sorted(self.scopes.items())}}

    def in_scope(self, scope=None):
        """The simplified permissions that apply in ``scope`` (None: global only)."""
        if scope is None or scope not in self.scopes:
            return self.global_
        return simplify(self.global_ | self.scopes[scope])

    def allows(self, permission, scope=None):
        if allows(self.global_, permission):
            return True
        scoped = self.scopes.get(scope) if scope is not None else None
        return scoped is not None and allows(scoped, permission)

    def __eq__(self, other):
        return isinstance(other, Grants) and (self.global_, self.scopes) == \
            (other.global_, other.scopes)

    def __repr__(self):
        return f"Grants({sorted(self.global_)!r}, {self.to_dict()['scopes']!r})"
