"""Typed errors that cross RPC keeping their kind, and the mapping of each kind to HTTP."""

import json

from nameko.exceptions import registry as _nameko_remote_errors

__all__ = [
    "PlinthError",
    "NotFound",
    "Conflict",
    "Invalid",
    "Unauthorized",
    "Forbidden",
    "Unavailable",
    "InternalError",
    "TooManyRequests",
    "ERROR_KINDS",
]


class PlinthError(Exception):
    """Base of every error a service raises on purpose.

    ``args`` are (message, details as JSON text), so that nameko can carry them to the
    caller, where the same class is rebuilt from them (see the registration at the bottom).
    """

    kind = "error"
    status = 500
    title = "Error"

    def __init__(self, message="", details=None):
        if isinstance(details, str):  # rebuilt from RPC: details travel as JSON text
            details = json.loads(details)
        self.message = message or self.title
        self.details = details or {}
        # nameko stringifies every non-string it finds in args, so numbers and None in the
        # details would arrive as text; one JSON string keeps their types
        super().__init__(self.message, json.dumps(self.details, default=str))

    def __str__(self):
        return self.message

    def to_dict(self):
        return {"kind": self.kind, "message": self.message, "details": self.details}


class NotFound(PlinthError):
    kind, status, title = "not_found", 404, "Not found"


class Conflict(PlinthError):
    kind, status, title = "conflict", 409, "Conflict"


class Invalid(PlinthError):
    """Bad input. ``details`` maps each offending field to its list of messages."""

    kind, status, title = "invalid", 400, "Invalid input"


class Unauthorized(PlinthError):
    kind, status, title = "unauthorized", 401, "Unauthorized"


class Forbidden(PlinthError):
    kind, status, title = "forbidden", 403, "Forbidden"


class TooManyRequests(PlinthError):
    """Throttled. ``details`` may carry ``retry_after`` in seconds."""

    kind, status, title = "too_many_requests", 429, "Too many requests"


class Unavailable(PlinthError):
    kind, status, title = "unavailable", 503, "Service unavailable"


class InternalError(PlinthError):
    """What an unexpected exception becomes before it leaves a service: no internals."""

    kind, status, title = "internal", 500, "Internal error"


ERROR_KINDS = {
    cls.kind: cls
    for cls in (NotFound, Conflict, Invalid, Unauthorized, Forbidden, TooManyRequests,
                Unavailable, InternalError)
}

# nameko rebuilds a remote exception as the registered class when its module path matches,
# instead of wrapping it in a RemoteError. Registering here means any process that imports
# shared gets typed errors back from every service.
for _cls in ERROR_KINDS.values():
    _nameko_remote_errors[f"{__name__}.{_cls.__name__}"] = _cls
