"""The hash chain and its verification, without a database."""

import copy
from datetime import UTC, datetime, timedelta, timezone

import pytest

from audit import chain
from audit.chain import GENESIS_HASH, Head, entry_hash, verify_rows

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def make_chain(count, start_seq=1, prev_hash=GENESIS_HASH):
    rows = []
    for seq in range(start_seq, start_seq + count):
        row = {"id": f"00000000-0000-7000-8000-{seq:012d}", "seq": seq,
               "event_id": f"event-{seq}", "occurred_at": T0 + timedelta(seconds=seq),
               "recorded_at": T0 + timedelta(seconds=seq, milliseconds=5),
               "source": "identity", "action": "user.updated", "actor_id": "u1",
               "actor_type": "user", "subject": f"s{seq}", "request_id": f"r{seq}",
               "outcome": "success", "data": {"n": seq, "nested": {"b": [1, 2.5, None]}},
               "prev_hash": prev_hash}
        row["hash"] = prev_hash = entry_hash(row, prev_hash)
        rows.append(row)
    return rows


def head_of(rows):
    return Head(rows[-1]["seq"], rows[-1]["hash"])


def rehash(row):
    row["hash"] = entry_hash(row, row["prev_hash"])
    return row


def test_canonical_form_ignores_key_order_and_whitespace():
    assert chain.canonical({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == \
        '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()


def test_canonical_form_refuses_values_json_cannot_carry():
    with pytest.raises(ValueError):
        chain.canonical({"x": float("nan")})


def test_timestamps_hash_as_fixed_width_utc_text():
    moment = datetime(2026, 1, 2, 4, 5, 6, 7, tzinfo=UTC)
    assert chain.timestamp(moment) == "2026-01-02T04:05:06.000007Z"
    in_helsinki = moment.astimezone(timezone(timedelta(hours=2)))
    assert chain.timestamp(in_helsinki) == "2026-01-02T04:05:06.000007Z"
    assert chain.parse_timestamp("2026-01-02T04:05:06.000007Z") == moment
    assert chain.timestamp(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00.000000Z"
    with pytest.raises(ValueError):
        chain.timestamp(datetime(2026, 1, 2))


@pytest.mark.parametrize("field,value", [
    ("id", "other"), ("seq", 99), ("event_id", "x"), ("occurred_at", T0),
    ("recorded_at", T0), ("source", "auth"), ("action", "user.deleted"), ("actor_id", "u2"),
    ("actor_type", "service"), ("subject", "s9"), ("request_id", "r9"),
    ("outcome", "failure"), ("data", {"n": 1}),
])
def test_the_hash_covers_every_field(field, value):
    [row] = make_chain(1)
    assert entry_hash({**row, field: value}, row["prev_hash"]) != row["hash"]


def test_the_hash_covers_the_previous_hash():
    [row] = make_chain(1)
    assert entry_hash(row, "f" * 64) != row["hash"]


def test_appends_hash_the_same_bytes_verification_does():
    [row] = make_chain(1)
    encoded = chain.canonical(chain.content_of(row))
    assert chain.link(encoded, row["prev_hash"]) == row["hash"]
    assert chain.link(encoded, "a" * 64) == entry_hash(row, "a" * 64)


def test_an_entry_as_the_api_shows_it_hashes_like_its_row():
    [row] = make_chain(1)
    shown = {**row, "actor": {"id": "u1", "type": "user"},
             "occurred_at": chain.timestamp(row["occurred_at"]),
             "recorded_at": chain.timestamp(row["recorded_at"])}
    del shown["actor_id"], shown["actor_type"]
    assert entry_hash(shown, row["prev_hash"]) == row["hash"]


def test_an_intact_chain_verifies():
    rows = make_chain(12)
    report = verify_rows(rows, end_seq=12, head=head_of(rows))
    assert report.to_dict() == {"ok": True, "checked": 12, "problem": None,
                                "first_bad": None, "detail": None}


def test_an_empty_trail_verifies():
    assert verify_rows([], end_seq=0, head=Head(0, GENESIS_HASH)).ok


def test_an_altered_entry_is_named():
    rows = make_chain(10)
    head = head_of(rows)
    rows[3]["data"] = {"n": 999}
    report = verify_rows(rows, end_seq=10, head=head)
    assert (report.ok, report.problem, report.first_bad["seq"]) == (False, "altered", 4)
    assert report.first_bad["id"] == rows[3]["id"]


def test_an_altered_and_rehashed_entry_is_named_by_the_link_after_it():
    rows = make_chain(10)
    head = head_of(rows)
    rows[3]["subject"] = "someone else"
    rehash(rows[3])
    report = verify_rows(rows, end_seq=10, head=head)
    assert (report.problem, report.first_bad["seq"]) == ("altered", 4)


def test_an_altered_last_entry_is_caught_by_the_head():
    rows = make_chain(5)
    head = head_of(rows)
    rows[-1]["outcome"] = "failure"
    rehash(rows[-1])
    report = verify_rows(rows, end_seq=5, head=head)
    assert (report.problem, report.first_bad["seq"]) == ("altered", 5)


def test_a_removed_entry_is_named_by_its_number():
    rows = make_chain(10)
    head = head_of(rows)
    del rows[5]
    report = verify_rows(rows, end_seq=10, head=head)
    assert (report.problem, report.first_bad) == ("removed", {"seq": 6})


def test_a_removal_hidden_by_renumbering_is_still_a_removal():
    rows = make_chain(10)
    head = head_of(rows)
    del rows[5:7]
    for row in rows[5:]:
        row["seq"] -= 2
    report = verify_rows(rows, end_seq=10, head=head)
    assert (report.problem, report.first_bad) == ("removed", {"seq": 6})
    assert "2 entries" in report.detail


def test_entries_removed_from_the_end_are_missed_against_the_head():
    rows = make_chain(10)
    head = head_of(rows)
    report = verify_rows(rows[:7], end_seq=10, head=head)
    assert (report.problem, report.first_bad) == ("removed", {"seq": 8})


def test_the_first_entry_removed_is_named():
    rows = make_chain(3)
    report = verify_rows(rows[1:], end_seq=3, head=head_of(rows))
    assert (report.problem, report.first_bad) == ("removed", {"seq": 1})


def test_an_entry_appended_past_the_head_was_inserted():
    rows = make_chain(6)
    head = head_of(rows)
    forged = make_chain(1, start_seq=7, prev_hash=rows[-1]["hash"])[0]
    report = verify_rows(rows + [forged], end_seq=6, head=head)
    assert (report.problem, report.first_bad["seq"]) == ("inserted", 7)


def _shift_in(rows, position, forged):
    for row in rows[position:]:
        row["seq"] += 1
    return rows[:position] + [forged] + rows[position:]


def test_an_entry_slipped_into_the_middle_was_inserted():
    rows = make_chain(8)
    head = head_of(rows)
    forged = {**copy.deepcopy(rows[4]), "id": "forged", "data": {"n": "forged"},
              "hash": "e" * 64}
    report = verify_rows(_shift_in(rows, 4, forged), end_seq=8, head=head)
    assert (report.problem, report.first_bad["seq"], report.first_bad["id"]) == \
        ("inserted", 5, "forged")


def test_an_inserted_entry_with_a_valid_hash_and_link_is_still_found():
    rows = make_chain(8)
    head = head_of(rows)
    forged = rehash({**copy.deepcopy(rows[4]), "id": "forged", "prev_hash": rows[3]["hash"]})
    report = verify_rows(_shift_in(rows, 4, forged), end_seq=8, head=head)
    assert (report.problem, report.first_bad["id"]) == ("inserted", "forged")


def test_a_range_is_checked_from_its_anchor():
    rows = make_chain(10)
    head = head_of(rows)
    rows[1]["data"] = {"n": "changed"}  # before the range: not this check's business
    anchor = rows[3]
    report = verify_rows(rows[4:8], anchor_seq=4, anchor_hash=anchor["hash"], anchor=anchor,
                         end_seq=8, head=head)
    assert (report.ok, report.checked) == (True, 4)
    rows[6]["data"] = {"n": "changed"}
    report = verify_rows(rows[4:8], anchor_seq=4, anchor_hash=anchor["hash"], anchor=anchor,
                         end_seq=8, head=head)
    assert (report.problem, report.first_bad["seq"]) == ("altered", 7)


def test_a_rehashed_anchor_is_blamed_not_the_first_entry_of_the_range():
    rows = make_chain(6)
    head = head_of(rows)
    rows[2]["data"] = {"n": "changed"}
    anchor = rehash(rows[2])
    report = verify_rows(rows[3:], anchor_seq=3, anchor_hash=anchor["hash"], anchor=anchor,
                         end_seq=6, head=head)
    assert (report.problem, report.first_bad["seq"]) == ("altered", 3)


def test_verification_reads_rows_lazily_and_stops_at_the_first_problem():
    rows = make_chain(20)
    rows[2]["data"] = {"n": "changed"}
    consumed = []

    def stream():
        for row in rows:
            consumed.append(row["seq"])
            yield row

    report = verify_rows(stream(), end_seq=20, head=head_of(rows))
    assert report.first_bad["seq"] == 3
    assert consumed == [1, 2, 3, 4]
