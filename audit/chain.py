"""The hash chain: canonical content of an entry, its hash, and the check that finds tampering.

Every entry's hash is SHA-256 over the canonical JSON (sorted keys, no whitespace, UTF-8) of
its content plus the previous entry's hash, so changing, removing or slipping in an entry
breaks the chain at that point. Nothing here touches a database: ``verify_rows`` checks any
ordered run of entries (rows read back from PostgreSQL or lines of an NDJSON export).
"""

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["GENESIS_HASH", "canonical", "timestamp", "parse_timestamp", "content_of",
           "entry_hash", "link", "Head", "Report", "verify_rows"]

GENESIS_HASH = "0" * 64
# how far past its own number a renumbered entry is searched for, to tell a removal (with the
# later entries renumbered to close the gap) from an alteration
RENUMBER_PROBE = 64


def canonical(value):
    """The one byte string a JSON value hashes as."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def timestamp(value):
    """A datetime as the fixed-width UTC text the chain hashes (microseconds, ``Z``)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime in an audit entry")
    # isoformat, not strftime: several times faster, and years before 1000 keep four digits
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def content_of(entry):
    """What the hash covers, from a database row or an entry as the API returns it.

    Its keys are the entries table's columns, so the same JSON text that is hashed can be
    handed to PostgreSQL as the row (see ``link``).
    """
    actor = entry.get("actor")
    if isinstance(actor, dict):
        actor_id, actor_type = actor.get("id"), actor.get("type")
    else:
        actor_id, actor_type = entry.get("actor_id"), entry.get("actor_type")
    return {
        "id": entry["id"],
        "seq": entry["seq"],
        "event_id": entry["event_id"],
        "occurred_at": timestamp(entry["occurred_at"]),
        "recorded_at": timestamp(entry["recorded_at"]),
        "source": entry["source"],
        "action": entry["action"],
        "actor_id": actor_id,
        "actor_type": actor_type,
        "subject": entry.get("subject"),
        "request_id": entry.get("request_id"),
        "outcome": entry["outcome"],
        "data": entry["data"],
    }


def entry_hash(entry, prev_hash):
    """SHA-256 of ``{"entry": <content>, "prev_hash": <prev_hash>}`` in canonical form."""
    body = {"entry": content_of(entry), "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


def link(content_json, prev_hash):
    """``entry_hash`` from the canonical content already encoded, for a hex ``prev_hash``.

    The canonical form of ``{"entry": c, "prev_hash": p}`` is exactly these bytes (sorted keys,
    no whitespace), so appends serialise each entry once, for the hash and the row alike.
    """
    return hashlib.sha256(b'{"entry":' + content_json + b',"prev_hash":"' +
                          prev_hash.encode("ascii") + b'"}').hexdigest()


@dataclass(frozen=True)
class Head:
    """The chain head as recorded: the last entry's number and hash."""

    seq: int
    hash: str


@dataclass
class Report:
    ok: bool = True
    checked: int = 0
    problem: str | None = None
    first_bad: dict | None = None
    detail: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return {"ok": self.ok, "checked": self.checked, "problem": self.problem,
                "first_bad": self.first_bad, "detail": self.detail, **self.extra}


def _summary(entry):
    return {key: entry.get(key) for key in ("seq", "id", "event_id", "action", "source")}


def _renumbered_from(entry):
    """The number ``entry`` was hashed under, when it was moved down to close a gap."""
    for original in range(entry["seq"] + 1, entry["seq"] + 1 + RENUMBER_PROBE):
        if entry_hash({**entry, "seq": original}, entry["prev_hash"]) == entry["hash"]:
            return original
    return None


def verify_rows(rows, anchor_seq=0, anchor_hash=GENESIS_HASH, anchor=None, end_seq=None,
                head=None):
    """Check that ``rows`` (ascending ``seq``) continue the chain from the anchor.

    ``anchor_seq``/``anchor_hash`` name the entry just before the first one expected (0 and
    the genesis hash at the start of the trail); ``anchor`` is that entry itself, if known.
    ``end_seq`` is the last entry expected: any missing before it were removed. ``head`` is
    the chain head as recorded: an entry past it was inserted out of band, and the entry it
    names must carry its hash. The report names the first entry found altered, removed or
    inserted.
    """
    report = Report()
    expected_seq, expected_prev = anchor_seq + 1, anchor_hash
    # the last entry that checked out, and the hash it was chained to
    last_good, before_last = anchor, (anchor or {}).get("prev_hash")
    rows = iter(rows)
    current = next(rows, None)

    def fail(problem, entry, detail):
        report.ok, report.problem, report.detail = False, problem, detail
        report.first_bad = entry if "id" not in entry else _summary(entry)
        return report

    while current is not None:
        following = next(rows, None)
        report.checked += 1
        seq = current["seq"]
        if head is not None and seq > head.seq:
            return fail("inserted", current,
                        f"entry {seq} lies past the chain head ({head.seq}): it was not "
                        "appended by audit")
        if seq > expected_seq:
            return fail("removed", {"seq": expected_seq},
                        f"entry {expected_seq} is missing; the chain resumes at {seq}")
        if seq < expected_seq:
            return fail("inserted", current, f"a second entry numbered {seq}")
        content_ok = entry_hash(current, current["prev_hash"]) == current["hash"]
        link_ok = current["prev_hash"] == expected_prev
        if content_ok and link_ok:
            before_last, last_good = expected_prev, current
            expected_seq, expected_prev = seq + 1, current["hash"]
            current = following
            continue
        if following is not None and following["prev_hash"] == expected_prev:
            return fail("inserted", current,
                        f"entry {seq} is not part of the chain: the entry after it links to "
                        "the entry before it")
        if not link_ok and before_last is not None and current["prev_hash"] == before_last:
            return fail("inserted", last_good,
                        f"entry {last_good['seq']} is not part of the chain: the entry after "
                        "it links to the entry before it")
        if link_ok:
            return fail("altered", current, f"entry {seq} no longer matches its hash")
        if content_ok:
            if last_good is None:
                return fail("altered", {"seq": anchor_seq},
                            f"entry {anchor_seq} changed after entry {seq} was chained to it")
            return fail("altered", last_good,
                        f"entry {last_good['seq']} was changed and re-hashed: entry {seq} "
                        "was chained to a different hash")
        original = _renumbered_from(current)
        if original is not None:
            return fail("removed", {"seq": expected_seq},
                        f"{original - seq} entr{'y' if original - seq == 1 else 'ies'} "
                        f"removed at {expected_seq} and the later ones renumbered")
        return fail("altered", current, f"entry {seq} no longer matches its hash or its link")

    if end_seq is not None and expected_seq <= end_seq:
        return fail("removed", {"seq": expected_seq},
                    f"entries {expected_seq}..{end_seq} are missing")
    if head is not None:
        if expected_seq - 1 == head.seq and head.seq > 0 and expected_prev != head.hash:
            entry = last_good if last_good is not None else {"seq": head.seq}
            return fail("altered", entry,
                        f"entry {head.seq} does not match the hash the chain head recorded")
    return report
