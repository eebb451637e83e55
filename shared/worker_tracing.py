"""A span per worker: every entrypoint of a service joins the trace its caller sent.

``Tracing`` (a provider every ``ServiceBase`` has) sets tracing up when the container does
(``shared.tracing.setup``), starts each worker's span as a child of the ``traceparent`` in
its nameko context data (the AMQP headers of an RPC call, an event or a task; a timer has
none, so it starts a trace of its own), makes it current for the worker's greenthread, and
puts the span's own context back into the context data, so the calls, events and tasks the
worker sends continue its trace. The service's HTTP endpoints (health, metrics) are not traced.
"""

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.messaging import Consumer
from nameko.rpc import Rpc
from nameko.timer import Timer

from shared import tracing
from shared.metrics import MetricsRegistry
from shared.tasks import TaskEntrypoint
from shared.tracing import SpanKind

__all__ = ["Tracing", "describe"]


def describe(service, entrypoint):
    """(name, kind, attributes) of the span of a worker of ``entrypoint``, or None for an
    entrypoint that is not traced."""
    method = entrypoint.method_name
    if isinstance(entrypoint, Rpc):
        return f"{service}.{method}", SpanKind.SERVER, {
            "rpc.system": "nameko", "rpc.service": service, "rpc.method": method}
    if isinstance(entrypoint, TaskEntrypoint):
        return f"{entrypoint.name} process", SpanKind.CONSUMER, {
            "messaging.system": "rabbitmq", "messaging.operation.type": "process",
            "plinth.task_type": entrypoint.name, "plinth.handler": f"{service}.{method}"}
    if isinstance(entrypoint, EventHandler):
        event_type = entrypoint.event_type
        return f"{event_type} process", SpanKind.CONSUMER, {
            "messaging.system": "rabbitmq", "messaging.operation.type": "process",
            "messaging.destination.name": f"{entrypoint.source_service}.events",
            "plinth.event_type": event_type, "plinth.handler": f"{service}.{method}"}
    if isinstance(entrypoint, Consumer):
        return f"{service}.{method} process", SpanKind.CONSUMER, {
            "messaging.system": "rabbitmq", "plinth.handler": f"{service}.{method}"}
    if isinstance(entrypoint, Timer):
        return f"timer {service}.{method}", SpanKind.INTERNAL, {
            "plinth.handler": f"{service}.{method}"}
    return None


class Tracing(DependencyProvider):
    """Sets tracing up at container setup and gives every traced worker its span."""

    metrics = MetricsRegistry()

    def __init__(self):
        self._spans = {}

    def setup(self):
        tracing.setup(self.container.service_name)
        self.metrics.gauge("plinth_trace_spans_dropped", "Spans dropped since the start "
                           "(export queue full, or the receiver unreachable)",
                           tracing.dropped)

    def get_dependency(self, worker_ctx):
        return None

    def worker_setup(self, worker_ctx):
        if not tracing.enabled():
            return
        described = describe(self.container.service_name, worker_ctx.entrypoint)
        if described is None:
            return
        name, kind, attributes = described
        data = worker_ctx.data
        handle = tracing.start(name, kind, parent=tracing.carrier_of(data),
                               attributes=attributes)
        data.pop(tracing.TRACESTATE, None)
        tracing.inject(data)  # what this worker sends on names its span
        self._spans[worker_ctx] = handle

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        handle = self._spans.get(worker_ctx)
        if handle is not None and exc_info is not None:
            tracing.record_error(handle[0], exc_info[1])

    def worker_teardown(self, worker_ctx):
        tracing.finish(self._spans.pop(worker_ctx, None))
