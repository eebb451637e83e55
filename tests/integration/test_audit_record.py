"""record(entry): anything that is not an event of a core service, validated and chained."""

import json
import uuid

import pytest

from audit.service import AuditService
from shared.errors import Invalid
from shared.ids import is_uuid
from tests.support.audit_helpers import Trail

CALLER = {"request_id": "req-record-ctx", "actor_type": "user", "actor_id": "caller-7"}


@pytest.fixture
def audit(start_service):
    return start_service(AuditService, AUDIT_MAX_DATA_BYTES=2000,
                         AUDIT_REDACT_KEYS="iban, card_number")


def record(rpc, context=None, **fields):
    return rpc.call("audit", "record", kwargs=fields, context=context)


def test_a_minimal_record_takes_who_and_which_request_from_the_caller(audit, rpc):
    entry = record(rpc, CALLER, action="report.exported", source="gateway")
    assert entry["actor"] == {"id": "caller-7", "type": "user"}
    assert entry["request_id"] == "req-record-ctx"
    assert (entry["action"], entry["source"], entry["outcome"]) == \
        ("report.exported", "gateway", "success")
    assert is_uuid(entry["id"]) and is_uuid(entry["event_id"])
    assert entry["data"] == {} and entry["subject"] is None
    assert len(entry["hash"]) == len(entry["prev_hash"]) == 64
    assert entry["occurred_at"] <= entry["recorded_at"]
    assert rpc.call("audit", "get", [entry["id"]]) == entry


def test_what_the_entry_says_wins_over_the_callers_context(audit, rpc):
    entry = record(rpc, CALLER, action="payment.capture_failed", source="billing",
                   actor={"id": "svc-billing", "type": "service"}, request_id="req-own",
                   subject="invoice-1", occurred_at="2026-03-04T05:06:07.123456+02:00",
                   data={"amount": 12.5})
    assert entry["actor"] == {"id": "svc-billing", "type": "service"}
    assert entry["request_id"] == "req-own"
    assert entry["occurred_at"] == "2026-03-04T03:06:07.123456Z"
    assert entry["outcome"] == "failure"
    assert entry["data"] == {"amount": 12.5}
    assert record(rpc, action="job.ran", source="cron", outcome="unknown")["outcome"] == \
        "unknown"


def test_a_record_without_a_caller_context_is_a_system_actor(audit, rpc):
    entry = record(rpc, action="job.ran", source="cron")
    assert entry["actor"] == {"id": None, "type": "system"}
    assert entry["request_id"]  # the kernel gives every unit of work a request id


def test_recording_the_same_event_id_again_returns_the_first_entry(audit, rpc, pg_uri):
    event_id = str(uuid.uuid4())
    first = record(rpc, event_id=event_id, action="thing.done", source="tests",
                   data={"try": 1})
    again = record(rpc, event_id=event_id, action="thing.done", source="tests",
                   data={"try": 2})
    assert again == first
    trail = Trail(pg_uri)
    assert trail.scalar("SELECT count(*) FROM audit.entries WHERE event_id = :e",
                        e=event_id) == 1
    trail.close()


def test_secrets_never_reach_the_database(audit, rpc, pg_uri):
    secrets = ["hunter2-pw", "tok-abc", "refresh-xyz", "k3y-material", "$argon2id$v=19$m=1",
               "NL91ABNA0417164300", "4111111111111111", "cookie-monster"]
    entry = record(rpc, action="user.changed", source="tests", data={
        "password": secrets[0], "session": {"accessToken": secrets[1],
                                            "Refresh-Token": secrets[2]},
        "keys": [{"private_key": secrets[3]}], "note": secrets[4], "iban": secrets[5],
        "payment": {"card_number": secrets[6]}, "headers": {"Cookie": secrets[7]},
        "email": "kept@example.test"})
    trail = Trail(pg_uri)
    stored = trail.scalar("SELECT data::text FROM audit.entries WHERE id = :i", i=entry["id"])
    trail.close()
    for secret in secrets:
        assert secret not in stored and secret not in json.dumps(entry)
    assert "kept@example.test" in stored
    assert json.loads(stored)["session"] == {"accessToken": "[REDACTED]",
                                             "Refresh-Token": "[REDACTED]"}


@pytest.mark.parametrize("fields,field", [
    ({"source": "s"}, "action"),
    ({"action": "a.b"}, "source"),
    ({"action": "no-dots", "source": "s"}, "action"),
    ({"action": "a.b", "source": "S P A C E"}, "source"),
    ({"action": "a.b", "source": "s", "actor": {"type": "alien"}}, "actor"),
    ({"action": "a.b", "source": "s", "actor": "someone"}, "actor"),
    ({"action": "a.b", "source": "s", "outcome": "great"}, "outcome"),
    ({"action": "a.b", "source": "s", "data": "text"}, "data"),
    ({"action": "a.b", "source": "s", "occurred_at": "13/13/2026"}, "occurred_at"),
    ({"action": "a.b", "source": "s", "event_id": "with spaces"}, "event_id"),
    ({"action": "a.b", "source": "s", "seq": 1}, "seq"),
    ({"action": "a.b", "source": "s", "data": {"blob": "x" * 3000}}, "data"),
])
def test_bad_records_are_refused_naming_the_field_and_change_nothing(audit, rpc, pg_uri,
                                                                    fields, field):
    trail = Trail(pg_uri)
    before = trail.count()
    with pytest.raises(Invalid) as caught:
        record(rpc, **fields)
    assert field in caught.value.details
    assert trail.count() == before
    trail.close()


def test_an_entry_that_is_not_an_object_is_refused(audit, rpc):
    with pytest.raises(Invalid) as caught:
        rpc.call("audit", "record", ["just a string"])
    assert "_schema" in caught.value.details
