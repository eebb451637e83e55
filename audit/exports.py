"""Exports of the trail: asked for over RPC, written by the task ``audit.export.generate`` to an
NDJSON file, read back in pages.

Plain functions over a SQLAlchemy connection and a directory, callable without a container.
An export is pinned at the chain head of the moment it was asked for (``upto_seq``), so a
retried generation writes exactly the same entries. Generation streams keyset pages of
entries (``entries.iterate``) into a partial file that replaces the final one only when
complete: neither the rows nor the file are ever held whole in memory, and a reader never sees
half a file. The directory must be shared by every audit instance (any instance may run the
task, any may serve the pages).
"""

import hashlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from audit import chain, entries
from audit.models import Export
from audit.schemas import FiltersSchema
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import is_uuid

__all__ = ["GENERATE_TASK", "STATUSES", "PAGE_BYTES", "MAX_PAGE_BYTES", "create", "get",
           "to_dict", "start", "finish", "failed", "write", "file_of", "read_page", "expire",
           "sweep"]

GENERATE_TASK = "audit.export.generate"
STATUSES = ("pending", "running", "done", "failed")
PAGE_BYTES = 1024 * 1024
MAX_PAGE_BYTES = 8 * 1024 * 1024
EXPORTS = Export.__table__


def utcnow():
    return datetime.now(UTC)


def _when(value):
    return chain.timestamp(value) if value is not None else None


def to_dict(row):
    return {
        "id": row["id"], "status": row["status"], "filters": row["filters"],
        "upto_seq": row["upto_seq"], "requested_by": row["requested_by"],
        "request_id": row["request_id"], "attempts": row["attempts"],
        "count": row["count"], "bytes": row["bytes"], "sha256": row["sha256"],
        "error": row["error"], "created_at": _when(row["created_at"]),
        "started_at": _when(row["started_at"]), "finished_at": _when(row["finished_at"]),
    }


def create(conn, filters, actor, request_id=None, now=None):
    """Record a new pending export of the entries matching ``filters`` (JSON-ready, as
    ``FiltersSchema`` dumps them) up to the current head; its row as a dict."""
    row = {
        "id": str(uuid.uuid4()), "status": "pending", "filters": filters,
        "upto_seq": entries.head(conn).seq, "requested_by": actor.id,
        "actor_type": actor.type, "request_id": request_id, "task_id": None, "attempts": 0,
        "count": None, "bytes": None, "sha256": None, "error": None,
        "created_at": now or utcnow(), "started_at": None, "finished_at": None,
    }
    conn.execute(EXPORTS.insert().values(**row))
    return to_dict(row)


def _row(conn, export_id, lock=False):
    if not isinstance(export_id, str) or not is_uuid(export_id):
        raise Invalid("export_id is not a valid id", {"export_id": ["not a valid UUID"]})
    query = sa.select(EXPORTS).where(EXPORTS.c.id == export_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"export {export_id} not found", {"export_id": export_id})
    return row


def get(conn, export_id):
    return to_dict(_row(conn, export_id))


def _update(conn, export_id, **values):
    conn.execute(EXPORTS.update().where(EXPORTS.c.id == export_id).values(**values))


def start(conn, export_id, task_id, now=None):
    """Mark the export running for this delivery; None when it is already done (a
    redelivered task has nothing left to do), else its row."""
    row = _row(conn, export_id, lock=True)
    if row["status"] == "done":
        return None
    _update(conn, export_id, status="running", task_id=task_id, error=None,
            attempts=row["attempts"] + 1, started_at=now or utcnow())
    return row


def finish(conn, export_id, written, now=None):
    _update(conn, export_id, status="done", count=written["count"], bytes=written["bytes"],
            sha256=written["sha256"], error=None, finished_at=now or utcnow())


def failed(conn, export_id, error, final, now=None):
    """Record a failed attempt: ``pending`` again while the task will be retried, ``failed``
    once it will not."""
    _update(conn, export_id, status="failed" if final else "pending", error=error[:300],
            finished_at=(now or utcnow()) if final else None)


def file_of(folder, export_id):
    return Path(folder) / f"{export_id}.ndjson"


def write(conn, row, folder, chunk=1000):
    """Write the export ``row``'s entries, oldest first, as NDJSON to its file in ``folder``;
    {count, bytes, sha256} of what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = file_of(folder, row["id"])
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    digest, count, size = hashlib.sha256(), 0, 0
    try:
        with open(partial, "wb") as out:
            for line in _lines(conn, row, chunk):
                out.write(line)
                digest.update(line)
                count, size = count + 1, size + len(line)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return {"count": count, "bytes": size, "sha256": digest.hexdigest()}


def _lines(conn, row, chunk):
    upto = row["upto_seq"]
    if upto < 1:
        return
    filters = FiltersSchema().load(row["filters"])  # validated when stored: loads again
    filters["to_seq"] = min(filters.get("to_seq") or upto, upto)
    if filters.get("from_seq") and filters["from_seq"] > filters["to_seq"]:
        return
    for entry in entries.iterate(conn, filters, chunk):
        yield entries.ndjson_line(entry).encode("utf-8")


def read_page(conn, folder, export_id, offset=0, limit=PAGE_BYTES):
    """A page of a done export's file: whole lines from byte ``offset``, about ``limit``
    bytes (more only when a single line is longer), and where the next page starts (None
    after the last). Conflict while the export is not done."""
    row = _row(conn, export_id)
    if row["status"] != "done":
        raise Conflict(f"export {export_id} is {row['status']}, not done",
                       {"status": row["status"]})
    total = row["bytes"]
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= total:
        raise Invalid(f"offset must be a byte offset from 0 to {total}",
                      {"offset": ["out of range"]})
    if isinstance(limit, bool) or not isinstance(limit, int) or \
            not 1 <= limit <= MAX_PAGE_BYTES:
        raise Invalid(f"limit must be 1 to {MAX_PAGE_BYTES} bytes", {"limit": ["out of range"]})
    path = file_of(folder, export_id)
    try:
        with open(path, "rb") as source:
            source.seek(offset)
            data = source.read(limit)
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n")
                # pages end on a line end, so each one decodes on its own
                data = data[:cut + 1] if cut >= 0 else data + source.readline()
    except FileNotFoundError:
        raise NotFound(f"the file of export {export_id} is missing from the export directory",
                       {"export_id": export_id}) from None
    end = offset + len(data)
    return {"id": export_id, "offset": offset, "data": data.decode("utf-8"),
            "next_offset": end if end < total else None, "bytes": total,
            "count": row["count"], "sha256": row["sha256"]}


def expire(conn, before, batch=1000):
    """Delete the rows of exports that finished (done or failed) before ``before``, at most
    ``batch`` of them; their ids. Their files go afterwards (``sweep``), once the deletion has
    committed: a file never outlives its row by more than one purge, and a row never points
    at a file already gone."""
    chosen = (sa.select(EXPORTS.c.id).where(EXPORTS.c.status.in_(("done", "failed")),
                                            EXPORTS.c.finished_at < before)
              .order_by(EXPORTS.c.finished_at).limit(batch))
    ids = list(conn.execute(chosen).scalars())
    if ids:
        conn.execute(EXPORTS.delete().where(EXPORTS.c.id.in_(ids)))
    return ids


def sweep(folder, expired=(), grace_seconds=3600, now=None):
    """Remove the files of the ``expired`` exports (ids ``expire`` returned, once their
    deletion has committed) and the partial files a generation that died left in ``folder``,
    once they are ``grace_seconds`` old (a generation still writing is never touched). Files
    of ``export_file``, named by their callers, are not this function's. Returns how many
    went."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for export_id in expired:
        path = file_of(folder, export_id)
        if path.exists():
            path.unlink(missing_ok=True)
            removed += 1
    cutoff = (now or datetime.now(UTC)).timestamp() - grace_seconds
    for path in folder.glob(".*.partial"):
        try:
            stale = path.stat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if stale and is_uuid(path.name[1:].split(".", 1)[0]):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
