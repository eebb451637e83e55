"""Request ids, the JSON access log and per-request metrics.

``X-Request-ID`` is taken from the request when it is well formed (``shared.context``'s
rule: 1-128 of ``A-Za-z0-9._:-``), otherwise a new one is made; it is returned on every
response, travels to the services in the RPC context (so it shows in their logs and in audit
entries), and stamps the gateway's own log lines. One JSON line per request goes to the
``gateway.access`` logger.

Each request is one server span (shared.tracing), named by its route template
(``GET /api/v1/users/{user_id}``): a valid incoming ``traceparent`` (and its ``tracestate``)
is continued, a missing or malformed one starts a new trace. Every response names the span
in a ``traceresponse`` header (W3C Trace Context Level 2) when tracing is on. Health probes
and metric scrapes are not traced.
"""

import logging
import os
import time

from flask import request

from gateway import metrics, request_state
from shared import context, tracing

__all__ = ["REQUEST_ID_HEADER", "TRACERESPONSE_HEADER", "begin", "finish", "register"]

REQUEST_ID_HEADER = "X-Request-ID"
TRACERESPONSE_HEADER = "traceresponse"
# probes and scrapes: a trace every few seconds of each, telling nothing about requests
UNTRACED = ("/health", "/metrics")
access_log = logging.getLogger("gateway.access")


def begin():
    state = request_state.current()
    state.started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER)
    state.request_id = incoming if context.valid_request_id(incoming) \
        else context.new_request_id()
    context.request_id_var.set(state.request_id)
    context.actor_var.set(None)
    if tracing.enabled() and not request.path.startswith(UNTRACED):
        # named by its route once known (finish); the method alone until then
        state.span = tracing.start(request.method, tracing.SpanKind.SERVER,
                                   parent=tracing.extract(request.headers))


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
    if state.span is not None:
        _describe_span(state, route, response)
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


def _describe_span(state, route, response):
    span = state.span[0]
    if span.is_recording():
        span.update_name(f"{request.method} {route}")
        span.set_attribute("http.request.method", request.method)
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", response.status_code)
        if state.principal is not None:  # the caller's id; never the token
            span.set_attribute("user.id", str(state.principal.user_id))
        if response.status_code >= 500:
            span.set_status(tracing.Status(tracing.StatusCode.ERROR))
    value = tracing.traceresponse(span)
    if value is not None:
        response.headers[TRACERESPONSE_HEADER] = value


def _forget_context(_exc=None):
    context.request_id_var.set(None)
    context.actor_var.set(None)
    state = request_state.current()
    if state.span is not None:
        handle, state.span = state.span, None
        tracing.finish(handle)


def _no_access_log():
    request_state.current().access_log = False


def register(app, access=True):
    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(_forget_context)
    if not access:
        app.before_request(_no_access_log)
