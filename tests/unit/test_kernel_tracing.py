"""shared.tracing: configuration from OTEL_* only, W3C propagation helpers, the sampler, error
recording, drop counting; and the gateway's server and client spans (in-memory exporter)."""

import threading

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from shared import compat, tracing
from shared.errors import Invalid, NotFound
from shared.tracing import SpanKind
from tests.support.gateway_helpers import API, close_app, make_app
from tests.support.otlp_receiver import decode

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    """Tracing on in this process, into an in-memory exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.EntrypointsOnly(ParentBased(
        TraceIdRatioBased(1.0))))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def hex_ids(span):
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def w3c(span):
    """The traceparent (or traceresponse) value naming ``span``."""
    trace_id, span_id = hex_ids(span)
    return f"00-{trace_id}-{span_id}-{int(span.context.trace_flags):02x}"


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("environ", [
    {},
    {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
    {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": " ", "OTEL_SDK_DISABLED": "false"},
])
def test_without_an_endpoint_or_when_disabled_tracing_is_off_and_costs_nothing(environ):
    saved = tracing._state.pid
    tracing._state.pid = None
    try:
        assert tracing.setup("identity", environ=environ) is False
        assert not tracing.enabled()
        assert tracing.start("x", SpanKind.SERVER) is None
        with tracing.span("x") as span:
            assert span is None
        assert tracing.bind(len) is len  # no wrapper when off
    finally:
        tracing._state.pid = saved


# -- propagation --------------------------------------------------------------------------------
def test_a_valid_traceparent_is_continued_and_its_tracestate_kept(spans):
    with tracing.span("child", SpanKind.SERVER,
                      parent={"traceparent": PARENT, "tracestate": "vendor=1"}):
        carrier = tracing.inject({})
    (span,) = spans.get_finished_spans()
    assert hex_ids(span)[0] == TRACE_ID
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert carrier["traceparent"] == w3c(span)
    assert carrier["tracestate"] == "vendor=1"


@pytest.mark.parametrize("bad", [
    "garbage", "00-xyz-00f067aa0ba902b7-01", f"00-{TRACE_ID}-0000000000000000-01",
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01", f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
    f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", "", 12,
])
def test_a_malformed_traceparent_starts_a_new_trace_never_an_error(spans, bad):
    with tracing.span("request", SpanKind.SERVER, parent={"traceparent": bad}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None and hex_ids(span)[0] != TRACE_ID
    assert tracing.trace_id_of({"traceparent": bad}) is None


def test_trace_id_of_reads_a_valid_traceparent_only():
    assert tracing.trace_id_of({"traceparent": PARENT}) == TRACE_ID
    assert tracing.trace_id_of({}) is None and tracing.trace_id_of(None) is None


def test_carrier_of_keeps_only_the_trace_context():
    data = {"traceparent": PARENT, "tracestate": "a=1", "request_id": "r", "x": None}
    assert tracing.carrier_of(data) == {"traceparent": PARENT, "tracestate": "a=1"}
    assert tracing.carrier_of({"traceparent": 5}) == {}


def test_traceresponse_names_the_span_in_w3c_level_2_form(spans):
    with tracing.span("request", SpanKind.SERVER) as span:
        value = tracing.traceresponse(span)
    assert value == w3c(spans.get_finished_spans()[0])
    assert tracing.traceresponse(None) is None


def test_current_ids_are_the_current_spans_and_none_outside_one(spans):
    assert tracing.current_ids() == (None, None)
    with tracing.span("work", SpanKind.SERVER):
        ids = tracing.current_ids()
    assert ids == hex_ids(spans.get_finished_spans()[0])


def test_bind_carries_the_context_into_another_thread(spans):
    seen = []
    with tracing.span("parent", SpanKind.SERVER):
        work = tracing.bind(lambda: seen.append(tracing.current_ids()))
        unbound = threading.Thread(target=lambda: seen.append(tracing.current_ids()))
    thread = threading.Thread(target=work)
    thread.start(), unbound.start()
    thread.join(), unbound.join()
    parent = hex_ids(spans.get_finished_spans()[0])
    assert parent in seen and (None, None) in seen


# -- sampling -----------------------------------------------------------------------------------
def test_a_client_span_without_a_parent_is_not_sampled_but_entrypoints_are(spans):
    with tracing.span("SELECT 1", SpanKind.CLIENT):  # a health check's statement
        pass
    with tracing.span("timer auth.maintain", SpanKind.INTERNAL):
        with tracing.span("SELECT 1", SpanKind.CLIENT):
            pass
    assert [s.name for s in spans.get_finished_spans()] == ["SELECT 1", "timer auth.maintain"]


def test_a_sampled_off_parent_exports_nothing(spans):
    with tracing.span("request", SpanKind.SERVER,
                      parent={"traceparent": PARENT[:-2] + "00"}) as span:
        with tracing.span("child", SpanKind.CLIENT):
            carrier = tracing.inject({})
    assert spans.get_finished_spans() == ()
    assert not span.is_recording()
    assert carrier["traceparent"].endswith("-00")  # the decision travels on


# -- errors -------------------------------------------------------------------------------------
def test_errors_are_recorded_by_type_name_only(spans):
    with pytest.raises(RuntimeError):
        with tracing.span("boom", SpanKind.SERVER):
            raise RuntimeError("SELECT secret FROM users WHERE password = 'hunter2'")
    with pytest.raises(NotFound):
        with tracing.span("missing", SpanKind.SERVER):
            raise NotFound("user 42 not found")
    boom, missing = spans.get_finished_spans()
    assert boom.attributes["error.type"] == "RuntimeError"
    assert boom.status.is_ok is False and boom.status.description == "RuntimeError"
    assert boom.events == ()  # no exception event: no message, no stack trace
    assert missing.attributes["error.type"] == "NotFound"
    assert missing.status.is_unset  # a client's error is not the service's failure
    tracing.record_error(None, Invalid("x"))  # no span: nothing to do


# -- drops --------------------------------------------------------------------------------------
class _Failing:
    def export(self, spans):
        return SpanExportResult.FAILURE

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=None):
        return True


def test_spans_an_unreachable_receiver_did_not_take_are_counted():
    before, seen = tracing.dropped(), []
    tracing.setup("test", on_drop=lambda n, reason: seen.append((n, reason)))
    tracing._CountingExporter(_Failing()).export([object(), object()])
    assert tracing.dropped() == before + 2 and (2, "export_failed") in seen


def test_spans_a_full_export_queue_drops_are_counted(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    entered, release, drops = threading.Event(), threading.Event(), []

    class Stuck(_Failing):
        def export(self, spans):
            entered.set()
            release.wait(10)
            return SpanExportResult.SUCCESS

    processor = compat.counting_span_processor(Stuck(), lambda n, why: drops.append(why))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    tracer.start_span("first").end()
    assert entered.wait(5)  # the exporter is busy: the queue now fills
    for n in range(5):
        tracer.start_span(f"s{n}").end()
    release.set()
    provider.shutdown()
    assert drops == ["queue_full"] * 3


# -- the receiver's decoding --------------------------------------------------------------------
def test_the_test_receiver_decodes_what_the_otlp_exporter_sends(spans):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    with tracing.span("request", SpanKind.SERVER, attributes={"http.route": "/x"}):
        with tracing.span("call", SpanKind.CLIENT):
            pass
    decoded = decode(encode_spans(spans.get_finished_spans()).SerializeToString())
    call, request = decoded
    assert (request.kind, call.kind) == ("server", "client")
    assert call.parent_span_id == request.span_id and call.trace_id == request.trace_id
    assert request.attributes == {"http.route": "/x"}


# -- the gateway --------------------------------------------------------------------------------
@pytest.fixture
def gateway():
    app = make_app(AUTHZ_EVENTS=False, SESSION_EVENTS=False)
    calls = []

    class Backend:
        def call(self, service, method, kwargs, timeout, context):
            calls.append(context)
            return {"id": "0190c0de-0000-7000-8000-000000000001", "email": "a@b.test",
                    "display_name": "A", "status": "active", "type": "user",
                    "created_at": "2026-11-22T09:00:00+00:00",
                    "updated_at": "2026-11-22T09:00:00+00:00"}

        def connected(self, wait=0.0):
            return True

        last_error = None

        def close(self):
            pass

    app.extensions["plinth"].rpc.backend = Backend()
    yield app.test_client(), calls
    close_app(app)


def sign_up(client, **headers):
    return client.post(f"{API}/users", headers=headers,
                       json={"email": "ann@example.test", "password": "long-enough-pass"})


def test_a_request_is_one_server_span_named_by_its_route_continuing_the_callers_trace(
        gateway, spans):
    client, calls = gateway
    response = sign_up(client, traceparent=PARENT, tracestate="vendor=1")
    assert response.status_code == 201
    server = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER][0]
    rpc = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT][0]
    assert server.name == "POST /api/v1/users"
    assert hex_ids(server)[0] == TRACE_ID
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.attributes["http.route"] == "/api/v1/users"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 201
    assert rpc.name == "identity.create_user" and rpc.parent.span_id == server.context.span_id
    assert calls[0]["traceparent"] == w3c(rpc)
    assert calls[0]["tracestate"] == "vendor=1"
    assert response.headers["traceresponse"] == w3c(server)
    assert otel_context.get_current() == otel_context.Context()  # nothing left attached


def test_a_malformed_traceparent_at_the_gateway_is_a_new_trace_and_a_2xx(gateway, spans):
    client, _ = gateway
    response = sign_up(client, traceparent="00-not-a-trace-01")
    assert response.status_code == 201
    value = response.headers["traceresponse"]
    assert tracing.trace_id_of({"traceparent": value}) not in (None, TRACE_ID)


def test_a_sampled_off_caller_gets_its_trace_id_back_and_nothing_is_exported(gateway, spans):
    client, calls = gateway
    response = sign_up(client, traceparent=PARENT[:-2] + "00")
    assert response.status_code == 201
    assert spans.get_finished_spans() == ()
    assert response.headers["traceresponse"].startswith(f"00-{TRACE_ID}-")
    assert response.headers["traceresponse"].endswith("-00")
    assert calls[0]["traceparent"].endswith("-00")


def test_without_tracing_the_gateway_sends_no_trace_headers(gateway):
    client, calls = gateway
    response = sign_up(client, traceparent=PARENT)
    assert response.status_code == 201
    assert "traceresponse" not in response.headers and "traceparent" not in calls[0]


# -- database statements ------------------------------------------------------------------------
def test_statements_of_the_installed_sqlalchemy_get_spans_inside_the_workers_span(spans):
    import sqlalchemy as sa
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=tracing._state.provider, skip_dep_check=True)
    try:
        engine = sa.create_engine("sqlite://")
        with tracing.span("identity.get_user", SpanKind.SERVER):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT :secret"), {"secret": "hunter2"}).all()
        with engine.connect() as conn:  # outside any worker: not sampled
            conn.execute(sa.text("SELECT 2")).all()
    finally:
        instrumentor.uninstrument()
    connect, statement, worker = spans.get_finished_spans()  # none of the unsampled SELECT 2
    assert (connect.name, statement.name, worker.name) == ("connect", "SELECT",
                                                           "identity.get_user")
    for span in (connect, statement):
        assert span.kind is SpanKind.CLIENT and span.parent.span_id == worker.context.span_id
    assert "hunter2" not in repr(dict(statement.attributes))  # the text, never the values


def test_the_sampler_is_read_from_otel_traces_sampler(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert "0.25" in compat.sampler_from_environment().get_description()
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert compat.sampler_from_environment().get_description().startswith("ParentBased")


def test_each_kind_of_entrypoint_gets_its_span_kind_and_http_endpoints_none():
    from nameko.timer import Timer
    from nameko.web.handlers import HttpRequestHandler

    from shared.events import EventHandler
    from shared.rpc import Rpc
    from shared.tasks import TaskEntrypoint
    from shared.worker_tracing import describe

    def bound(entrypoint, name):
        entrypoint.method_name = name
        return entrypoint

    rpc = describe("identity", bound(Rpc(), "get_user"))
    event = describe("authz", bound(EventHandler("identity", "user.created"), "on_created"))
    timer = describe("auth", bound(Timer(interval=60), "maintain"))
    task = describe("probe", bound(TaskEntrypoint("probe.tally.count"), "count"))
    assert rpc[:2] == ("identity.get_user", SpanKind.SERVER)
    assert event[:2] == ("user.created process", SpanKind.CONSUMER)
    assert event[2]["plinth.handler"] == "authz.on_created"
    assert timer[:2] == ("timer auth.maintain", SpanKind.INTERNAL)
    assert task[:2] == ("probe.tally.count process", SpanKind.CONSUMER)
    assert describe("identity", bound(HttpRequestHandler("GET", "/health"), "h")) is None
