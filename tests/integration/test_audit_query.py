"""Reading the trail: filters, keyset pages newest first, get, NDJSON export."""

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from audit import chain
from audit.service import AuditService
from shared.errors import Conflict, Invalid, NotFound
from tests.support.audit_helpers import record_many


def record(rpc, **fields):
    return rpc.call("audit", "record", kwargs={"action": "test.recorded", "source": "tests",
                                               **fields})


def query(rpc, **filters):
    return rpc.call("audit", "query", kwargs=filters)


@pytest.fixture
def audit(start_service, tmp_path):
    return start_service(AuditService, AUDIT_EXPORT_MAX_ENTRIES=25,
                         AUDIT_EXPORT_DIR=str(tmp_path / "exports"))


def test_pages_run_newest_first_and_stay_put_while_entries_arrive(audit, rpc):
    actor = {"id": f"pager-{uuid.uuid4().hex[:8]}", "type": "user"}
    made = record_many(rpc, 7, actor=actor)
    first = query(rpc, actor=actor["id"], limit=3)
    assert [e["seq"] for e in first["items"]] == [e["seq"] for e in made[::-1][:3]]
    record_many(rpc, 2, actor=actor)  # newer than everything already paged
    second = query(rpc, actor=actor["id"], limit=3, cursor=first["next_cursor"])
    third = query(rpc, actor=actor["id"], limit=3, cursor=second["next_cursor"])
    seen = first["items"] + second["items"] + third["items"]
    assert [e["id"] for e in seen] == [e["id"] for e in made[::-1]]
    assert third["next_cursor"] is None
    assert len(query(rpc, actor=actor["id"])["items"]) == 9


def test_each_filter_selects_what_it_names(audit, rpc):
    tag = uuid.uuid4().hex[:8]
    subject = f"subject-{tag}"
    a = record(rpc, action=f"billing{tag}.paid", source="billing", subject=subject,
               actor={"id": f"ann-{tag}", "type": "user"}, request_id=f"req-a-{tag}",
               occurred_at="2026-01-01T10:00:00Z")
    b = record(rpc, action=f"billing{tag}.refund_failed", source="billing", subject=subject,
               actor={"id": f"bot-{tag}", "type": "service"}, request_id=f"req-b-{tag}",
               occurred_at="2026-01-02T10:00:00Z")
    c = record(rpc, action=f"shop{tag}.viewed", source="shop", subject=subject,
               actor={"id": f"ann-{tag}", "type": "user"}, request_id=f"req-c-{tag}",
               occurred_at="2026-01-03T10:00:00Z")

    def ids(**filters):
        return [e["id"] for e in query(rpc, subject=subject, **filters)["items"]]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(actor=f"ann-{tag}") == [c["id"], a["id"]]
    assert ids(actor_type="service") == [b["id"]]
    assert ids(action=f"billing{tag}.paid") == [a["id"]]
    assert ids(action=f"billing{tag}.*") == [b["id"], a["id"]]
    assert ids(source="shop") == [c["id"]]
    assert ids(service="billing") == [b["id"], a["id"]]
    assert ids(request_id=f"req-b-{tag}") == [b["id"]]
    assert ids(outcome="failure") == [b["id"]]
    assert ids(since="2026-01-02T00:00:00Z") == [c["id"], b["id"]]
    assert ids(until="2026-01-02T10:00:00Z") == [b["id"], a["id"]]
    assert ids(since="2026-01-01T12:00:00Z", until="2026-01-02T12:00:00Z") == [b["id"]]
    assert ids(from_seq=b["seq"]) == [c["id"], b["id"]]
    assert ids(to_seq=a["seq"]) == [a["id"]]
    assert ids(actor="nobody-at-all") == []


def test_a_wildcard_action_is_a_prefix_not_a_pattern(audit, rpc):
    tag = uuid.uuid4().hex[:8]
    record(rpc, action=f"x{tag}_a.done", subject=tag)
    record(rpc, action=f"x{tag}.done", subject=tag)
    assert [e["action"] for e in query(rpc, subject=tag, action=f"x{tag}.*")["items"]] == \
        [f"x{tag}.done"]


@pytest.mark.parametrize("filters,field", [
    ({"bogus": 1}, "bogus"), ({"limit": 0}, "limit"), ({"limit": 500}, "limit"),
    ({"limit": "5"}, "limit"), ({"since": "last tuesday"}, "since"),
    ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ({"action": "DROP TABLE"}, "action"), ({"outcome": "maybe"}, "outcome"),
    ({"actor": "x" * 200}, "actor"), ({"source": "a", "service": "b"}, "service"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "c2VxOjA"}, "cursor"),
])
def test_bad_filters_and_cursors_are_refused_naming_the_field(audit, rpc, filters, field):
    with pytest.raises(Invalid) as caught:
        query(rpc, **filters)
    assert field in caught.value.details


def test_filters_must_be_an_object(audit, rpc):
    with pytest.raises(Invalid) as caught:
        rpc.call("audit", "query", ["actor"])
    assert "_schema" in caught.value.details


def test_get_returns_one_entry_or_says_why_not(audit, rpc):
    made = record(rpc, data={"k": "v"})
    assert rpc.call("audit", "get", [made["id"]]) == made
    with pytest.raises(NotFound):
        rpc.call("audit", "get", [str(uuid.uuid4())])
    for bad in ("nope", 42, None):
        with pytest.raises(Invalid) as caught:
            rpc.call("audit", "get", [bad])
        assert "entry_id" in caught.value.details


def test_export_is_ndjson_oldest_first_and_each_line_carries_its_chain(audit, rpc):
    subject = f"export-{uuid.uuid4().hex[:8]}"
    made = record_many(rpc, 5, subject=subject, data={"note": "é ünïcode"})
    text = rpc.call("audit", "export", kwargs={"subject": subject})
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 5
    exported = [json.loads(line) for line in lines]
    assert exported == made
    for entry in exported:
        assert chain.entry_hash(entry, entry["prev_hash"]) == entry["hash"]
    assert rpc.call("audit", "export", kwargs={"subject": "no-such-subject"}) == ""


def test_an_export_too_big_to_return_is_refused(audit, rpc):
    subject = f"big-{uuid.uuid4().hex[:8]}"
    record_many(rpc, 26, subject=subject)
    with pytest.raises(Invalid) as caught:
        rpc.call("audit", "export", kwargs={"subject": subject})
    assert "more than 25" in caught.value.message


def test_export_to_a_file_writes_a_new_file_and_refuses_to_overwrite(audit, rpc, tmp_path):
    subject = f"file-{uuid.uuid4().hex[:8]}"
    made = record_many(rpc, 30, subject=subject)
    result = rpc.call("audit", "export_file", kwargs={"subject": subject, "name": "q1"})
    path = Path(result["path"])
    assert path == tmp_path / "exports" / "q1.ndjson"
    content = path.read_bytes()
    assert (result["count"], result["bytes"]) == (30, len(content))
    assert result["sha256"] == hashlib.sha256(content).hexdigest()
    assert [json.loads(line)["id"] for line in content.splitlines()] == [e["id"] for e in made]
    with pytest.raises(Conflict):
        rpc.call("audit", "export_file", kwargs={"subject": subject, "name": "q1"})
    for bad in ("../escape", "/etc/passwd", "", ".hidden"):
        with pytest.raises(Invalid) as caught:
            rpc.call("audit", "export_file", kwargs={"name": bad})
        assert "name" in caught.value.details
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["q1.ndjson"]
