"""Trace context through the kernel's hops in a real container on the real broker and
database: an RPC call, the outbox's publish of a task the call dispatched, and the task's
handler are one trace (spans collected in memory in this process)."""

import time
import uuid

import eventlet
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from shared import tracing
from tests.support.probe.tasks_service import TaskProbe, calls

TRACE_ID = uuid.uuid4().hex
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.EntrypointsOnly(ParentBased(
        TraceIdRatioBased(1.0))))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def _hex(span_id):
    return format(span_id, "016x")


def test_a_task_dispatched_by_an_rpc_call_runs_in_the_callers_trace(spans, start_service, rpc):
    start_service(TaskProbe)
    subject = f"traced-{uuid.uuid4().hex[:8]}"
    env = rpc.call("probe", "dispatch", ["probe.tally.count", {"subject": subject}],
                   context={"request_id": "traced", "traceparent": PARENT})
    deadline = time.monotonic() + 10
    while not calls("probe.tally.count", env["task_id"]) or not [
            s for s in spans.get_finished_spans() if s.name == "probe.tally.count process"]:
        assert time.monotonic() < deadline, "the task did not run"
        eventlet.sleep(0.05)
    mine = [s for s in spans.get_finished_spans()
            if format(s.context.trace_id, "032x") == TRACE_ID]
    by_name = {s.name: s for s in mine}
    served = by_name["probe.dispatch"]
    publish = by_name["probe.tally.count publish"]
    handled = by_name["probe.tally.count process"]
    assert _hex(served.parent.span_id) == "00f067aa0ba902b7"
    assert publish.parent.span_id == served.context.span_id
    assert handled.parent.span_id == publish.context.span_id
    assert handled.attributes["plinth.task_type"] == "probe.tally.count"
