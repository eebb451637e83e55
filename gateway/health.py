"""The gateway's own health: ``/health/live``, ``/health/ready`` (the broker reachable,
auth's public keys loaded and its ended sessions read once) and ``/health`` (each dependency
with its response time)."""

import os
import time

from flask import jsonify

from gateway.openapi import API_VERSION
from shared.errors import PlinthError

__all__ = ["register"]

STARTED = time.monotonic()


def _timed(name, probe):
    started = time.perf_counter()
    try:
        ok, detail = probe()
    except Exception as exc:  # noqa: BLE001 - a failed probe is a result
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    return name, {"status": "up" if ok else "down",
                  "response_ms": round((time.perf_counter() - started) * 1000, 2),
                  "detail": detail}


def _broker(state):
    def probe():
        ok = state.rpc.connected(wait=1.0)
        error = state.rpc.last_error
        return ok, "" if ok else f"not connected ({type(error).__name__ if error else '?'})"
    return probe


def _jwks(state):
    def probe():
        if not state.jwks.loaded:
            state.jwks.refresh()
        if state.jwks.loaded:
            return True, f"{len(state.jwks.document()['keys'])} key(s)"
        error = state.jwks.last_error
        return False, f"not loaded ({error.message if error else 'not fetched yet'})"
    return probe


def _events(state):
    def probe():
        listener = state.listener
        if listener is None:
            return True, "disabled: every check asks authz"
        if listener.connected:
            return True, f"{listener.received} event(s) received"
        error = listener.last_error
        return False, f"not connected ({type(error).__name__ if error else 'starting'}); " \
                      "checks ask authz meanwhile"
    return probe


def _revocations(state, ready):
    """Ended sessions: for readiness, known once (auth's list read at least once); for the
    detail, kept current by auth's events (else tokens are checked with auth: degraded)."""
    def probe():
        listener = state.sessions
        if listener is None:
            return True, "disabled: tokens of ended sessions are accepted until they expire"
        if not listener.ever_synced:
            try:  # as the key set is fetched by its probe: ready as soon as auth answers
                listener.ensure_fresh(state.session_check_interval)
            except PlinthError:
                pass
        if listener.in_sync:
            return True, f"listening; {len(state.revoked)} ended session(s) known"
        if ready and listener.ever_synced:
            return True, "known; not listening: tokens checked with auth meanwhile"
        error = listener.last_error
        reason = f"{type(error).__name__}" if error else "starting"
        if not listener.ever_synced:
            return False, f"never read from auth ({reason}); access tokens refused (503)"
        return False, f"not listening ({reason}); tokens checked with auth meanwhile"
    return probe


def _registry(state):
    def probe():
        registry = state.view.snapshot()["registry"]
        if not registry["enabled"]:
            return True, "disabled: routing without a service registry"
        if registry["reachable"]:
            return True, f"{registry['address']} reachable"
        return False, f"{registry['address']} unreachable; routing blindly"
    return probe


def register(app, state):
    def live():
        return jsonify({"status": "alive"})

    def ready():
        checks = dict(_timed(name, probe) for name, probe in
                      (("broker", _broker(state)), ("jwks", _jwks(state)),
                       ("revocations", _revocations(state, ready=True))))
        ok = all(c["status"] == "up" for c in checks.values())
        return jsonify({"status": "ready" if ok else "not ready", "checks": checks}), \
            200 if ok else 503

    def detail():
        checks = dict(_timed(name, probe) for name, probe in
                      (("broker", _broker(state)), ("jwks", _jwks(state)),
                       ("authz_events", _events(state)),
                       ("revocations", _revocations(state, ready=False)),
                       ("registry", _registry(state))))
        if any(checks[name]["status"] == "down" for name in ("broker", "jwks")) or \
                (state.sessions is not None and not state.sessions.ever_synced):
            status = "unhealthy"
        elif any(c["status"] == "down" for c in checks.values()):
            status = "degraded"
        else:
            status = "healthy"
        body = {
            "status": status, "service": "gateway", "version": API_VERSION, "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - STARTED, 1), "checks": checks,
            "rpc_backend": state.rpc.backend_name, "routes": len(state.routes),
            "authz_cache_entries": len(state.permissions),
            "breakers": state.breakers.states(),
        }
        return jsonify(body), 503 if status == "unhealthy" else 200

    app.add_url_rule("/health/live", "health_live", live, methods=["GET"])
    app.add_url_rule("/health/ready", "health_ready", ready, methods=["GET"])
    app.add_url_rule("/health", "health", detail, methods=["GET"])
