"""Tracing through real processes: one sign-up through the gateway is one trace, from the HTTP
request to the audit entry, exported over OTLP/HTTP to a receiver of the test's own."""

import re
import time
import uuid

import pytest

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.platform import API, Platform, bearer, wait_for

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def platform(receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           # export soon, and give up on an unreachable receiver soon (the last test)
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    with Platform(env=env, name="tracing") as platform:
        yield platform


def sign_up(platform, **headers):
    response = platform.http.post(platform.url(f"{API}/users"), headers=headers, timeout=10,
                                  json={"email": f"trace-{uuid.uuid4().hex[:10]}@example.test",
                                        "password": "violet-Lantern-42-orbit"})
    assert response.status_code == 201, response.text
    return response


def trace_of(response):
    match = TRACEPARENT.match(response.headers["traceresponse"])
    assert match, response.headers["traceresponse"]
    return match.group(1), match.group(2)


def one(spans, **wanted):
    found = [s for s in spans if all(_matches(s, k, v) for k, v in wanted.items())]
    assert len(found) == 1, (wanted, [(s.service, s.kind, s.name) for s in spans])
    return found[0]


def _matches(span, key, value):
    if key.startswith("attr_"):
        return span.attributes.get(key[5:].replace("__", ".")) == value
    return getattr(span, key) == value


def whole(spans):
    """Every parent named in ``spans`` is among them (the gateway's may have a caller's)."""
    ids = {s.span_id for s in spans}
    return all(s.parent_span_id in ids for s in spans if s.parent_span_id is not None
               and not (s.service == "gateway" and s.kind == "server"))


def complete(receiver, trace_id):
    """The trace of a sign-up once whole: its last hops are in (the consumers' spans, the
    gateway's, ended after the response) and so is every span one of them names as its
    parent (each process exports on its own schedule)."""
    def ready(_spans):
        spans = receiver.trace(trace_id)
        kinds = {(s.service, s.kind) for s in spans}
        return spans if whole(spans) and {("audit", "consumer"), ("authz", "consumer"),
                                          ("gateway", "server")} <= kinds else None

    return receiver.wait_for(ready, what=f"the spans of trace {trace_id}")


def test_a_sign_up_is_one_trace_from_the_gateway_to_the_audit_entry(platform, receiver):
    response = sign_up(platform)
    trace_id, server_span_id = trace_of(response)
    spans = complete(receiver, trace_id)
    assert {s.trace_id for s in spans} == {trace_id}

    server = one(spans, service="gateway", kind="server")
    assert server.span_id == server_span_id and server.parent_span_id is None
    assert server.name == "POST /api/v1/users"
    assert server.attributes["http.route"] == "/api/v1/users"
    assert server.attributes["http.response.status_code"] == 201

    client = one(spans, service="gateway", kind="client", name="identity.create_user")
    assert client.parent_span_id == server.span_id
    handler = one(spans, service="identity", kind="server", name="identity.create_user")
    assert handler.parent_span_id == client.span_id

    statements = [s for s in spans if s.service == "identity" and s.kind == "client"]
    assert statements and all(s.attributes.get("db.system") == "postgresql"
                              or s.attributes.get("db.system.name") == "postgresql"
                              for s in statements)
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in statements)

    publish = one(spans, service="identity", kind="producer", name="user.created publish")
    assert publish.parent_span_id == handler.span_id
    authz = one(spans, service="authz", kind="consumer", name="user.created process")
    assert authz.parent_span_id == publish.span_id
    assert authz.attributes["plinth.handler"] == "authz.on_user_created"
    audit = [s for s in spans if s.service == "audit" and s.kind == "consumer"
             and s.attributes.get("plinth.event_type") == "user.created"]
    assert [s.parent_span_id for s in audit] == [publish.span_id]

    # no token, no secret in any attribute
    text = repr([s.attributes for s in spans])
    assert "violet-Lantern" not in text and "password" not in text.lower().replace(
        "password_", "")


def test_the_audit_entry_and_the_requests_log_lines_carry_its_trace_id(platform, receiver):
    response = sign_up(platform)
    trace_id, _ = trace_of(response)
    complete(receiver, trace_id)
    admin = bearer(platform.admin_token())

    def entries():
        found = platform.http.get(platform.url(f"{API}/audit/events"), headers=admin,
                                  params={"trace_id": trace_id}, timeout=10)
        assert found.status_code == 200, found.text
        return found.json()["items"]

    items = wait_for(entries, timeout=10, what="the audit entry of the sign-up")
    assert {i["action"] for i in items} >= {"user.created"}
    assert {i["trace_id"] for i in items} == {trace_id}
    assert all(i["request_id"] == response.headers["X-Request-ID"] for i in items)

    request_id = response.headers["X-Request-ID"]
    lines = wait_for(lambda: [r for r in platform.log_records("gateway")
                              if r.get("request_id") == request_id],
                     what="the gateway's log lines of the request")
    assert {line["trace_id"] for line in lines} == {trace_id}
    assert all(line["span_id"] for line in lines)

    bad = platform.http.get(platform.url(f"{API}/audit/events"), headers=admin,
                            params={"trace_id": "not-a-trace"}, timeout=10)
    assert bad.status_code == 400 and "trace_id" in bad.text


def test_a_malformed_traceparent_is_a_new_trace_and_the_request_succeeds(platform, receiver):
    response = sign_up(platform, traceparent="00-zzzz-nonsense-01", tracestate="x=1")
    trace_id, _ = trace_of(response)
    spans = complete(receiver, trace_id)
    assert one(spans, service="gateway", kind="server").parent_span_id is None


def test_a_sampled_off_caller_is_answered_and_nothing_of_its_trace_is_exported(
        platform, receiver):
    trace_id = uuid.uuid4().hex
    response = sign_up(platform, traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-00")
    assert trace_of(response)[0] == trace_id
    # a sampled request made after it is exported whole: every process has flushed since
    later, _ = trace_of(sign_up(platform))
    complete(receiver, later)
    time.sleep(0.5)
    assert receiver.trace(trace_id) == []


def test_a_provisioning_sagas_steps_are_in_the_trace_of_the_request_starting_it(
        platform, receiver):
    admin = bearer(platform.admin_token())
    role = f"trace-{uuid.uuid4().hex[:8]}"
    created = platform.http.post(platform.url(f"{API}/roles"), headers=admin, timeout=10,
                                 json={"name": role, "permissions": ["reports:read"]})
    assert created.status_code == 201, created.text
    response = platform.http.post(platform.url(f"{API}/admin/users"), headers=admin,
                                  timeout=30, json={
                                      "email": f"trace-{uuid.uuid4().hex[:10]}@example.test",
                                      "password": "violet-Lantern-42-orbit", "roles": [role]})
    assert response.status_code == 201, response.text
    trace_id, _ = trace_of(response)

    def steps(_spans):
        spans = receiver.trace(trace_id)
        names = {s.name for s in spans}
        kinds = {(s.service, s.kind) for s in spans}
        return spans if whole(spans) and {
            "saga provision_user create_user", "saga provision_user assign_roles",
            "authz.assign_role"} <= names and {("authz", "server"), ("gateway", "server")} \
            <= kinds else None

    spans = receiver.wait_for(steps, what="the saga's steps in the request's trace")
    started = one(spans, service="identity", kind="server", name="identity.provision_user")
    create = one(spans, name="saga provision_user create_user")
    assign = one(spans, name="saga provision_user assign_roles")
    assert create.parent_span_id == started.span_id == assign.parent_span_id
    call = one(spans, service="identity", kind="client", name="authz.assign_role")
    assert call.parent_span_id == assign.span_id
    served = one(spans, service="authz", kind="server", name="authz.assign_role")
    assert served.parent_span_id == call.span_id


def _metric(text, name):
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values)


def test_with_the_receiver_down_requests_are_unaffected_and_drops_are_counted(
        platform, receiver):
    receiver.stop()
    started = time.monotonic()
    for _ in range(5):
        sign_up(platform)
    assert time.monotonic() - started < 10
    wait_for(lambda: _metric(platform.http.get(platform.url("/metrics"), timeout=10).text,
                             "gateway_trace_spans_dropped_total") > 0,
             timeout=15, what="the gateway to count dropped spans")
    wait_for(lambda: _metric(platform.http.get(platform.service_url("identity", "/metrics"),
                                               timeout=10).text,
                             "plinth_trace_spans_dropped") > 0,
             timeout=15, what="identity to count dropped spans")
