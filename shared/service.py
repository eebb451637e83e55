"""The base every service class derives from: request context, health and metrics endpoints."""

import json

from nameko.web.handlers import http
from werkzeug.wrappers import Response

from shared.actors import Proof
from shared.context import RequestContext
from shared.health import Health
from shared.metrics import CONTENT_TYPE_LATEST, Metrics
from shared.registration import Registration, deregister_first
from shared.worker_tracing import Tracing

__all__ = ["ServiceBase", "json_response"]


def json_response(body, status=200):
    return Response(json.dumps(body), status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


class ServiceBase:
    """Gives a service ``self.context``, ``self.proof`` (who is proven to act, for
    ``shared.actors.guarded`` methods; see shared.actors), ``/health/live``,
    ``/health/ready``, ``/health``, Prometheus ``/metrics`` (``self.metrics``; see
    shared.metrics), its registration with Consul (``self.registration``; see
    shared.registration) and a span per worker (``self.tracing``; see shared.worker_tracing).

    Import this module, not the class (``from shared import service as kernel``): nameko run
    takes every top-level class with entrypoints in a service module for a service.
    Subclasses set ``name`` and add their own dependencies (``db = Database(...)``) and
    entrypoints.
    """

    context = RequestContext()
    proof = Proof()
    health = Health()
    registration = Registration()
    metrics = Metrics()
    tracing = Tracing()

    @http("GET", "/health/live")
    def health_live(self, request):
        return json_response(self.health.live())

    @http("GET", "/health/ready")
    @deregister_first  # Consul checks this route; on stop the instance leaves Consul first
    def health_ready(self, request):
        ready, body = self.health.ready()
        return json_response(body, 200 if ready else 503)

    @http("GET", "/health")
    def health_detail(self, request):
        status, body = self.health.detail()
        return json_response(body, 503 if status == "unhealthy" else 200)

    @http("GET", "/metrics")
    def metrics_text(self, request):
        return Response(self.metrics.render(), content_type=CONTENT_TYPE_LATEST,
                        headers={"Cache-Control": "no-store"})
