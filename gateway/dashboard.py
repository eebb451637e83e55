"""The status dashboard: ``/status`` (HTML for a person) and ``/status.json`` (the same data).

Every service the gateway routes to (and any other the registry lists), each instance with its
address, check status and output and the time since its status last changed, the gateway's
circuit breaker per service, and whether the registry is reachable — when it is not, the
gateway routes blindly and the page says it is degraded. The page is rendered on the server
and then refreshes itself from ``/status.json`` every few seconds (a script from this origin
only; no external resources, so it works offline).
"""

import os
import time
from datetime import UTC, datetime

from flask import jsonify, render_template, send_from_directory

from gateway.openapi import API_VERSION

__all__ = ["register", "status"]

STATIC = os.path.join(os.path.dirname(__file__), "static")
ASSETS = {"plinth-status.js", "plinth-status.css"}
STARTED = time.monotonic()
REFRESH_SECONDS = 3


def status(state):
    """The dashboard's data: JSON-serialisable."""
    view = state.view.snapshot()
    breakers = state.breakers.snapshot()
    services = {}
    for name in sorted(set(view["services"]) | set(breakers) | set(state.route_services)):
        entry = view["services"].get(name) or {
            "has_passing": None, "passing": 0, "total": 0, "stale": True, "error": None,
            "updated_at": None, "instances": []}
        breaker = breakers.get(name) or {"state": "closed"}
        if not view["registry"]["enabled"]:
            health = "unknown"
        elif entry["stale"]:
            health = "unknown"
        elif entry["passing"]:
            health = "healthy" if entry["passing"] == entry["total"] else "degraded"
        else:
            health = "down"
        services[name] = {**entry, "health": health, "breaker": breaker,
                          "routed": name in state.route_services}
    registry = view["registry"]
    if not registry["enabled"]:
        overall = "no registry"
    elif registry["degraded"]:
        overall = "degraded"
    elif any(s["health"] == "down" or s["breaker"]["state"] != "closed"
             for s in services.values() if s["routed"]):
        overall = "degraded"
    else:
        overall = "ok"
    return {
        "status": overall,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateway": {"version": API_VERSION, "pid": os.getpid(),
                    "uptime_s": round(time.monotonic() - STARTED, 1),
                    "broker_connected": state.rpc.connected()},
        "registry": registry,
        "services": services,
        "refresh_seconds": REFRESH_SECONDS,
    }


def register(app, state):
    def status_json():
        return jsonify(status(state))

    def status_page():
        return render_template("status.html", data=status(state))

    def status_asset(filename):
        if filename not in ASSETS:
            from werkzeug.exceptions import NotFound

            raise NotFound()
        response = send_from_directory(STATIC, filename, max_age=300)
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    app.add_url_rule("/status.json", "status_json", status_json, methods=["GET"])
    app.add_url_rule("/status", "status", status_page, methods=["GET"])
    app.add_url_rule("/status/static/<path:filename>", "status_asset", status_asset,
                     methods=["GET"])
