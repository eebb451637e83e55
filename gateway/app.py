"""The application factory: wires the route table, RPC pool, security, authorisation cache,
rate limits, errors, metrics, docs and health into one Flask app."""

import logging
import os
import threading
import time

from flask import Flask, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import (
    authz_cache,
    dashboard,
    dispatch,
    errors,
    headers,
    health,
    limits,
    metrics,
    observability,
    openapi,
    request_state,
    revocations,
)
from gateway import settings as settings_module
from gateway.authz_cache import EventListener, PermissionCache
from gateway.breakers import Breakers
from gateway.discovery import ServiceView
from gateway.limits import RateLimits
from gateway.revocations import RevokedSessions, SessionListener
from gateway.routes import RATE_CLASSES, load_routes
from gateway.rpc import RpcPool
from gateway.security import Jwks, TokenValidator, bearer_token, rejected
from shared import context, tracing
from shared.calls import check_declared
from shared.config import require_strong_credentials
from shared.errors import PlinthError

__all__ = ["create_app", "Gateway", "warm_up"]

log = logging.getLogger("gateway")


class Gateway:
    """What one gateway process holds: its settings, routes and clients."""

    def __init__(self, settings, routes):
        self.settings = settings
        self.routes = routes
        self.rpc = _rpc_pool(settings)
        self.jwks = _jwks(settings, self.rpc)
        self.validator = _token_validator(settings, self.jwks)
        self.permissions = _permission_cache(settings, self.rpc)
        self.listener = _authz_listener(settings, self.permissions)
        self.limits = RateLimits(settings, RATE_CLASSES)
        # ended sessions (logout, password change, disabled user...): their tokens refused
        self.revoked = RevokedSessions()
        self.sessions = _session_listener(settings, self.rpc, self.revoked)
        self.session_check_interval = settings.get_as("SESSION_CHECK_INTERVAL", float)
        # health-aware routing: no passing instance in Consul -> 503 at once; a breaker per
        # service opens on repeated failures. Both sit in front of every RPC call.
        self.route_services = sorted({r.target.split(".", 1)[0] for r in routes if r.target})
        self.view = ServiceView.from_config(settings, services=self.route_services)
        self.breakers = Breakers.from_config(settings, on_change=metrics.breaker_changed)
        self.rpc.add_before_rpc("discovery", self.view.require)
        self.rpc.add_before_rpc("breakers", self.breakers.before_rpc)
        self.rpc.add_after_rpc("breakers", self.breakers.after_rpc)
        self._pid = None

    def ensure_started(self):
        """Start this process's background parts (after a fork, in the worker)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.view.start()
        if self.listener is not None:
            self.listener.start()
        if self.sessions is not None:
            self.sessions.start()
        self.rpc.connected()  # creates and starts the process's client

    def close(self):
        self.view.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.sessions is not None:
            self.sessions.stop()
        self.rpc.close()
        self._pid = None


def _system_context():
    """The RPC context of a call the gateway makes on its own behalf, not a client's."""
    return {"request_id": context.new_request_id(), "actor_type": "system",
            "actor_id": "gateway"}


# what the gateway calls beyond its route table: with the routes, the one list of the RPC
# routing keys deploy/broker_users.py allows the gateway's broker user to publish
SYSTEM_CALLS = {"auth": frozenset({"jwks", "revoked_sessions"}),
                "authz": frozenset({"effective_permissions"})}
# the events each gateway process listens to: (source service, routing key)
SUBSCRIPTIONS = ((authz_cache.SOURCE, authz_cache.ROUTING_KEY),
                 (revocations.SOURCE, revocations.ROUTING_KEY))


def _system_call(rpc, service, method, timeout):
    """A function calling ``service.method()`` as the gateway itself."""
    check_declared(SYSTEM_CALLS.get(service, ()), service, method)

    def call():
        return rpc.call(service, method, timeout=timeout, context=_system_context())

    call.__name__ = call.__qualname__ = f"{service}.{method}"
    return call


def _rpc_pool(settings):
    get = settings.get_as
    return RpcPool(settings["AMQP_URI"], timeout=get("RPC_TIMEOUT", float),
                   connect_timeout=get("RPC_CONNECT_TIMEOUT", float),
                   size=get("RPC_POOL_SIZE", int))


def _jwks(settings, rpc):
    get = settings.get_as
    return Jwks(_system_call(rpc, "auth", "jwks", get("JWKS_TIMEOUT", float)),
                algorithms=settings.get_list("JWT_ALGORITHMS"),
                refetch_interval=get("JWKS_REFETCH_INTERVAL", float),
                max_age=get("JWKS_MAX_AGE", float))


def _token_validator(settings, jwks):
    return TokenValidator(jwks, settings.get("JWT_ISSUER"), settings.get("JWT_AUDIENCE"),
                          leeway=settings.get_as("JWT_LEEWAY", int),
                          algorithms=settings.get_list("JWT_ALGORITHMS"))


def _permission_cache(settings, rpc):
    timeout = settings.get_as("AUTHZ_TIMEOUT", float)
    check_declared(SYSTEM_CALLS["authz"], "authz", "effective_permissions")

    def effective_permissions(user_id):  # as the client whose request needs them
        return rpc.call("authz", "effective_permissions", kwargs={"user_id": user_id},
                        timeout=timeout, context=dispatch.rpc_context())

    return PermissionCache(effective_permissions, max_size=settings.get_as("AUTHZ_CACHE_SIZE", int),
                           ttl=settings.get_as("AUTHZ_CACHE_TTL", float))


def _authz_listener(settings, cache):
    """The listener keeping ``cache`` current from authz's events (None when turned off); the
    cache trusts its entries only while the listener is connected."""
    if not settings.get_as("AUTHZ_EVENTS", bool):
        return None
    listener = EventListener(settings["AMQP_URI"], cache,
                             heartbeat=settings.get_as("EVENTS_HEARTBEAT", int))

    def listener_connected():
        return listener.connected

    cache.trusted = listener_connected
    return listener


def _session_listener(settings, rpc, revoked):
    """The listener filling ``revoked`` from auth's session events (None when turned off)."""
    if not settings.get_as("SESSION_EVENTS", bool):
        return None
    # the revocations are fetched with the key set's timeout: both are small reads from auth
    fetch = _system_call(rpc, "auth", "revoked_sessions", settings.get_as("JWKS_TIMEOUT", float))
    return SessionListener(settings["AMQP_URI"], revoked, fetch,
                           heartbeat=settings.get_as("EVENTS_HEARTBEAT", int))


def _identify(state):
    def identify():
        state.ensure_started()
        current = request_state.current()
        header = request.headers.get("Authorization")
        if header is None:
            return
        try:
            token = bearer_token(header)
            principal = state.validator.validate(token)
            if state.sessions is not None:  # revocations may have been missed: ask auth
                state.sessions.ensure_fresh(state.session_check_interval)
        except PlinthError as exc:
            current.auth_error = exc  # raised by routes that need a caller; public ones ignore it
            return
        if principal.session_id in state.revoked:
            current.auth_error = rejected("revoked", "the session has ended")
            return
        current.principal, current.token = principal, token
        context.actor_var.set(context.Actor(principal.user_id, principal.actor_type))

    return identify


def _proxy_warning(settings):
    """Say once per process, loudly, that clients are probably being mistaken for their proxy:
    requests carry X-Forwarded-For while no proxy is trusted (GATEWAY_TRUSTED_PROXIES=0)."""
    if settings.get_as("TRUSTED_PROXIES", int):
        return None
    seen = threading.Event()

    def warn():
        if seen.is_set() or "X-Forwarded-For" not in request.headers:
            return
        seen.set()
        log.warning(
            "a request from %s carries X-Forwarded-For but GATEWAY_TRUSTED_PROXIES is 0: if "
            "the gateway is behind a proxy or load balancer, every client behind it shares "
            "its address, so one client's failed logins and rate limits hit them all; set "
            "GATEWAY_TRUSTED_PROXIES to the number of proxies in front of the gateway (see "
            "deploy/README.md). If there is none, a client sent the header itself and it is "
            "ignored.", request.remote_addr, extra={"event": "untrusted_forwarded_for"})

    return warn


def _jwks_view(state):
    def jwks():
        response = jsonify(state.jwks.document())
        response.headers["Cache-Control"] = "public, max-age=60"
        return response

    return jwks


def create_app(config=None):
    """A gateway app. ``config`` overrides config/gateway.yaml (see gateway/settings.py)."""
    settings = settings_module.load(config)
    # gunicorn builds the app in each worker, after the fork: so is the span exporter's thread
    tracing.setup("gateway", on_drop=metrics.trace_spans_dropped)
    require_strong_credentials(settings, {
        "AMQP_URI": settings.get("AMQP_URI"),
        "RATELIMIT_STORAGE_URI": settings.get("RATELIMIT_STORAGE_URI")})
    routes = load_routes(settings.get("ROUTES_DIR"))
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = settings.get_as("MAX_CONTENT_LENGTH", int)
    app.json.sort_keys = False
    proxies = settings.get_as("TRUSTED_PROXIES", int)
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)

    state = Gateway(settings, routes)
    app.extensions["plinth"] = state

    # order matters: before_request run in this order, after_request in the reverse one
    observability.register(app, access=settings.get_as("ACCESS_LOG", bool))
    app.before_request(_identify(state))
    warning = _proxy_warning(settings)
    if warning is not None:
        app.before_request(warning)
    app.after_request(headers.security_headers(settings.get_as("HSTS_SECONDS", int)))
    app.after_request(limits.rate_limit_headers)
    headers.setup_cors(app, settings)
    errors.register(app)

    for route in routes:
        app.add_url_rule(route.rule, route.endpoint, dispatch.make_view(route, state),
                         methods=[route.method])
    app.add_url_rule("/.well-known/jwks.json", "jwks", _jwks_view(state), methods=["GET"])
    health.register(app, state)
    dashboard.register(app, state)
    if settings.get_as("METRICS_ENABLED", bool):
        metrics.register(app)
    openapi.register(app, routes, docs=settings.get_as("DOCS_ENABLED", bool))
    return app


def warm_up(app, timeout=5.0):
    """Connect and load auth's keys now rather than at the first request (best effort)."""
    state = app.extensions["plinth"]
    deadline = time.monotonic() + timeout
    state.ensure_started()
    state.rpc.connected(wait=timeout)
    # a worker that takes requests without keys answers 503 to every bearer: keep trying (auth
    # may still be starting, or slow under load) until the warm-up's budget is spent
    while not state.jwks.loaded:
        state.jwks.refresh(force=True)
        if state.jwks.loaded or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if state.sessions is not None:
        state.sessions.wait_synced(timeout)
    return state.jwks.loaded
