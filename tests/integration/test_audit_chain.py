"""Tamper evidence: rows altered, removed or inserted behind audit's back are found by verify.

Each test has a database of its own, because tampering leaves the trail broken.
"""

import json

import pytest

from audit import chain
from audit.service import AuditService
from shared.errors import Invalid
from tests.support.audit_helpers import Trail, record_many

COLUMNS = ("seq", "id", "event_id", "occurred_at", "recorded_at", "source", "action",
           "actor_id", "actor_type", "subject", "request_id", "outcome", "data", "prev_hash",
           "hash")


@pytest.fixture
def trail(fresh_pg_uri, start_service, rpc):
    """Audit on an empty database holding ten recorded entries."""
    start_service(AuditService, DB_URI=fresh_pg_uri)
    made = Trail(fresh_pg_uri)
    made.entries = record_many(rpc, 10)
    yield made
    made.close()


def forge(trail, seq, prev_hash, **fields):
    """Insert a row as an intruder would, with a hash that is right for its content."""
    entry = {"id": f"00000000-0000-7000-8000-{seq:012d}", "seq": seq,
             "event_id": f"forged-{seq}", "occurred_at": "2026-11-22T09:00:00.000000Z",
             "recorded_at": "2026-11-22T09:00:00.000000Z", "source": "tests",
             "action": "test.recorded", "actor": {"id": None, "type": "system"},
             "subject": None, "request_id": None, "outcome": "success",
             "data": {"forged": True}, "prev_hash": prev_hash, **fields}
    entry["hash"] = fields.get("hash") or chain.entry_hash(entry, prev_hash)
    row = {k: entry.get(k) for k in COLUMNS}
    row.update(actor_id=None, actor_type="system", data=json.dumps(entry["data"]))
    trail.execute(f"INSERT INTO audit.entries ({', '.join(COLUMNS)}) VALUES "
                  f"({', '.join(':' + c for c in COLUMNS)})", **row)
    return entry


def shift_up(trail, from_seq):
    """Make room at ``from_seq`` by renumbering every later entry one up."""
    trail.execute("UPDATE audit.entries SET seq = -(seq + 1) WHERE seq >= :s", s=from_seq)
    trail.execute("UPDATE audit.entries SET seq = -seq WHERE seq < 0")


def verify(rpc, **kwargs):
    return rpc.call("audit", "verify", kwargs=kwargs)


def test_an_untouched_trail_verifies(trail, rpc):
    report = verify(rpc)
    assert report == {"ok": True, "checked": 10, "problem": None, "first_bad": None,
                      "detail": None, "from_seq": 1, "to_seq": 10,
                      "head": {"seq": 10, "hash": trail.entries[-1]["hash"]}}
    assert [e["seq"] for e in trail.entries] == list(range(1, 11))
    for before, after in zip(trail.entries, trail.entries[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    assert rpc.call("audit", "head") == {"seq": 10, "hash": trail.entries[-1]["hash"]}


def test_an_altered_entry_is_named(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("UPDATE audit.entries SET data = '{\"n\": 99}' WHERE seq = 4")
    report = verify(rpc)
    assert (report["ok"], report["problem"]) == (False, "altered")
    assert report["first_bad"]["seq"] == 4
    assert report["first_bad"]["id"] == trail.entries[3]["id"]
    assert report["checked"] == 4


def test_an_altered_entry_whose_hash_was_recomputed_is_named(trail, rpc):
    victim = {**trail.entries[6], "actor": {"id": "someone-else", "type": "user"}}
    new_hash = chain.entry_hash(victim, victim["prev_hash"])
    with trail.triggers_disabled():
        trail.execute("UPDATE audit.entries SET actor_id = 'someone-else', hash = :h "
                      "WHERE seq = 7", h=new_hash)
    report = verify(rpc)
    assert (report["problem"], report["first_bad"]["seq"]) == ("altered", 7)


def test_a_removed_entry_is_named(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("DELETE FROM audit.entries WHERE seq = 6")
    report = verify(rpc)
    assert (report["ok"], report["problem"], report["first_bad"]) == (False, "removed",
                                                                       {"seq": 6})


def test_a_removal_covered_up_by_renumbering_is_named(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("DELETE FROM audit.entries WHERE seq = 3")
        trail.execute("UPDATE audit.entries SET seq = -(seq - 1) WHERE seq > 3")
        trail.execute("UPDATE audit.entries SET seq = -seq WHERE seq < 0")
    report = verify(rpc)
    assert (report["problem"], report["first_bad"]) == ("removed", {"seq": 3})


def test_removing_the_newest_entries_is_noticed(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("DELETE FROM audit.entries WHERE seq >= 9")
    report = verify(rpc)
    assert (report["problem"], report["first_bad"]) == ("removed", {"seq": 9})


def test_an_entry_appended_out_of_band_is_named_even_with_a_valid_hash(trail, rpc):
    forged = forge(trail, 11, trail.entries[-1]["hash"])
    report = verify(rpc)
    assert (report["ok"], report["problem"]) == (False, "inserted")
    assert (report["first_bad"]["seq"], report["first_bad"]["id"]) == (11, forged["id"])


def test_an_entry_slipped_into_the_middle_is_named(trail, rpc):
    with trail.triggers_disabled():
        shift_up(trail, 5)
    forged = forge(trail, 5, "f" * 64, hash="e" * 64)
    report = verify(rpc)
    assert (report["problem"], report["first_bad"]["seq"], report["first_bad"]["id"]) == \
        ("inserted", 5, forged["id"])


def test_an_entry_slipped_in_with_a_valid_hash_and_link_is_named(trail, rpc):
    with trail.triggers_disabled():
        shift_up(trail, 5)
    forged = forge(trail, 5, trail.entries[3]["hash"])
    report = verify(rpc)
    assert (report["problem"], report["first_bad"]["id"]) == ("inserted", forged["id"])


def test_a_range_checks_only_its_own_entries(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("UPDATE audit.entries SET subject = 'x' WHERE seq = 8")
    assert verify(rpc, from_seq=1, to_seq=7)["ok"] is True
    assert verify(rpc, from_seq=9)["ok"] is True
    report = verify(rpc, from_seq=5, to_seq=9)
    assert (report["checked"], report["first_bad"]["seq"]) == (4, 8)
    assert (report["from_seq"], report["to_seq"]) == (5, 9)


def test_a_range_whose_anchor_was_removed_says_so(trail, rpc):
    with trail.triggers_disabled():
        trail.execute("DELETE FROM audit.entries WHERE seq = 4")
    report = verify(rpc, from_seq=5)
    assert (report["problem"], report["first_bad"]) == ("removed", {"seq": 4})


@pytest.mark.parametrize("kwargs,field", [
    ({"from_seq": 0}, "from_seq"), ({"to_seq": -3}, "to_seq"),
    ({"from_seq": "1"}, "from_seq"), ({"from_seq": 5, "to_seq": 2}, "to_seq"),
])
def test_bad_ranges_are_refused_naming_the_field(start_service, rpc, kwargs, field):
    start_service(AuditService)
    with pytest.raises(Invalid) as caught:
        rpc.call("audit", "verify", kwargs=kwargs)
    assert field in caught.value.details
