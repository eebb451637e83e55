"""What the gateway knows about the request it is answering: one object on ``flask.g``.

Every module that learns something about the request (its id, its caller, its route, its
rate-limit window...) writes it here, and every module that needs it reads it here, so the
whole per-request state is listed in one place.
"""

from flask import g

__all__ = ["RequestState", "current"]


class RequestState:
    """The state of one request, made by the first hook that asks for it."""

    __slots__ = (
        "request_id",  # X-Request-ID as accepted or made (observability.begin)
        "started",  # perf_counter() at the start, for the access log and metrics
        "access_log",  # False when the access log is turned off
        "principal",  # the caller of a valid, unrevoked bearer token, else None
        "token",  # that token, forwarded to services as the proof of the actor (never logged)
        "auth_error",  # why the presented token was refused (raised by routes needing one)
        "token_rejected",  # a 401 is about the token sent (WWW-Authenticate: invalid_token)
        "route",  # the route-table entry being served
        "target_error",  # the error came from the route's target (its ``errors`` remap applies)
        "rate_limit",  # the tightest rate-limit window (gateway.limits.RateLimitState), for headers
        "span",  # the request's server span (a shared.tracing handle), None when not traced
    )

    def __init__(self):
        self.request_id = None
        self.started = None
        self.access_log = True
        self.principal = None
        self.token = None
        self.auth_error = None
        self.token_rejected = False
        self.route = None
        self.target_error = False
        self.rate_limit = None
        self.span = None


def current():
    """This request's state (made on first use: an error may come before the first hook)."""
    state = g.get("request_state")
    if state is None:
        state = g.request_state = RequestState()
    return state
