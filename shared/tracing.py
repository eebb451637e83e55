"""OpenTelemetry tracing for every process of the platform, configured by ``OTEL_*`` only.

``setup(service)`` runs once per process (after gunicorn's fork in the gateway; from the
``Tracing`` provider and the ``Database`` provider in a service). It reads OpenTelemetry's
standard variables and nothing else:

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``: where spans go
  (OTLP over HTTP/protobuf). Neither set, or ``OTEL_SDK_DISABLED=true``: tracing is off, no
  provider, exporter or thread is made and every helper here returns at its first line.
- ``OTEL_SERVICE_NAME`` (default: the service's name), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
  ``OTEL_BSP_*`` (the export queue: bounded, 2048 spans by default).

Spans are exported in the background; a receiver that is down or slow costs requests
nothing: the queue fills, later spans are dropped and counted (``dropped()``, reason
``queue_full`` or ``export_failed``). A client span with no parent (a database
statement of a polling loop or a health check, a background RPC) is not sampled: traces
start where work enters the platform.

The context travels as the W3C ``traceparent`` / ``tracestate`` pair in any dict: nameko
context data (so AMQP headers ``nameko.traceparent``), an outbox row, HTTP headers.
``inject``, ``extract`` and ``span`` are the hooks kernel code calls; ``bind`` carries the
current context into a function run on another greenthread (eventlet starts each one with
an empty context).
"""

import contextlib
import logging
import os
import re
import threading

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACEPARENT", "TRACESTATE", "SpanKind", "Status", "StatusCode", "setup", "enabled",
           "shutdown", "span", "start", "finish", "inject", "extract", "carrier_of",
           "trace_id_of", "current_ids", "traceresponse", "bind", "record_error",
           "dropped", "use_provider"]

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_propagator = TraceContextTextMapPropagator()


class _State:
    def __init__(self):
        self.pid = None
        self.tracer = None  # None: tracing is off in this process
        self.provider = None
        self.dropped = {}
        self.on_drop = []
        self.lock = threading.Lock()


_state = _State()


# -- setup --------------------------------------------------------------------------------------

def _endpoint(environ):
    return (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def _disabled(environ):
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def setup(service, on_drop=None, environ=None):
    """Set tracing up for this process (once per process id; later calls only add
    ``on_drop``). Returns whether tracing is on. ``on_drop(count, reason)`` is called for
    spans dropped (a metric's ``inc``)."""
    environ = os.environ if environ is None else environ
    with _state.lock:
        if on_drop is not None and on_drop not in _state.on_drop:
            _state.on_drop.append(on_drop)
        if _state.pid == os.getpid():
            return _state.tracer is not None
        _state.pid = os.getpid()
        _state.tracer = _state.provider = None
        if _disabled(environ) or not _endpoint(environ):
            return False
        provider = _make_provider(service, environ)
        _install(provider)
    log.info("tracing on: spans of %s go to %s", service, _endpoint(environ))
    return True


def _make_provider(service, environ):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    from shared import compat

    attributes = {} if environ.get("OTEL_SERVICE_NAME", "").strip() \
        else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes),
                              sampler=EntrypointsOnly(compat.sampler_from_environment()))
    processor = compat.counting_span_processor(_CountingExporter(OTLPSpanExporter()),
                                               _count_drop)
    provider.add_span_processor(processor)
    return provider


def _install(provider):
    """Make ``provider`` the process's (the API allows one per process) and instrument
    SQLAlchemy: every engine created from now on gets a span per statement."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = provider.get_tracer("plinth")
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # no SQL comments (they would defeat PostgreSQL's statement cache). The 0.66b1
        # instrumentation declares SQLAlchemy < 2.1 and would refuse 2.1 without a word; it
        # works through SQLAlchemy's engine events, which 2.1 keeps
        # (tests/unit/test_kernel_tracing.py checks the spans with the installed version).
        instrumentor.instrument(tracer_provider=provider, enable_commenter=False,
                                skip_dep_check=True)


def use_provider(provider):
    """Trace with ``provider`` (a test's, with an in-memory exporter) instead of the global
    one; ``None`` turns tracing off again. Nothing else is instrumented."""
    _state.pid = os.getpid()
    _state.provider = provider
    _state.tracer = provider.get_tracer("plinth") if provider is not None else None


def enabled():
    return _state.tracer is not None


def shutdown():
    """Export what is queued (bounded by the processor's timeout) before the process ends."""
    if _state.provider is not None:
        _state.provider.shutdown()


def dropped():
    """Spans dropped in this process so far, in all."""
    return sum(_state.dropped.values())


def _count_drop(count, reason):
    _state.dropped[reason] = _state.dropped.get(reason, 0) + count
    for hook in list(_state.on_drop):
        try:
            hook(count, reason)
        except Exception:  # a metric must never fail the span's owner (logged)
            log.debug("tracing on_drop hook failed", exc_info=True)


class _CountingExporter:
    """The OTLP exporter, counting the spans of every batch it could not deliver."""

    def __init__(self, exporter):
        self.exporter = exporter

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            _count_drop(len(spans), "export_failed")
        return result

    def shutdown(self):
        self.exporter.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.exporter.force_flush(timeout_millis)


class EntrypointsOnly:
    """A sampler: ``sampler``'s decision, except that a CLIENT span with no parent (a
    statement of a polling loop or a health check, a background call) is dropped: traces
    start where work enters (server, consumer, producer and internal spans: timers)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None,
                      links=None, trace_state=None):
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind is SpanKind.CLIENT and not links:
            return SamplingResult(Decision.DROP)
        return self.sampler.should_sample(parent_context, trace_id, name, kind, attributes,
                                          links, trace_state)

    def get_description(self):
        return f"EntrypointsOnly{{{self.sampler.get_description()}}}"


# -- propagation --------------------------------------------------------------------------------

def inject(carrier, context=None):
    """Write the current (or ``context``'s) span as ``traceparent``/``tracestate`` into
    ``carrier`` (a dict) and return it; nothing is written without a valid span."""
    _propagator.inject(carrier, context=context)
    return carrier


def extract(carrier):
    """The context of the ``traceparent``/``tracestate`` in ``carrier`` (a dict or HTTP
    headers); a missing or malformed one gives an empty context (a new trace), never an
    error."""
    if not carrier:
        return otel_context.Context()
    try:
        return _propagator.extract(carrier)
    except (TypeError, ValueError, AttributeError):
        return otel_context.Context()


def carrier_of(source):
    """Only the trace context entries of ``source`` (a dict), e.g. to store them."""
    return {key: source[key] for key in (TRACEPARENT, TRACESTATE)
            if isinstance(source.get(key), str)}


def trace_id_of(carrier):
    """The trace id (32 hex digits) of the ``traceparent`` in ``carrier``, else None."""
    value = carrier.get(TRACEPARENT) if carrier else None
    match = _TRACEPARENT.match(value) if isinstance(value, str) else None
    if match is None or match.group(1) == "ff" or not int(match.group(2), 16) \
            or not int(match.group(3), 16):
        return None
    return match.group(2)


def current_ids():
    """(trace_id, span_id) of the current span as hex, or (None, None)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def traceresponse(span_):
    """The W3C Trace Context Level 2 ``traceresponse`` value naming ``span_``, or None."""
    context = span_.get_span_context() if span_ is not None else None
    if context is None or not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def bind(function):
    """``function``, run in the context current now wherever it is called later (a new
    greenthread starts with an empty context)."""
    if _state.tracer is None:
        return function
    captured = otel_context.get_current()

    def bound(*args, **kwargs):
        token = otel_context.attach(captured)
        try:
            return function(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return bound


# -- spans --------------------------------------------------------------------------------------

def start(name, kind=SpanKind.INTERNAL, parent=None, attributes=None, links=None):
    """Start a span and make it current: child of ``parent`` (a carrier dict, a Context, or
    None for the current context). Returns a handle for ``finish`` (None when tracing is
    off)."""
    tracer = _state.tracer
    if tracer is None:
        return None
    if isinstance(parent, dict) and not isinstance(parent, otel_context.Context):
        parent = extract(parent)  # a carrier (a Context is a dict too)
    new = tracer.start_span(name, context=parent, kind=kind, attributes=attributes,
                            links=links, record_exception=False,
                            set_status_on_exception=False)
    token = otel_context.attach(trace.set_span_in_context(new, parent))
    return new, token


def finish(handle, error=None):
    """End the span ``start`` returned (recording ``error`` if given) and restore the
    context that was current before it."""
    if handle is None:
        return
    new, token = handle
    if error is not None:
        record_error(new, error)
    new.end()
    try:
        otel_context.detach(token)
    except ValueError:  # detached on another greenthread's context: nothing to restore
        pass


def open_span(name, kind=SpanKind.INTERNAL, parent=None, attributes=None):
    """Start a span without making it current (for work that keeps several open at once, as
    the outbox relay does for a batch of publishes). Returns the span, or None when tracing
    is off; end it with ``close_span``. ``parent`` as for ``start``."""
    tracer = _state.tracer
    if tracer is None:
        return None
    if isinstance(parent, dict) and not isinstance(parent, otel_context.Context):
        parent = extract(parent)
    return tracer.start_span(name, context=parent, kind=kind, attributes=attributes,
                             record_exception=False, set_status_on_exception=False)


def inject_span(carrier, span_):
    """``inject`` with ``span_`` (from ``open_span``) as the parent the carrier names."""
    return inject(carrier, context=trace.set_span_in_context(span_))


def close_span(span_, error=None):
    if span_ is None:
        return
    if error is not None:
        record_error(span_, error)
    span_.end()


@contextlib.contextmanager
def span(name, kind=SpanKind.INTERNAL, parent=None, attributes=None, links=None):
    """``with span("relay publish", SpanKind.PRODUCER, parent=row_context) as s:``; ``s`` is
    None when tracing is off. An exception escaping the block is recorded by type name."""
    handle = start(name, kind, parent, attributes, links)
    try:
        yield handle[0] if handle is not None else None
    except BaseException as exc:
        finish(handle, exc)
        handle = None
        raise
    finally:
        finish(handle)


def record_error(span_, exc):
    """Mark ``span_`` as failed by ``exc``'s type name only: an error's message or traceback
    may hold data (SQL values, personal data) that must not leave the process. A typed
    client error (``PlinthError`` below 500: not found, invalid...) names its type without
    failing the span."""
    if span_ is None or not span_.is_recording():
        return
    name = type(exc).__name__
    span_.set_attribute("error.type", name)
    status = getattr(exc, "status", 500)
    if not isinstance(status, int) or status >= 500:
        span_.set_status(Status(StatusCode.ERROR, name))
