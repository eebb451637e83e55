"""Every error the gateway answers, as RFC 9457 ``application/problem+json``.

Remote errors arrive as the typed errors of ``shared.errors`` (nameko rebuilds them by class);
Flask's own (404, 405, 413, ...) are werkzeug ``HTTPException``s; anything else is a bug and
becomes a 500 problem that names only a reference, never internals.
"""

import json
import logging
import uuid

from flask import g, request
from werkzeug.exceptions import HTTPException

from gateway import request_state
from shared.errors import PlinthError, TooManyRequests, Unauthorized, Unavailable

__all__ = ["PROBLEM_MIME", "problem", "problem_document", "problem_for",
           "UnsupportedMediaType", "register"]

log = logging.getLogger("gateway.errors")

PROBLEM_MIME = "application/problem+json"
TYPE_PREFIX = "urn:plinth:problem:"
# detail keys of a typed error that are safe and useful to show a client as they are
PUBLIC_DETAILS = ("reason", "service", "reference", "retry_after", "timeout", "permission",
                  "saga_id", "saga_status", "step", "role", "scope")

HTTP_KINDS = {
    400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests", 431: "headers_too_large", 500: "internal", 501: "not_implemented",
    503: "unavailable", 504: "timeout",
}


class UnsupportedMediaType(PlinthError):
    kind, status, title = "unsupported_media_type", 415, "Unsupported media type"


def problem_document(status, title, detail=None, kind=None, instance=None, request_id=None):
    """The RFC 9457 body of a problem, as a dict (no Flask needed)."""
    body = {
        "type": TYPE_PREFIX + (kind or HTTP_KINDS.get(status, "error")),
        "title": title,
        "status": status,
        "detail": detail or title,
        "instance": instance,
    }
    if request_id:
        body["request_id"] = request_id
    return body


def problem(status, title, detail=None, kind=None, errors=None, headers=None, **extra):
    """A problem+json response. ``errors`` maps fields to messages (400 and 409)."""
    from flask import current_app

    body = problem_document(status, title, detail, kind,
                            instance=request.path if request else None,
                            request_id=request_state.current().request_id if g else None)
    if errors:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    response = current_app.response_class(json.dumps(body), status=status,
                                          mimetype=PROBLEM_MIME)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _field_errors(details):
    """``details`` as ``{field: [messages]}`` when it has that shape, else None."""
    if not isinstance(details, dict) or not details:
        return None
    shaped = {}
    for field, messages in details.items():
        if isinstance(messages, str):
            messages = [messages]
        if not isinstance(messages, list | dict):
            return None
        shaped[str(field)] = messages
    return shaped


def problem_for(error, status=None):
    """The problem for a typed error; ``status`` overrides the error's own."""
    status = status or error.status
    details = error.details if isinstance(error.details, dict) else {}
    extra = {k: details[k] for k in PUBLIC_DETAILS
             if k in details and isinstance(details[k], str | int | float)}
    headers = {}
    if isinstance(error, TooManyRequests) or status == 429:
        retry = details.get("retry_after")
        headers["Retry-After"] = str(max(1, int(float(retry))) if _number(retry) else 1)
    elif isinstance(error, Unavailable) and status == 503:
        headers["Retry-After"] = str(_retry_after_unavailable())
    if status == 401 and isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' \
            if request_state.current().token_rejected else "Bearer"
    errors = _field_errors(details) if status in (400, 409) else None
    if status == 400 and errors is None:
        errors = {"_schema": [error.message]}
    return problem(status, error.title if status == error.status else _title(status),
                   error.message, kind=error.kind if status == error.status else None,
                   errors=errors, headers=headers, **extra)


def _number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _retry_after_unavailable():
    from flask import current_app

    state = current_app.extensions.get("plinth")
    return state.settings.get_as("RETRY_AFTER_UNAVAILABLE", int) if state else 2


def _title(status):
    from werkzeug.http import HTTP_STATUS_CODES

    return HTTP_STATUS_CODES.get(status, "Error")


def _http_error(exc):
    headers = {}
    if exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    if exc.code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    detail = exc.description
    errors = {"_schema": [detail]} if exc.code == 400 else None
    return problem(exc.code or 500, exc.name, detail, errors=errors, headers=headers)


def _typed_error(exc):
    state = request_state.current()
    route = state.route
    # a route's remap is about its target's answers (e.g. a wrong current password), never
    # the gateway's own refusals (no token: 401 whatever the route says)
    status = route.error_status.get(exc.kind) \
        if route is not None and state.target_error else None
    if exc.status >= 500:
        log.warning("%s answered %s: %s", getattr(route, "target", "gateway"), exc.kind,
                    exc.message)
    return problem_for(exc, status)


def _unexpected(exc):
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    reference = uuid.uuid4().hex[:12]
    log.error("unexpected error, reference %s", reference, exc_info=exc)
    return problem(500, "Internal error", f"internal error (reference {reference})",
                   kind="internal", reference=reference)


def register(app):
    app.register_error_handler(PlinthError, _typed_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
