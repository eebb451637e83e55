"""Prometheus metrics of a service process, served on its web server at ``/metrics``.

Each container has one registry (``MetricsRegistry``, a shared extension): an extension that
counts something declares it as a sub-extension and asks it for its counters by name, so two
extensions of the same kind share one counter. Values known only at scrape time (the outbox
backlog) are read by a callback registered with ``gauge``.
"""

import threading

from nameko.extensions import DependencyProvider, SharedExtension
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["MetricsRegistry", "Metrics", "CONTENT_TYPE_LATEST"]


class _Callback:
    """A collector whose gauge value is read when Prometheus scrapes."""

    def __init__(self, name, documentation, read):
        self.name, self.documentation, self.read = name, documentation, read

    def describe(self):
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self):
        value = self.read()
        if value is None:  # unknown (never measured yet): say nothing rather than a zero
            return []
        return [GaugeMetricFamily(self.name, self.documentation, value=value)]


class MetricsRegistry(SharedExtension):
    """The container's Prometheus registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._metrics = {}
        self._lock = threading.Lock()

    def counter(self, name, documentation, labelnames=()):
        """The counter ``name`` of this container, made on first use."""
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = Counter(name, documentation, list(labelnames),
                                              registry=self.registry)
            return self._metrics[name]

    def gauge(self, name, documentation, read):
        """Publish ``read()`` (a number, or None when unknown) as the gauge ``name``."""
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = _Callback(name, documentation, read)
                self.registry.register(self._metrics[name])

    def render(self):
        return generate_latest(self.registry)


class Metrics(DependencyProvider):
    """Gives a service ``self.metrics``: the container's registry (ServiceBase serves it)."""

    registry = MetricsRegistry()

    def get_dependency(self, worker_ctx):
        return self.registry
