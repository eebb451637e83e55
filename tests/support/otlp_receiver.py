"""A real OTLP/HTTP trace receiver for tests: what Jaeger or a collector would take in.

``OtlpReceiver`` serves ``POST /v1/traces`` (``application/x-protobuf``, gzip or not) on a
free local port in a thread, decodes each ``ExportTraceServiceRequest`` with
opentelemetry-proto and keeps the spans as plain ``Span`` records::

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        ...
        spans = receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == tid])

``stop()`` closes the port, so exporters pointed at it fail (a receiver that is down).
``python -m tests.support.otlp_receiver PORT`` runs one as a process (benchmarks), counting
spans only; ``GET /count`` answers how many it took.
"""

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OtlpReceiver", "Span", "KINDS"]

# opentelemetry.proto.trace.v1.Span.SpanKind values
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
         5: "consumer"}


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    attributes: dict = field(default_factory=dict)
    links: list = field(default_factory=list)  # [(trace_id, span_id)]
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    status_message: str = ""


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(v) for v in value.values]
    return value


def _attributes(key_values):
    return {kv.key: _value(kv.value) for kv in key_values}


def decode(body):
    """The ``Span`` records of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(Span(
                    service=resource.get("service.name", ""), name=span.name,
                    kind=KINDS.get(span.kind, str(span.kind)),
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex() or None,
                    attributes=_attributes(span.attributes),
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    status_code=span.status.code, status_message=span.status.message))
    return spans


def _count(body):
    """Only how many spans a request holds (a benchmark's receiver: cheap, keeps nothing)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return [None] * sum(len(scope.spans) for resource in request.resource_spans
                        for scope in resource.scope_spans)


class OtlpReceiver:
    def __init__(self, host="127.0.0.1", port=0, keep=True):
        receiver = self
        self.keep = keep
        self.count = 0
        self.spans = []
        self.requests = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    spans = decode(body) if receiver.keep else _count(body)
                except Exception:  # noqa: BLE001 - a bad request is the sender's error: 400
                    self.send_error(400, "not an ExportTraceServiceRequest")
                    return
                receiver._add(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self):
                body = str(receiver.count).encode()
                self.send_response(200 if self.path == "/count" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://{host}:{self.port}"
        self._thread = None

    def _add(self, spans):
        with self._lock:
            if self.keep:
                self.spans.extend(spans)
            self.count += len(spans)
            self.requests += 1

    def start(self):
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="otlp-receiver")
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def snapshot(self):
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id):
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(self, predicate, timeout=15.0, what="the spans"):
        """Poll ``predicate(spans)`` until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.snapshot())
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)


if __name__ == "__main__":
    import sys

    OtlpReceiver(port=int(sys.argv[1]), keep=False).server.serve_forever()
