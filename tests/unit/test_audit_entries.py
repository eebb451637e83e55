"""Turning events and record() calls into entries; cursors; input schemas."""

import uuid
from datetime import UTC, datetime

import pytest

from audit import entries, schemas
from audit.redaction import REDACTED, Redactor
from shared.context import Actor
from shared.errors import Invalid
from shared.rpc import load

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def envelope(**fields):
    body = {"event_id": "7b0c1c5e-0000-4000-8000-000000000001", "event_type": "user.created",
            "source": "identity", "version": 1, "occurred_at": "2026-11-22T10:00:00+00:00",
            "actor": {"id": "u1", "type": "user"}, "request_id": "req-1", "subject": "s1",
            "data": {"email": "a@b.test"}}
    body.update(fields)
    return body


def test_an_envelope_becomes_an_entry_field_for_field():
    entry = entries.from_event(envelope(), "user.created", "identity", now=NOW)
    assert entry == {
        "event_id": "7b0c1c5e-0000-4000-8000-000000000001",
        "occurred_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        "source": "identity", "action": "user.created", "actor_id": "u1", "actor_type": "user",
        "subject": "s1", "request_id": "req-1", "outcome": "success",
        "data": {"email": "a@b.test"}, "trace_id": None,
    }


def test_an_event_keeps_the_trace_id_of_its_traceparent_header_and_ignores_a_malformed_one():
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    good = {"nameko.traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    assert entries.from_event(envelope(), "user.created", "identity", good,
                              now=NOW)["trace_id"] == trace_id
    for bad in ("00-xyz-00f067aa0ba902b7-01", f"00-{trace_id.upper()}-00f067aa0ba902b7-01",
                "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 42):
        assert entries.from_event(envelope(), "user.created", "identity",
                                  {"nameko.traceparent": bad}, now=NOW)["trace_id"] is None


def test_missing_fields_come_from_the_message_and_its_headers():
    headers = {"nameko.request_id": "req-h", "nameko.actor_type": "service",
               "nameko.actor_id": "billing"}
    entry = entries.from_event({"data": None}, "invoice.paid", "billing", headers, now=NOW)
    assert (entry["action"], entry["source"], entry["request_id"]) == \
        ("invoice.paid", "billing", "req-h")
    assert (entry["actor_id"], entry["actor_type"]) == ("billing", "service")
    assert entry["occurred_at"] == NOW
    assert entry["data"] == {}
    assert uuid.UUID(entry["event_id"])


def test_the_exchange_names_the_source_and_the_body_only_fills_in():
    claimed = envelope(source="identity")
    assert entries.from_event(claimed, "user.created", "billing")["source"] == "billing"
    assert entries.from_event(claimed, "user.created", "")["source"] == "identity"
    assert entries.from_event(envelope(source=None), "a.b", "")["source"] == "unknown"
    assert entries.from_event(b"x", "a.b", "")["source"] == "unknown"


def test_an_unknown_actor_type_makes_a_system_actor():
    entry = entries.from_event(envelope(actor={"id": "x", "type": "robot"}), "a.b", "s")
    assert (entry["actor_id"], entry["actor_type"]) == (None, "system")


def test_naive_and_offset_times_are_read_as_utc_and_bad_ones_replaced():
    naive = entries.from_event(envelope(occurred_at="2026-11-22T10:00:00"), "a.b", "s")
    offset = entries.from_event(envelope(occurred_at="2026-11-22T12:00:00+02:00"), "a.b", "s")
    assert naive["occurred_at"] == offset["occurred_at"] == datetime(2026, 11, 22, 10,
                                                                     tzinfo=UTC)
    for bad in ("yesterday", 12, None, "0001-01-01T00:00:00+05:00"):
        assert entries.from_event(envelope(occurred_at=bad), "a.b", "s",
                                  now=NOW)["occurred_at"] == NOW


def test_events_without_usable_ids_get_stable_made_up_ones():
    first = entries.from_event(envelope(event_id=None), "a.b", "s", body=b"one")
    again = entries.from_event(envelope(event_id=None), "a.b", "s", body=b"one")
    other = entries.from_event(envelope(event_id=None), "a.b", "s", body=b"two")
    assert first["event_id"] == again["event_id"] != other["event_id"]
    long_id = entries.from_event(envelope(event_id="x" * 65), "a.b", "s")
    assert len(long_id["event_id"]) == 36
    assert long_id["event_id"] == entries.from_event(envelope(event_id="x" * 65), "a.b",
                                                     "s")["event_id"]


def test_bodies_that_are_not_envelopes_are_recorded_as_malformed():
    not_json = entries.from_event(entries.decode(b"\xff{"), "thing.broke", "legacy",
                                  body=b"\xff{", now=NOW)
    assert not_json["data"] == {"_malformed": "not JSON", "_bytes": 2}
    assert (not_json["action"], not_json["source"], not_json["outcome"]) == \
        ("thing.broke", "legacy", "unknown")
    listed = entries.from_event(entries.decode(b"[1]"), "thing.listed", "legacy", body=b"[1]")
    assert listed["data"]["_malformed"] == "not a JSON object"


def test_overlong_text_is_cut_to_the_column():
    entry = entries.from_event(envelope(subject="s" * 400, event_type="a." + "b" * 300,
                                        request_id="r" * 300), "a.b", "s")
    assert (len(entry["subject"]), len(entry["action"]), len(entry["request_id"])) == \
        (255, 128, 128)


def test_data_is_redacted_and_oversized_data_is_replaced_by_its_size():
    entry = entries.from_event(envelope(data={"password": "p", "n": 1}), "a.b", "s")
    assert entry["data"] == {"password": REDACTED, "n": 1}
    big = entries.from_event(envelope(data={"blob": "x" * 5000}), "a.b", "s",
                             max_data_bytes=1000)
    assert big["data"] == {"_truncated": True, "_bytes": 5011}
    assert entries.from_event(envelope(data=[1, 2]), "a.b", "s")["data"] == {"value": [1, 2]}


@pytest.mark.parametrize("action,outcome", [
    ("user.login_failed", "failure"), ("payment.capture_failed", "failure"),
    ("access.denied", "failure"), ("job.error", "failure"), ("user.created", "success"),
    ("user.authed", "success"), ("failed.thing", "success"), ("user.errorless", "success"),
])
def test_outcome_follows_the_verb(action, outcome):
    assert entries.derive_outcome(action) == outcome


def test_an_explicit_outcome_wins():
    assert entries.from_event(envelope(outcome="failure"), "a.b", "s")["outcome"] == "failure"
    assert entries.from_event(envelope(outcome="weird"), "a.b", "s")["outcome"] == "success"


class FakeContext:
    request_id = "req-ctx"
    actor = Actor("caller", "service")


def test_a_record_takes_actor_and_request_id_from_the_caller_unless_given():
    payload = load(schemas.RecordSchema(), {"action": "report.exported", "source": "gateway",
                                            "data": {"token": "t"}})
    entry = entries.from_record(payload, FakeContext(), Redactor(), now=NOW)
    assert (entry["actor_id"], entry["actor_type"], entry["request_id"]) == \
        ("caller", "service", "req-ctx")
    assert entry["data"] == {"token": REDACTED}
    assert entry["occurred_at"] == NOW
    given = load(schemas.RecordSchema(), {"action": "report.exported", "source": "gateway",
                                          "actor": {"id": "u9", "type": "user"},
                                          "request_id": "req-own", "outcome": "failure"})
    entry = entries.from_record(given, FakeContext(), Redactor())
    assert (entry["actor_id"], entry["request_id"], entry["outcome"]) == \
        ("u9", "req-own", "failure")


def test_a_record_with_too_much_data_is_refused():
    payload = load(schemas.RecordSchema(), {"action": "a.b", "source": "s",
                                            "data": {"blob": "x" * 2000}})
    with pytest.raises(Invalid) as caught:
        entries.from_record(payload, FakeContext(), Redactor(), max_data_bytes=1000)
    assert "data" in caught.value.details


@pytest.mark.parametrize("data,field", [
    ({"source": "s"}, "action"),
    ({"action": "a.b"}, "source"),
    ({"action": "Not An Action", "source": "s"}, "action"),
    ({"action": "single", "source": "s"}, "action"),
    ({"action": "a.b", "source": "Bad Source"}, "source"),
    ({"action": "a.b", "source": "s", "outcome": "meh"}, "outcome"),
    ({"action": "a.b", "source": "s", "actor": {"id": "x", "type": "robot"}}, "actor"),
    ({"action": "a.b", "source": "s", "data": [1]}, "data"),
    ({"action": "a.b", "source": "s", "occurred_at": "soon"}, "occurred_at"),
    ({"action": "a.b", "source": "s", "request_id": "has spaces"}, "request_id"),
    ({"action": "a.b", "source": "s", "event_id": "e" * 65}, "event_id"),
    ({"action": "a.b", "source": "s", "extra": 1}, "extra"),
])
def test_bad_records_are_refused_naming_the_field(data, field):
    with pytest.raises(Invalid) as caught:
        load(schemas.RecordSchema(), data)
    assert field in caught.value.details


@pytest.mark.parametrize("data,field", [
    ({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"limit": "10"}, "limit"),
    ({"since": "not a date"}, "since"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ({"action": "User Created"}, "action"), ({"actor_type": "robot"}, "actor_type"),
    ({"source": "a", "service": "b"}, "service"), ({"outcome": "meh"}, "outcome"),
    ({"from_seq": 0}, "from_seq"), ({"from_seq": 5, "to_seq": 4}, "to_seq"),
    ({"cursor": ""}, "cursor"), ({"bogus": 1}, "bogus"), ({"subject": ""}, "subject"),
])
def test_bad_filters_are_refused_naming_the_field(data, field):
    with pytest.raises(Invalid) as caught:
        load(schemas.QuerySchema(), data)
    assert field in caught.value.details


def test_good_filters_load_with_defaults():
    loaded = load(schemas.QuerySchema(), {"action": "user.*", "since": "2026-01-01T00:00:00"})
    assert loaded["limit"] == 50
    assert loaded["since"] == datetime(2026, 1, 1, tzinfo=UTC)


def test_cursors_round_trip_and_bad_ones_are_refused():
    assert entries.decode_cursor(entries.encode_cursor(12345)) == 12345
    for bad in ("!!!", "abc", entries.encode_cursor(0), "c2VxOi0x", "c2VxOmFiYw", "bm9wZTox"):
        with pytest.raises(Invalid) as caught:
            entries.decode_cursor(bad)
        assert caught.value.details == {"cursor": ["not a cursor from a previous page"]}
