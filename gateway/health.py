"""The gateway's own health: ``/health/live``, ``/health/ready`` (the broker reachable and
auth's public keys loaded) and ``/health`` (each dependency with its response time)."""

import os
import time

from flask import jsonify

from gateway.openapi import API_VERSION

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
                      (("broker", _broker(state)), ("jwks", _jwks(state))))
        ok = all(c["status"] == "up" for c in checks.values())
        return jsonify({"status": "ready" if ok else "not ready", "checks": checks}), \
            200 if ok else 503

    def detail():
        checks = dict(_timed(name, probe) for name, probe in
                      (("broker", _broker(state)), ("jwks", _jwks(state)),
                       ("authz_events", _events(state)), ("registry", _registry(state))))
        if checks["broker"]["status"] == "down" or checks["jwks"]["status"] == "down":
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
