"""Audit exports as plain functions on the migrated SQLite schema: pinned at the head, written
whole or not at all, read back in pages of whole lines."""

import hashlib
import json
import uuid

import pytest

from audit import chain, entries, exports
from shared import migrations
from shared.context import Actor
from shared.db import make_engine
from shared.errors import Conflict, Invalid, NotFound

ADMIN = Actor("admin-1", "user")


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db", "audit")
    migrations.upgrade("audit", engine)
    yield engine
    engine.dispose()


def _append(engine, count, subject="s1", action="thing.happened"):
    batch = [entries.from_event({"event_id": str(uuid.uuid4()), "event_type": action,
                                 "subject": subject, "data": {"n": n, "text": "é✓"}},
                                action, "tests") for n in range(count)]
    with engine.begin() as conn:
        entries.append(conn, batch)


def _export(engine, folder, filters=None):
    with engine.begin() as conn:
        made = exports.create(conn, filters or {}, ADMIN, "req-1")
    with engine.begin() as conn:
        row = exports.start(conn, made["id"], "task-1")
        written = exports.write(conn, row, folder)
        exports.finish(conn, made["id"], written)
    return made, written


def test_an_export_holds_the_matching_entries_up_to_the_head_when_asked(engine, tmp_path):
    _append(engine, 5, subject="a")
    _append(engine, 3, subject="b")
    with engine.begin() as conn:
        made = exports.create(conn, {"subject": "a"}, ADMIN, "req-1")
    assert made["status"] == "pending" and made["upto_seq"] == 8
    _append(engine, 4, subject="a")  # after the request: not in it
    with engine.begin() as conn:
        row = exports.start(conn, made["id"], "task-1")
        written = exports.write(conn, row, tmp_path / "out")
        exports.finish(conn, made["id"], written)
    text = exports.file_of(tmp_path / "out", made["id"]).read_bytes()
    lines = [json.loads(line) for line in text.decode().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
    assert written == {"count": 5, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    for entry in lines:
        assert chain.link(chain.canonical(chain.content_of(entry)), entry["prev_hash"]) == \
            entry["hash"]
    with engine.connect() as conn:
        status = exports.get(conn, made["id"])
    assert status["status"] == "done" and status["count"] == 5 and status["attempts"] == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{made['id']}.ndjson"]


def test_a_done_export_is_not_started_again(engine, tmp_path):
    made, _ = _export(engine, tmp_path)
    with engine.begin() as conn:
        assert exports.start(conn, made["id"], "task-2") is None


def test_pages_are_whole_lines_and_join_into_the_file(engine, tmp_path):
    _append(engine, 20)
    made, written = _export(engine, tmp_path)
    pages, offset = [], 0
    with engine.connect() as conn:
        while offset is not None:
            page = exports.read_page(conn, tmp_path, made["id"], offset, limit=700)
            assert page["data"].endswith("\n") and page["bytes"] == written["bytes"]
            pages.append(page["data"])
            offset = page["next_offset"]
    assert len(pages) > 3
    assert "".join(pages).encode() == exports.file_of(tmp_path, made["id"]).read_bytes()
    with engine.connect() as conn:  # a line longer than the limit still comes whole
        page = exports.read_page(conn, tmp_path, made["id"], 0, limit=1)
    assert page["data"].count("\n") == 1


def test_an_empty_trail_exports_an_empty_file(engine, tmp_path):
    made, written = _export(engine, tmp_path)
    assert written["count"] == 0 and written["bytes"] == 0
    with engine.connect() as conn:
        page = exports.read_page(conn, tmp_path, made["id"])
    assert page["data"] == "" and page["next_offset"] is None


def test_reading_an_export_not_done_unknown_or_out_of_range_is_refused(engine, tmp_path):
    _append(engine, 2)
    with engine.begin() as conn:
        pending = exports.create(conn, {}, ADMIN)
    made, _ = _export(engine, tmp_path)
    with engine.connect() as conn:
        with pytest.raises(Conflict) as refused:
            exports.read_page(conn, tmp_path, pending["id"])
        assert refused.value.details == {"status": "pending"}
        with pytest.raises(NotFound):
            exports.read_page(conn, tmp_path, str(uuid.uuid4()))
        with pytest.raises(Invalid):
            exports.get(conn, "not-an-id")
        for offset, limit in ((-1, 10), (10**9, 10), ("0", 10), (0, 0), (0, 10**9)):
            with pytest.raises(Invalid):
                exports.read_page(conn, tmp_path, made["id"], offset, limit)
    exports.file_of(tmp_path, made["id"]).unlink()
    with engine.connect() as conn, pytest.raises(NotFound):
        exports.read_page(conn, tmp_path, made["id"])


def test_a_failed_attempt_is_pending_again_until_the_last(engine, tmp_path):
    with engine.begin() as conn:
        made = exports.create(conn, {}, ADMIN)
        exports.failed(conn, made["id"], "OperationalError: gone", final=False)
        assert exports.get(conn, made["id"])["status"] == "pending"
        exports.failed(conn, made["id"], "OperationalError: gone", final=True)
        status = exports.get(conn, made["id"])
    assert status["status"] == "failed" and status["error"] == "OperationalError: gone"
