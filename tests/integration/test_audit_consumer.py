"""Completeness: every event of every configured source lands in the trail, exactly once."""

import json

import pytest
from kombu import Connection

from audit import entries
from audit.service import AuditService
from authz.service import AuthzService
from identity.service import IdentityService
from tests.helpers import new_user
from tests.support.audit_helpers import (
    EventPublisher,
    Trail,
    consumer_of,
    envelope,
    wait_for_entries,
    wait_until,
)


@pytest.fixture
def publisher(amqp_uri):
    pub = EventPublisher(amqp_uri)
    yield pub
    pub.close()


def test_identity_events_land_in_the_trail_with_their_context(start_service, rpc):
    start_service(AuditService)
    start_service(IdentityService)
    start_service(AuthzService)  # identity asks it who the administrators are, to disable
    user = new_user(rpc)
    rpc.call("identity", "disable_user", [user["id"]],
             context={"request_id": "req-audit-ctx-1", "actor_type": "user",
                      "actor_id": "admin-1"})
    [disabled] = wait_for_entries(rpc, 1, request_id="req-audit-ctx-1")
    assert disabled["action"] == "user.disabled"
    assert disabled["source"] == "identity"
    assert disabled["subject"] == user["id"]
    assert disabled["actor"] == {"id": "admin-1", "type": "user"}
    assert disabled["outcome"] == "success"
    [created] = wait_for_entries(rpc, 1, subject=user["id"], action="user.created")
    assert created["data"]["email"] == user["email"]
    assert "password" not in json.dumps(created)
    assert created["seq"] < disabled["seq"]


def test_a_feature_service_is_picked_up_by_configuration_alone(start_service, rpc, publisher):
    start_service(AuditService, AUDIT_SOURCES="identity, billing")
    ignored = publisher.publish(envelope("invoice.paid", source="shop"))
    wanted = publisher.publish(envelope("invoice.paid", source="billing", data={"cents": 1200}))
    [entry] = wait_for_entries(rpc, 1, source="billing")
    assert entry["event_id"] == wanted["event_id"]
    assert entry["data"] == {"cents": 1200}
    # published before the wanted one on the same channel: it would be here by now if routed
    assert rpc.call("audit", "query", kwargs={"source": "shop"})["items"] == []
    assert rpc.call("audit", "query",
                    kwargs={"request_id": ignored["request_id"]})["items"] == []


def test_redelivered_and_republished_events_are_recorded_once(fresh_pg_uri, start_service, rpc,
                                                             publisher):
    container = start_service(AuditService, DB_URI=fresh_pg_uri, AUDIT_BATCH_WAIT_MS=20)
    event = envelope("user.updated", data={"changes": {"display_name": "A"}})
    for _ in range(3):
        publisher.publish(event)
    # the same event id with other content is the same event: the first version stands
    publisher.publish({**event, "data": {"changes": {"display_name": "B"}}})
    marker = publisher.publish(envelope("user.updated"))
    wait_for_entries(rpc, 1, request_id=marker["request_id"])
    [entry] = rpc.call("audit", "query", kwargs={"request_id": event["request_id"]})["items"]
    assert entry["data"] == {"changes": {"display_name": "A"}}
    trail = Trail(fresh_pg_uri)
    assert trail.count() == 2
    trail.close()
    consumer = consumer_of(container)
    assert (consumer.stats.received, consumer.stats.duplicates) == (5, 3)
    assert rpc.call("audit", "verify")["ok"] is True


def test_events_without_a_usable_envelope_are_still_recorded(start_service, rpc, publisher):
    start_service(AuditService, AUDIT_SOURCES="identity,legacy", AUDIT_BATCH_WAIT_MS=20)
    publisher.publish(b"\xff not json at all", source="legacy", routing_key="thing.broke",
                      raw=True)
    publisher.publish(b"[1, 2, 3]", source="legacy", routing_key="thing.listed", raw=True)
    publisher.publish({"data": {"x": 1}, "occurred_at": "yesterday", "actor": "nobody",
                       "event_id": 42}, source="legacy", routing_key="thing.sparse",
                      headers={"nameko.request_id": "req-sparse-1",
                               "nameko.actor_type": "service", "nameko.actor_id": "cron"})
    publisher.publish({"event_type": "thing.nul\x00led", "subject": "s\x00ub",
                       "data": {"note": "a\x00b", "ratio": float("nan")}},
                      source="legacy", routing_key="thing.nul")
    items = wait_for_entries(rpc, 4, source="legacy")
    by_action = {e["action"]: e for e in items}
    assert by_action["thing.broke"]["data"] == {"_malformed": "not JSON", "_bytes": 17}
    assert by_action["thing.broke"]["outcome"] == "unknown"
    assert by_action["thing.listed"]["data"]["_malformed"] == "not a JSON object"
    sparse = by_action["thing.sparse"]
    assert sparse["request_id"] == "req-sparse-1"
    assert sparse["actor"] == {"id": "cron", "type": "service"}
    assert sparse["data"] == {"x": 1}
    nul = by_action["thing.nul\ufffdled"]
    assert nul["subject"] == "s\ufffdub"
    assert nul["data"] == {"note": "a\ufffdb", "ratio": "nan"}
    # the made-up event ids are stable, so a redelivery of a malformed event is still one entry
    publisher.publish(b"\xff not json at all", source="legacy", routing_key="thing.broke",
                      raw=True)
    marker = publisher.publish(envelope("thing.marked", source="legacy"))
    wait_for_entries(rpc, 1, request_id=marker["request_id"])
    assert len(rpc.call("audit", "query", kwargs={"action": "thing.broke"})["items"]) == 1


def test_failure_events_are_recorded_with_a_failure_outcome(start_service, rpc, publisher):
    start_service(AuditService, AUDIT_SOURCES="auth", AUDIT_BATCH_WAIT_MS=20)
    failed = publisher.publish(envelope("user.login_failed", source="auth",
                                        data={"email": "x@example.test", "password": "guess"}))
    authed = publisher.publish(envelope("user.authed", source="auth",
                                        data={"session": {"id": "s1", "refresh_token": "r"}}))
    [entry] = wait_for_entries(rpc, 1, request_id=failed["request_id"])
    assert entry["outcome"] == "failure"
    assert entry["data"] == {"email": "x@example.test", "password": "[REDACTED]"}
    [entry] = wait_for_entries(rpc, 1, request_id=authed["request_id"])
    assert entry["outcome"] == "success"
    assert entry["data"] == {"session": {"id": "s1", "refresh_token": "[REDACTED]"}}
    assert rpc.call("audit", "query", kwargs={"outcome": "failure", "source": "auth"})[
        "items"][0]["event_id"] == failed["event_id"]


def test_stopping_writes_and_acknowledges_everything_it_took(fresh_pg_uri, start_service,
                                                            publisher, amqp_uri):
    # a batch that would wait 60 s: only the graceful stop writes it
    container = start_service(AuditService, DB_URI=fresh_pg_uri, AUDIT_BATCH_SIZE=10_000,
                              AUDIT_BATCH_WAIT_MS=60_000)
    events = [publisher.publish(envelope("thing.buffered")) for _ in range(150)]
    consumer = consumer_of(container)
    assert wait_until(lambda: consumer.stats.received == 150)
    trail = Trail(fresh_pg_uri)
    assert trail.count() == 0
    container.stop()
    assert trail.count() == 150
    assert {r["event_id"] for r in trail.rows("SELECT event_id FROM audit.entries")} == \
        {e["event_id"] for e in events}
    assert _queue_depth(amqp_uri) == 0
    trail.close()


def test_a_crash_loses_nothing_and_the_redelivery_is_not_duplicated(fresh_pg_uri, start_service,
                                                                   rpc, publisher):
    first = start_service(AuditService, DB_URI=fresh_pg_uri, AUDIT_BATCH_SIZE=100,
                          AUDIT_BATCH_WAIT_MS=60_000)
    events = [publisher.publish(envelope("thing.crashed")) for _ in range(130)]
    consumer = consumer_of(first)
    # 100 written and acknowledged; 30 taken but neither written nor acknowledged
    assert wait_until(lambda: consumer.stats.written == 100 and consumer.stats.received == 130)
    first.kill()
    trail = Trail(fresh_pg_uri)
    assert trail.count() == 100
    start_service(AuditService, DB_URI=fresh_pg_uri, AUDIT_BATCH_WAIT_MS=20)
    assert wait_until(lambda: trail.count() == 130)
    assert {r["event_id"] for r in trail.rows("SELECT event_id FROM audit.entries")} == \
        {e["event_id"] for e in events}
    assert rpc.call("audit", "verify") | {"head": None} == {
        "ok": True, "checked": 130, "problem": None, "first_bad": None, "detail": None,
        "from_seq": 1, "to_seq": 130, "head": None}
    trail.close()


def test_a_database_outage_delays_entries_but_loses_none(fresh_pg_uri, start_service,
                                                        publisher):
    container = start_service(AuditService, DB_URI=fresh_pg_uri, AUDIT_BATCH_WAIT_MS=20)
    consumer = consumer_of(container)
    trail = Trail(fresh_pg_uri)
    trail.execute("ALTER TABLE audit.entries RENAME TO entries_away")
    try:
        events = [publisher.publish(envelope("thing.delayed")) for _ in range(40)]
        assert wait_until(lambda: consumer.stats.failures >= 2)
        assert consumer.stats.written == 0
    finally:
        trail.execute("ALTER TABLE audit.entries_away RENAME TO entries")
    assert wait_until(lambda: trail.count() == 40, timeout=15)
    assert consumer.stats.placeholders == 0
    assert {r["event_id"] for r in trail.rows("SELECT event_id FROM audit.entries")} == \
        {e["event_id"] for e in events}
    trail.close()


def test_a_lost_database_connection_delays_entries_but_loses_none(fresh_pg_uri, fault_proxy,
                                                                 start_service, publisher,
                                                                 amqp_uri):
    # the other outage shape: connections reset and refused (OperationalError), not a refusal
    proxy = fault_proxy(5432)
    database = fresh_pg_uri.rsplit("/", 1)[1]
    container = start_service(AuditService, AUDIT_BATCH_WAIT_MS=20,
                              DB_URI=f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}")
    consumer = consumer_of(container)
    proxy.cut()
    try:
        events = [publisher.publish(envelope("thing.delayed")) for _ in range(40)]
        assert wait_until(lambda: consumer.stats.failures >= 2)
        # taken off the queue, unacknowledged, held for the next try
        assert consumer.stats.written == 0 and _queue_depth(amqp_uri) == 0
    finally:
        proxy.restore()
    trail = Trail(fresh_pg_uri)
    assert wait_until(lambda: trail.count() == 40, timeout=15)
    assert consumer.stats.placeholders == 0
    assert {r["event_id"] for r in trail.rows("SELECT event_id FROM audit.entries")} == \
        {e["event_id"] for e in events}
    trail.close()


def _queue_depth(amqp_uri, name="audit.events"):
    with Connection(amqp_uri) as conn:
        _, depth, _ = conn.default_channel.queue_declare(name, passive=True)
        return depth


def test_an_entry_the_database_refuses_becomes_a_placeholder_not_a_stuck_batch(fresh_pg_uri,
                                                                            start_service):
    container = start_service(AuditService, DB_URI=fresh_pg_uri)
    consumer = consumer_of(container)
    good = [entries.from_event(envelope("thing.fine"), "thing.fine", "identity")
            for _ in range(2)]
    # nothing from the broker can look like this (from_event keeps every field in bounds):
    # it stands for whatever the database might still refuse
    bad = {**entries.from_event(envelope("thing.odd"), "thing.odd", "identity"),
           "actor_type": "x" * 40}
    consumer._append([good[0], bad, good[1]])
    trail = Trail(fresh_pg_uri)
    rows = trail.rows("SELECT event_id, action, actor_type, outcome, data::text AS data "
                      "FROM audit.entries ORDER BY seq")
    trail.close()
    assert [r["event_id"] for r in rows] == [good[0]["event_id"], bad["event_id"],
                                             good[1]["event_id"]]
    assert (rows[1]["action"], rows[1]["outcome"]) == ("thing.odd", "unknown")
    assert json.loads(rows[1]["data"]) == {"_unrecordable": "StringDataRightTruncation"}
    assert consumer.stats.placeholders == 1
