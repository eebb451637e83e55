"""Brute-force defence: failed logins build pressure per client, per account and client pair,
and per account; past a threshold the next attempts wait, with delays that double per failure
and pressure that leaks away with time.

The scopes are chosen so that nobody can lock a real user out:
- ``pair`` (this account from this client) throttles a client guessing one account without
  touching the same account's logins from other clients;
- ``client`` (any account from this client) throttles credential stuffing from one place;
- ``account`` (this account from anywhere) slows a guess spread over many clients, and then
  applies only to clients that have not logged in to the account before.
Every block ends on its own (``max_delay`` caps it) and pressure decays, so there is no
permanent lock. Attempts refused while blocked are not checked against identity and do not
add pressure.

A password check takes a while (argon2 in identity), so an attempt is *reserved* before it:
``reserve`` counts it in ``pending`` on each of its counters, in a short transaction of its
own, and refuses it when the attempts already in flight would start a block if they all
failed. ``record_failure`` or ``release`` settles the reservation afterwards. Without this,
every attempt in flight when a block ends would be checked (one per worker of every auth
instance). A reservation its worker never settles (a crash) stops counting after ``hold``
seconds.
"""

import hmac
import ipaddress
import math
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from auth.models import LoginThrottle, Session
from shared.errors import TooManyRequests

SCOPES = ("client", "pair", "account")


@dataclass(frozen=True)
class Policy:
    pair_threshold: int = 5
    client_threshold: int = 20
    account_threshold: int = 50
    base_delay: float = 1.0
    max_delay: float = 300.0
    decay_seconds: float = 60.0  # one failure is forgiven per this many quiet seconds
    known_client_days: int = 30

    def threshold(self, scope):
        return {"pair": self.pair_threshold, "client": self.client_threshold,
                "account": self.account_threshold}[scope]


def client_identity(client):
    """What counts as one client: its IP (an IPv6 /64, which one host gets), else its id.

    The user agent is left out on purpose: the attacker chooses it.
    """
    ip = (client or {}).get("ip")
    if ip:
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.version == 6:
            return "ip:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
        return "ip:" + str(address)
    if (client or {}).get("id"):
        return "id:" + client["id"]
    return "anonymous"


@dataclass(frozen=True)
class Keys:
    """Keyed hashes naming an attempt's account, client and pair (no emails or IPs stored)."""

    account: str
    client: str
    pair: str

    @classmethod
    def of(cls, hash_key, email, client):
        def digest(text):
            return hmac.new(hash_key, text.encode(), "sha256").hexdigest()

        account = digest("account:" + email.strip().lower())
        client_key = digest("client:" + client_identity(client))
        return cls(account, client_key, digest(f"pair:{account}:{client_key}"))

    def of_scope(self, scope):
        return getattr(self, scope)


def decayed(level, updated_at, now, policy):
    """Pressure left after quiet time: one whole failure forgiven per ``decay_seconds``.

    Whole steps, so that a burst of N quick failures counts as N, not N minus a fraction.
    """
    elapsed = max(0.0, (now - updated_at).total_seconds())
    return max(0.0, level - math.floor(elapsed / policy.decay_seconds))


def delay_for(level, threshold, policy):
    """Seconds to wait after a failure that leaves ``level`` pressure: 0 below the threshold,
    then base, 2×base, 4×base… up to ``max_delay``."""
    if level < threshold:
        return 0.0
    steps = math.floor(level) - threshold
    return min(policy.max_delay, policy.base_delay * 2 ** min(steps, 64))


LEVEL_HEADROOM = 64  # above its threshold a counter's delay is long since at max_delay


def after_failure(level, updated_at, now, scope, policy):
    """(new level, seconds blocked) once one more failure lands on a counter."""
    threshold = policy.threshold(scope)
    level = (decayed(level, updated_at, now, policy) if updated_at else 0.0) + 1.0
    level = min(level, threshold + LEVEL_HEADROOM)
    return level, delay_for(level, threshold, policy)


TABLE = LoginThrottle.__table__
# every statement locks a login's rows in this order (the primary key's), so none deadlock
LOCK_ORDER = tuple(sorted(SCOPES))


def _wanted(keys):
    return sa.tuple_(TABLE.c.scope, TABLE.c.key).in_([(s, keys.of_scope(s)) for s in SCOPES])


def _rows(session, keys, lock=False):
    """The counters of this attempt's keys, by scope (Core rows: this is every login's path)."""
    query = sa.select(TABLE).where(_wanted(keys))
    if lock:
        query = query.order_by(TABLE.c.scope, TABLE.c.key).with_for_update()
    return {row.scope: row for row in session.execute(query)}


def _dialect_insert(session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _insert_missing(session, rows):
    """INSERT ... ON CONFLICT DO NOTHING: a counter created meanwhile by another failure wins."""
    insert = _dialect_insert(session)
    session.execute(insert(TABLE).values(rows).on_conflict_do_nothing())


def live_pending(row, now):
    """Attempts in flight on a counter; reservations past their ``pending_until`` are over."""
    if not row.pending or row.pending_until is None or row.pending_until <= now:
        return 0
    return row.pending


def is_known_client(session, keys, now, policy):
    """True when this client logged in to this account within ``known_client_days``."""
    since = now - timedelta(days=policy.known_client_days)
    return session.scalar(
        sa.select(sa.literal(True))
        .where(Session.account_key == keys.account, Session.client_key == keys.client,
               Session.created_at > since)
        .limit(1)) is not None


def wait_for(row, now, scope, policy):
    """Seconds an attempt must wait on this counter, given the attempts in flight ahead of it
    (``row.pending`` counts this one too); 0 when it may go ahead.

    It waits while a block is in force, and when the attempts ahead would start one if they
    all failed. With none ahead it goes (a block that ended lets one attempt through)."""
    if row.blocked_until is not None and row.blocked_until > now:
        return (row.blocked_until - now).total_seconds()
    ahead = row.pending - 1
    if ahead <= 0:
        return 0.0
    threshold = policy.threshold(scope)
    level = decayed(row.level, row.updated_at, now, policy)
    if level + ahead < threshold:
        return 0.0
    return max(policy.base_delay, delay_for(level + ahead, threshold, policy))


# dialect name -> the statement of _claim. One row each, so SQLAlchemy caches its compiled
# form (a multi-row VALUES is compiled anew each time: ~1.5 ms of CPU per login here), and it
# sends the three rows as one multi-row statement ("insertmanyvalues").
_CLAIMS = {}


def _claim_statement(session):
    name = session.get_bind().dialect.name
    statement = _CLAIMS.get(name)
    if statement is None:
        insert = _dialect_insert(session)(TABLE)
        statement = _CLAIMS[name] = insert.on_conflict_do_update(
            index_elements=[TABLE.c.scope, TABLE.c.key],
            set_={"pending": sa.case((TABLE.c.pending_until > insert.excluded.updated_at,
                                      TABLE.c.pending + 1), else_=1),
                  "pending_until": insert.excluded.pending_until},
        ).returning(*TABLE.c)  # rows are told apart by scope: any order
    return statement


def _claim(session, keys, now, hold):
    """Count one more attempt in flight on each counter (created when missing), atomically:
    the rows as they are with this attempt counted, by scope."""
    until = now + timedelta(seconds=hold)
    # in LOCK_ORDER: the statement locks its rows in the order of its VALUES
    rows = [{"scope": s, "key": keys.of_scope(s), "level": 0.0, "updated_at": now,
             "blocked_until": None, "pending": 1, "pending_until": until} for s in LOCK_ORDER]
    return {row.scope: row for row in session.execute(_claim_statement(session), rows)}


def reserve(session, keys, now, policy, hold):
    """Count this attempt in flight before its password is checked, in ``session``'s
    transaction (commit it at once, so that concurrent attempts see it); the counters by
    scope. Raises TooManyRequests (with ``retry_after``) when the attempt must wait: then
    roll the transaction back, which undoes the count (and holds the rows' locks until then).

    Settle the reservation after the check: ``record_failure`` or ``release``."""
    rows = _claim(session, keys, now, hold)
    waits = []
    for scope in SCOPES:
        wait = wait_for(rows[scope], now, scope, policy)
        if not wait:
            continue
        if scope == "account" and is_known_client(session, keys, now, policy):
            continue
        waits.append(wait)
    if waits:
        retry_after = max(1, math.ceil(max(waits)))
        raise TooManyRequests("too many failed logins; try again later",
                              {"retry_after": retry_after})
    return rows


def _locked_rows(session, keys, now):
    rows = _rows(session, keys, lock=True)
    missing = [s for s in SCOPES if s not in rows]
    if missing:  # pruned or never reserved: counted from nothing
        _insert_missing(session, [{"scope": s, "key": keys.of_scope(s), "level": 0.0,
                                   "updated_at": now, "blocked_until": None, "pending": 0}
                                  for s in missing])
        rows = _rows(session, keys, lock=True)
    return rows


def record_failure(session, keys, now, policy):
    """Add one failure to each scope and settle this attempt's reservation, in ``session``'s
    transaction; returns the longest block."""
    rows = _locked_rows(session, keys, now)
    longest = 0.0
    for scope in LOCK_ORDER:
        row = rows[scope]
        level, delay = after_failure(row.level, row.updated_at, now, scope, policy)
        blocked_until = row.blocked_until
        if delay and (blocked_until is None or now + timedelta(seconds=delay) > blocked_until):
            blocked_until = now + timedelta(seconds=delay)
        session.execute(TABLE.update()
                        .where(TABLE.c.scope == scope, TABLE.c.key == row.key)
                        .values(level=level, updated_at=now, blocked_until=blocked_until,
                                pending=max(0, live_pending(row, now) - 1)))
        longest = max(longest, delay)
    return longest


def release(session, keys, now, policy, success=False):
    """Settle this attempt's reservation without a failure, in ``session``'s transaction:
    the password was right (``success``), identity could not answer, or the attempt was
    refused. Counters left with nothing to count are deleted.

    A success clears its pair counter only: clearing the client's or the account's would let
    an attacker reset them by logging in to an account of their own."""
    rows = _rows(session, keys, lock=True)
    gone, kept = [], []
    for scope in LOCK_ORDER:
        row = rows.get(scope)
        if row is None:
            continue
        pending = max(0, live_pending(row, now) - 1)
        cleared = success and scope == "pair"
        blocked = not cleared and row.blocked_until is not None and row.blocked_until > now
        level = 0.0 if cleared else row.level
        if not pending and not blocked and (cleared or not decayed(level, row.updated_at, now,
                                                                   policy)):
            gone.append((scope, row.key))
            continue
        values = {"pending": pending}
        if cleared:
            values.update(level=0.0, blocked_until=None)
        kept.append((scope, row.key, values))
    if gone:
        session.execute(TABLE.delete().where(sa.tuple_(TABLE.c.scope, TABLE.c.key).in_(gone)))
    for scope, key, values in kept:
        session.execute(TABLE.update().where(TABLE.c.scope == scope, TABLE.c.key == key)
                        .values(**values))


def prune(session, now, policy):
    """Forget counters whose pressure has leaked away, whose block is over and that count no
    attempt in flight."""
    # no counter holds more than its threshold + LEVEL_HEADROOM, so after this long it is 0
    horizon = max(policy.pair_threshold, policy.client_threshold, policy.account_threshold) \
        + LEVEL_HEADROOM
    quiet_since = now - timedelta(seconds=horizon * policy.decay_seconds)
    gone = session.execute(
        sa.delete(LoginThrottle)
        .where(LoginThrottle.updated_at < quiet_since,
               sa.or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until < now),
               sa.or_(LoginThrottle.pending_until.is_(None), LoginThrottle.pending_until < now))
        .execution_options(synchronize_session=False))
    return gone.rowcount
