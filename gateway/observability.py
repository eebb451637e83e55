"""Request ids, the JSON access log and per-request metrics.

``X-Request-ID`` is taken from the request when it is well formed (``shared.context``'s
rule: 1-128 of ``A-Za-z0-9._:-``), otherwise a new one is made; it is returned on every
response, travels to the services in the RPC context (so it shows in their logs and in audit
entries), and stamps the gateway's own log lines. One JSON line per request goes to the
``gateway.access`` logger.
"""

import logging
import os
import time

from flask import request

from gateway import metrics, request_state
from shared import context

__all__ = ["REQUEST_ID_HEADER", "begin", "finish", "register"]

REQUEST_ID_HEADER = "X-Request-ID"
access_log = logging.getLogger("gateway.access")


def begin():
    state = request_state.current()
    state.started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER)
    state.request_id = incoming if context.valid_request_id(incoming) \
        else context.new_request_id()
    context.request_id_var.set(state.request_id)
    context.actor_var.set(None)


def _route_label(response):
    rule = request.url_rule
    if rule is None:
        return "unmatched"
    route = request_state.current().route
    return route.path if route is not None else rule.rule


def finish(response):
    state = request_state.current()
    if state.request_id is None:  # a failure before begin() ran
        begin()
    request_id = state.request_id
    response.headers[REQUEST_ID_HEADER] = request_id
    seconds = time.perf_counter() - state.started
    route = _route_label(response)
    metrics.observe_request(request.method, route, response.status_code, seconds)
    if state.access_log and access_log.isEnabledFor(logging.INFO):
        principal = state.principal
        access_log.info("%s %s %s", request.method, route, response.status_code, extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "user_id": principal.user_id if principal else None,
            "remote_addr": request.remote_addr,
            "user_agent": request.user_agent.string[:200] or None,
            # a streamed body is measured by its header: measuring it would read it whole
            "bytes": response.content_length if response.is_streamed
            else response.calculate_content_length(),
            "pid": os.getpid(),
        })
    return response


def _forget_context(_exc=None):
    context.request_id_var.set(None)
    context.actor_var.set(None)


def _no_access_log():
    request_state.current().access_log = False


def register(app, access=True):
    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(_forget_context)
    if not access:
        app.before_request(_no_access_log)
