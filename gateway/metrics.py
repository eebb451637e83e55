"""Prometheus metrics, correct across gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (deploy/gunicorn.conf.py sets and cleans it before the
workers start) every worker writes its samples to files there and ``/metrics`` adds up all
of them, whichever worker answers; without it the process's own registry is served.
"""

import os

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["REQUEST_LATENCY", "REQUESTS", "RPC_LATENCY", "AUTHZ_CACHE", "JWKS_FETCHES",
           "AUTHZ_EVENTS", "EVENTS_DROPPED", "BREAKER_STATE", "TRACE_SPANS_DROPPED",
           "observe_request", "trace_spans_dropped", "breaker_changed", "register"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

REQUEST_LATENCY = Histogram(
    "gateway_http_request_duration_seconds", "Time to answer an HTTP request, per route",
    ["method", "route"], buckets=LATENCY_BUCKETS)
REQUESTS = Counter(
    "gateway_http_requests", "HTTP responses, per route and status",
    ["method", "route", "status"])
RPC_LATENCY = Histogram(
    "gateway_rpc_duration_seconds", "Time of an RPC call, per service and outcome",
    ["service", "outcome"], buckets=LATENCY_BUCKETS)
AUTHZ_CACHE = Counter(
    "gateway_authz_cache_lookups", "Permission lookups by the authorisation cache",
    ["result"])
AUTHZ_EVENTS = Counter(
    "gateway_authz_events", "authz events received (each invalidates cached permissions)",
    ["event_type"])
EVENTS_DROPPED = Counter(
    "gateway_events_dropped_sender", "Events dropped: not sent by their source service's "
    "broker identity (shared.senders)", ["source"])
JWKS_FETCHES = Counter(
    "gateway_jwks_fetches", "Fetches of auth's public keys", ["outcome"])

BREAKER_STATE = Gauge(
    "gateway_circuit_breaker_state",
    "Circuit breaker per service: 0 closed, 1 half-open, 2 open (the worst of the workers)",
    ["service"], multiprocess_mode="max")
BREAKER_TRANSITIONS = Counter(
    "gateway_circuit_breaker_transitions", "Circuit breaker state changes", ["service", "to"])
_BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}
TRACE_SPANS_DROPPED = Counter(
    "gateway_trace_spans_dropped", "Spans not exported: the export queue was full, or the "
    "trace receiver could not be reached", ["reason"])

MULTIPROC_DIR_KEY = "PROMETHEUS_MULTIPROC_DIR"


def breaker_changed(service, old, new):
    BREAKER_STATE.labels(service).set(_BREAKER_VALUES.get(new, 0))
    BREAKER_TRANSITIONS.labels(service, new).inc()


def trace_spans_dropped(count, reason):
    TRACE_SPANS_DROPPED.labels(reason).inc(count)


def observe_request(method, route, status, seconds):
    REQUEST_LATENCY.labels(method, route).observe(seconds)
    REQUESTS.labels(method, route, str(status)).inc()


def _registry():
    if os.environ.get(MULTIPROC_DIR_KEY):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_view():
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})


def register(app):
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
