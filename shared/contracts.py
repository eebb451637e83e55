"""What crosses the boundary between services and the gateway: permission matching, access-
token rules and the enumerations the API exposes, in one module that imports only the stdlib.

A service and the gateway never import each other's packages; when both must agree on a rule
(authz grants ``users:*`` and the gateway checks it; auth signs ``at+jwt`` tokens and the
gateway accepts them), the rule lives here and both import it.

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
    ``*``). ``allows(effective, permission)`` answers that for a set of granted patterns;
    ``Grants`` holds one user's global and per-scope sets, in the shape authz's
    ``effective_permissions`` RPC returns, and answers ``allows`` for a scope.

Access tokens
    RFC 9068 JWTs: the ``typ`` header ``at+jwt`` (or its media type), the claims auth issues,
    and one table from PyJWT's errors to the ``reason`` a 401 names (``token_rejection``),
    matched by class name so that this module needs no PyJWT.
"""

import re
from functools import lru_cache

__all__ = [
    # permissions
    "WILDCARD",
    "InvalidPermission",
    "problem",
    "is_valid",
    "parse",
    "normalise",
    "covers",
    "allows",
    "simplify",
    "Grants",
    # access tokens
    "ACCESS_TOKEN_TYPE",
    "ACCEPTED_TOKEN_TYPES",
    "MAX_TOKEN_LENGTH",
    "VERIFIED_CLAIMS",
    "ISSUED_CLAIMS",
    "TOKEN_ERRORS",
    "is_access_token_type",
    "token_rejection",
    # proven actors
    "DELEGATIONS",
    # enumerations on the wire
    "ACTOR_TYPES",
    "USER_TYPES",
    "USER_STATUSES",
    "AUDIT_OUTCOMES",
    "REQUEST_ID_PATTERN",
    "TRACE_ID_PATTERN",
]

# -- permissions -----------------------------------------------------------------------------

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

    ``effective`` holds canonical grants (what ``normalise`` returns); give a set or
    frozenset so that the lookups are constant-time. A malformed ``permission`` raises
    ``InvalidPermission`` rather than quietly answering False, so a typo in a route table
    shows up at once.
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


# -- access tokens ---------------------------------------------------------------------------

ACCESS_TOKEN_TYPE = "at+jwt"
# RFC 9068 §2.1: "at+jwt"; RFC 8725 §3.11 allows the full media type too
ACCEPTED_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_TOKEN_LENGTH = 8192
# every verifier requires these; auth, which issues the tokens, also requires its own ids
VERIFIED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp")
ISSUED_CLAIMS = VERIFIED_CLAIMS + ("jti", "sid", "typ")

# PyJWT's error classes (by name, most specific first in each one's MRO) and the 401 each is:
# (reason, message). MissingRequiredClaimError's message names the claim (``{claim}``).
TOKEN_ERRORS = {
    "ExpiredSignatureError": ("expired", "expired"),
    "ImmatureSignatureError": ("not_yet_valid", "not valid yet"),
    "InvalidAudienceError": ("audience", "wrong audience"),
    "InvalidIssuerError": ("issuer", "wrong issuer"),
    "MissingRequiredClaimError": ("claims", "missing claim {claim}"),
    "InvalidSubjectError": ("claims", "a claim has the wrong type"),
    "InvalidJTIError": ("claims", "a claim has the wrong type"),
    "InvalidIssuedAtError": ("claims", "a claim has the wrong type"),
    "InvalidSignatureError": ("signature", "bad signature"),
    "InvalidTokenError": ("malformed", "not a well-formed access token"),
}


def is_access_token_type(typ):
    """Does a JWT's ``typ`` header name an access token?"""
    return isinstance(typ, str) and typ.lower() in ACCEPTED_TOKEN_TYPES


def token_rejection(error):
    """``(reason, message)`` for an error PyJWT raised while decoding an access token."""
    for cls in type(error).__mro__:
        found = TOKEN_ERRORS.get(cls.__name__)
        if found is not None:
            reason, message = found
            return reason, message.format(claim=getattr(error, "claim", "?"))
    return "malformed", "not a well-formed access token"


# -- proven actors (shared.actors) ----------------------------------------------------------

# What a service may do on behalf of a user with its own token (work that runs after the
# user's token may have expired: saga steps, tasks, event handlers), and only when that user
# holds the permission. identity's provisioning saga assigns the roles its admin asked for.
DELEGATIONS = {
    "identity": ("roles:write",),
}


# -- enumerations on the wire ----------------------------------------------------------------

ACTOR_TYPES = ("user", "service", "system")
USER_TYPES = ("user", "service", "system")
USER_STATUSES = ("active", "disabled", "deleted")
AUDIT_OUTCOMES = ("success", "failure", "unknown")
# X-Request-ID and the request id of the RPC context: 1-128 of A-Za-z0-9._:-
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
# a W3C trace id as the audit trail stores it and the API filters by it
TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
