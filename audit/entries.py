"""The trail: turning events into entries, appending them to the chain, reading them back.

Plain functions over a SQLAlchemy connection, callable without a container. Appends take
the chain head's row lock (PostgreSQL ``SELECT ... FOR UPDATE``; on SQLite the database's
single writer lock), so any number of audit instances append in one order: sequence numbers
have no gaps and each entry is chained to the one before it.
"""

import base64
import binascii
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from audit import chain
from audit.models import HEAD_ID, ChainHead, Entry
from audit.redaction import Redactor, clean_text
from audit.schemas import OUTCOMES
from shared import tracing
from shared.contracts import ACTOR_TYPES, TRACE_ID_PATTERN
from shared.errors import Invalid, NotFound
from shared.ids import is_uuid, uuid7

__all__ = ["decode", "from_event", "from_record", "placeholder", "append", "get",
           "by_event_id", "page", "iterate", "to_dict", "ndjson_line", "head", "verify",
           "derive_outcome", "encode_cursor", "decode_cursor", "MAX_DATA_BYTES"]

ENTRIES = Entry.__table__
HEAD = ChainHead.__table__
MAX_DATA_BYTES = 64 * 1024
# event ids made up for events that came without a usable one, so a redelivery maps to the
# same id and is still recorded once
EVENT_ID_NAMESPACE = uuid.UUID("6f1c3c5e-8a53-4a4b-9d0e-3f4f5a0c2b7d")
FAILURE_WORDS = frozenset({"failed", "failure", "denied", "rejected", "refused", "error",
                           "errored"})
_default_redactor = Redactor()
_UNDECODABLE = object()
_TRACE_ID = re.compile(TRACE_ID_PATTERN)


def utcnow():
    return datetime.now(UTC)


def derive_outcome(action):
    """``failure`` for events whose verb says so (``user.login_failed``), else ``success``."""
    verb = action.rsplit(".", 1)[-1]
    return "failure" if not FAILURE_WORDS.isdisjoint(verb.split("_")) else "success"


def _text(value, limit):
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    if not text.isascii() or "\x00" in text:
        text = clean_text(text)
    return text[:limit] if text else None


def _when(value, default):
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None \
                else moment.astimezone(UTC)
        except (ValueError, OverflowError):
            return default
    return default


def _bounded(data, redactor, max_bytes, body_size=None):
    data = redactor.clean(data) if isinstance(data, dict) else \
        ({} if data is None else {"value": redactor.clean(data)})
    # cleaning at most quadruples a body ({"a":1} -> {"a":"[REDACTED]"}): small bodies need
    # no measuring
    if body_size is not None and body_size * 4 <= max_bytes:
        return data
    size = len(chain.canonical(data))
    if size > max_bytes:
        return {"_truncated": True, "_bytes": size}
    return data


def _derived_event_id(*parts):
    digest = hashlib.sha256(b"\x00".join(
        p if isinstance(p, bytes) else str(p).encode("utf-8", "backslashreplace")
        for p in parts)).hexdigest()
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, digest))


def from_event(payload, routing_key, source, headers=None, redactor=None, body=b"",
               max_data_bytes=MAX_DATA_BYTES, now=None, reason=None):
    """An entry for an event as it came off the broker, whatever shape it arrived in.

    ``payload`` is the decoded envelope (``shared.outbox.envelope``); anything else (not JSON,
    not an object) is still recorded, as a malformed event of ``source``, without its body.
    Missing fields are taken from the nameko context headers or defaulted, never refused: the
    trail must hold every event.
    """
    redactor = redactor or _default_redactor
    headers = headers or {}
    now = now or utcnow()
    action_hint = _text(routing_key, 128) or "unknown.event"
    if not isinstance(payload, dict):
        reason = reason or ("not JSON" if payload is _UNDECODABLE else "not a JSON object")
        return {
            "event_id": _derived_event_id(source, routing_key, body),
            "occurred_at": now, "source": _text(source, 64) or "unknown",
            "action": action_hint, "actor_id": None, "actor_type": "system", "subject": None,
            "request_id": _text(headers.get("nameko.request_id"), 128),
            "outcome": "unknown", "data": {"_malformed": reason, "_bytes": len(body)},
            "trace_id": _trace_id(headers),
        }
    action = _text(payload.get("event_type"), 128) or action_hint
    # the exchange it came through says who published it; the body's claim is a fallback
    source = _text(source, 64) or _text(payload.get("source"), 64) or "unknown"
    event_id = payload.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or \
            clean_text(event_id) != event_id:
        event_id = _derived_event_id(source, action, event_id if event_id else body)
    actor = payload.get("actor")
    if isinstance(actor, dict) and actor.get("type") in ACTOR_TYPES:
        actor_id, actor_type = actor.get("id"), actor["type"]
    elif headers.get("nameko.actor_type") in ACTOR_TYPES:
        actor_id, actor_type = headers.get("nameko.actor_id"), headers["nameko.actor_type"]
    else:
        actor_id, actor_type = None, "system"
    outcome = payload.get("outcome")
    return {
        "event_id": event_id,
        "occurred_at": _when(payload.get("occurred_at"), now),
        "source": source,
        "action": action,
        "actor_id": _text(actor_id, 128),
        "actor_type": actor_type,
        "subject": _text(payload.get("subject"), 255),
        "request_id": _text(payload.get("request_id") or headers.get("nameko.request_id"),
                            128),
        "outcome": outcome if outcome in OUTCOMES else derive_outcome(action),
        "data": _bounded(payload.get("data"), redactor, max_data_bytes,
                         len(body) if body else None),
        "trace_id": _trace_id(headers),
    }


def _trace_id(headers):
    """The trace id of the ``traceparent`` an event came with (None if absent or invalid)."""
    return tracing.trace_id_of({tracing.TRACEPARENT: headers.get(f"nameko.{tracing.TRACEPARENT}")})


def placeholder(entry, reason):
    """A stand-in for an entry the database refused: says what it was and why it is missing,
    made only of values the database cannot refuse."""
    event_id = entry.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or \
            _text(event_id, 64) != event_id:
        event_id = _derived_event_id("placeholder", event_id)
    return {
        "event_id": event_id, "occurred_at": utcnow(),
        "source": _text(entry.get("source"), 64) or "unknown",
        "action": _text(entry.get("action"), 128) or "unknown.event",
        "actor_id": None, "actor_type": "system", "subject": None, "request_id": None,
        "outcome": "unknown", "data": {"_unrecordable": _text(reason, 200)},
        "trace_id": entry.get("trace_id") if _TRACE_ID.match(str(entry.get("trace_id")))
        else None,
    }


def decode(body):
    """The JSON value of a message body, or a marker that it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _UNDECODABLE


def from_record(payload, context, redactor=None, max_data_bytes=MAX_DATA_BYTES, now=None):
    """An entry for a validated ``record`` call; actor and request id default to the caller's."""
    redactor = redactor or _default_redactor
    data = redactor.clean(payload["data"])
    if len(chain.canonical(data)) > max_data_bytes:
        raise Invalid("data is too large", {"data": [f"at most {max_data_bytes} bytes"]})
    actor = payload.get("actor") or context.actor.to_dict()
    return {
        "event_id": payload.get("event_id") or uuid7(),
        "occurred_at": payload.get("occurred_at") or now or utcnow(),
        "source": payload["source"],
        "action": payload["action"],
        "actor_id": _text(actor.get("id"), 128),
        "actor_type": actor["type"],
        "subject": _text(payload.get("subject"), 255),
        "request_id": payload.get("request_id") or context.request_id,
        "outcome": payload.get("outcome") or derive_outcome(payload["action"]),
        "data": data,
        "trace_id": tracing.current_ids()[0]
        or tracing.trace_id_of(getattr(context, "data", None) or {}),
    }


# -- writing ------------------------------------------------------------------------------------
def _lock_head(conn):
    if conn.dialect.name == "sqlite":
        # a write first, so this transaction holds SQLite's writer lock before it reads
        conn.execute(HEAD.update().where(HEAD.c.id == HEAD_ID).values(id=HEAD_ID))
    row = conn.execute(sa.select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)
                       .with_for_update()).first()
    if row is None:
        raise RuntimeError("audit.chain_head has no row: the audit migrations did not run")
    return row.seq, row.hash


def _existing(conn, event_ids):
    found = set()
    ids = list(event_ids)
    for start in range(0, len(ids), 500):
        found.update(conn.scalars(sa.select(ENTRIES.c.event_id)
                                  .where(ENTRIES.c.event_id.in_(ids[start:start + 500]))))
    return found


_COLUMNS = ", ".join(c.name for c in ENTRIES.columns)
_TABLE = f"{ENTRIES.schema}.{ENTRIES.name}"
# PostgreSQL: one round trip writes the batch and moves the head. The rows travel as ONE json
# parameter that the server unpacks (far cheaper on both sides than fifteen bound parameters
# per row), after a savepoint to come back to if an event id turns out to be taken.
_APPEND_SQL = (
    "SAVEPOINT audit_append; "
    f"WITH added AS (INSERT INTO {_TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM "
    f"json_populate_recordset(NULL::{_TABLE}, %(rows)s) RETURNING 1) "
    f"UPDATE {HEAD.schema}.{HEAD.name} SET seq = %(seq)s, hash = %(hash)s, "
    f"updated_at = %(at)s WHERE id = {HEAD_ID}"
)


def _write(conn, rows, fragments, recorded_at):
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_APPEND_SQL, {
            "rows": (b"[" + b",".join(fragments) + b"]").decode(),
            "seq": rows[-1]["seq"], "hash": rows[-1]["hash"], "at": recorded_at})
        return
    conn.execute(ENTRIES.insert(), [
        {**row, "occurred_at": chain.parse_timestamp(row["occurred_at"]),
         "recorded_at": chain.parse_timestamp(row["recorded_at"])} for row in rows])
    conn.execute(HEAD.update().where(HEAD.c.id == HEAD_ID)
                 .values(seq=rows[-1]["seq"], hash=rows[-1]["hash"], updated_at=recorded_at))


def _chained(entries, known, seq, prev_hash, recorded_at):
    """Rows for the entries not in ``known``, numbered and hashed on from the head, and the
    JSON text of each row (its hashed content plus the two hashes)."""
    rows, fragments, seen = [], [], set(known)
    recorded_at = chain.timestamp(recorded_at)
    for entry in entries:
        if entry["event_id"] in seen:
            continue
        seen.add(entry["event_id"])
        seq += 1
        content = chain.content_of({**entry, "id": uuid7(), "seq": seq,
                                    "recorded_at": recorded_at})
        encoded = chain.canonical(content)
        entry_hash = chain.link(encoded, prev_hash)
        # the trace id is correlation, not content: kept beside the chain, not hashed
        trace_id = entry.get("trace_id")
        fragments.append(encoded[:-1] + b',"hash":"' + entry_hash.encode() +
                         b'","prev_hash":"' + prev_hash.encode() + b'","trace_id":' +
                         json.dumps(trace_id).encode() + b'}')
        rows.append({**content, "prev_hash": prev_hash, "hash": entry_hash,
                     "trace_id": trace_id})
        prev_hash = entry_hash
    return rows, fragments


def append(conn, entries, now=None):
    """Chain ``entries`` (dicts from ``from_event``/``from_record``) onto the trail.

    Runs in the caller's transaction and holds the chain lock until it ends: commit soon.
    Entries whose ``event_id`` is already in the trail (or earlier in ``entries``) are
    skipped. Returns (the rows written, the set of event ids skipped as duplicates).
    """
    if not entries:
        return [], set()
    seq, prev_hash = _lock_head(conn)
    recorded_at = now or utcnow()
    ids = {e["event_id"] for e in entries}
    postgres = conn.dialect.name == "postgresql"
    # duplicates are rare, so PostgreSQL first tries without looking them up: the unique
    # index on event_id refuses the batch if one slipped in, and it is redone with the lookup
    rows, fragments = _chained(entries, () if postgres else _existing(conn, ids), seq,
                               prev_hash, recorded_at)
    try:
        if rows:
            _write(conn, rows, fragments, recorded_at)
    except IntegrityError:
        if not postgres:
            raise
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT audit_append")
        rows, fragments = _chained(entries, _existing(conn, ids), seq, prev_hash, recorded_at)
        if rows:
            _write(conn, rows, fragments, recorded_at)
    return rows, ids - {r["event_id"] for r in rows}


# -- reading ------------------------------------------------------------------------------------
def to_dict(row):
    """An entry as the API returns it (timestamps in the chain's own format)."""
    return {
        "id": row["id"],
        "seq": row["seq"],
        "event_id": row["event_id"],
        "occurred_at": chain.timestamp(row["occurred_at"]),
        "recorded_at": chain.timestamp(row["recorded_at"]),
        "source": row["source"],
        "action": row["action"],
        "actor": {"id": row["actor_id"], "type": row["actor_type"]},
        "subject": row["subject"],
        "request_id": row["request_id"],
        "trace_id": row["trace_id"],
        "outcome": row["outcome"],
        "data": row["data"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


def get(conn, entry_id):
    if not is_uuid(entry_id):
        raise Invalid("entry_id is not a valid id", {"entry_id": ["not a valid UUID"]})
    row = conn.execute(sa.select(ENTRIES).where(ENTRIES.c.id == entry_id)).mappings().first()
    if row is None:
        raise NotFound(f"audit entry {entry_id} not found", {"entry_id": entry_id})
    return to_dict(row)


def by_event_id(conn, event_id):
    row = conn.execute(sa.select(ENTRIES).where(ENTRIES.c.event_id == event_id)) \
        .mappings().first()
    return None if row is None else to_dict(row)


def encode_cursor(seq):
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor):
    try:
        text = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        prefix, _, number = text.partition(":")
        seq = int(number) if prefix == "seq" and number.isdigit() else 0
    except (binascii.Error, UnicodeDecodeError, ValueError):
        seq = 0
    if seq < 1:
        raise Invalid("cursor is not valid", {"cursor": ["not a cursor from a previous page"]})
    return seq


def _filtered(query, filters):
    c = ENTRIES.c
    if filters.get("actor"):
        query = query.where(c.actor_id == filters["actor"])
    if filters.get("actor_type"):
        query = query.where(c.actor_type == filters["actor_type"])
    action = filters.get("action")
    if action and action.endswith(".*"):
        query = query.where(c.action.startswith(action[:-1], autoescape=True))
    elif action:
        query = query.where(c.action == action)
    if filters.get("subject"):
        query = query.where(c.subject == filters["subject"])
    source = filters.get("source") or filters.get("service")
    if source:
        query = query.where(c.source == source)
    if filters.get("request_id"):
        query = query.where(c.request_id == filters["request_id"])
    if filters.get("trace_id"):
        query = query.where(c.trace_id == filters["trace_id"])
    if filters.get("outcome"):
        query = query.where(c.outcome == filters["outcome"])
    if filters.get("since"):
        query = query.where(c.occurred_at >= filters["since"])
    if filters.get("until"):
        query = query.where(c.occurred_at <= filters["until"])
    if filters.get("from_seq"):
        query = query.where(c.seq >= filters["from_seq"])
    if filters.get("to_seq"):
        query = query.where(c.seq <= filters["to_seq"])
    return query


def page(conn, filters):
    """One page of entries, newest first, and the cursor of the next (older) page.

    The cursor is the last sequence number shown: entries appended meanwhile have higher
    numbers, so they never shift or repeat the pages that follow.
    """
    limit = filters["limit"]
    query = _filtered(sa.select(ENTRIES), filters).order_by(ENTRIES.c.seq.desc()) \
        .limit(limit + 1)
    if filters.get("cursor"):
        query = query.where(ENTRIES.c.seq < decode_cursor(filters["cursor"]))
    rows = conn.execute(query).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [to_dict(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1]["seq"]) if more and rows else None}


def iterate(conn, filters=None, chunk=1000):
    """Every matching entry, oldest first, read in chunks."""
    after = 0
    while True:
        query = _filtered(sa.select(ENTRIES), filters or {}) \
            .where(ENTRIES.c.seq > after).order_by(ENTRIES.c.seq).limit(chunk)
        rows = conn.execute(query).mappings().all()
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1]["seq"]


def ndjson_line(row):
    return json.dumps(to_dict(row), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False) + "\n"


# -- verifying ----------------------------------------------------------------------------------
def head(conn):
    row = conn.execute(sa.select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
    return chain.Head(row.seq, row.hash) if row else chain.Head(0, chain.GENESIS_HASH)


def verify(conn, from_seq=None, to_seq=None, chunk=5000):
    """Recompute the chain over ``from_seq..to_seq`` (the whole trail by default).

    Read it in one snapshot (REPEATABLE READ on PostgreSQL) so appends running meanwhile are
    neither half-seen nor mistaken for insertions.
    """
    recorded = head(conn)
    start = from_seq or 1
    end = min(to_seq, recorded.seq) if to_seq else recorded.seq
    anchor, anchor_hash = None, chain.GENESIS_HASH
    if start > 1:
        anchor = conn.execute(sa.select(ENTRIES).where(ENTRIES.c.seq == start - 1)) \
            .mappings().first()
        if anchor is None and start - 1 <= recorded.seq:
            report = chain.Report(ok=False, problem="removed", first_bad={"seq": start - 1},
                                  detail=f"entry {start - 1}, the anchor of the range, is "
                                         "missing")
            return _report(report, start, end, recorded)
        anchor_hash = anchor["hash"] if anchor is not None else recorded.hash
    filters = {"from_seq": start, "to_seq": to_seq}
    rows = iterate(conn, filters, chunk)
    report = chain.verify_rows(rows, start - 1, anchor_hash, anchor=anchor, end_seq=end,
                               head=recorded)
    return _report(report, start, end, recorded)


def _report(report, start, end, recorded):
    report.extra = {"from_seq": start, "to_seq": end,
                    "head": {"seq": recorded.seq, "hash": recorded.hash}}
    return report.to_dict()

