"""Sessions and their refresh tokens: plain functions over a unit of work.

A session is one login; each refresh spends its current refresh token and hands out the next,
so the tokens of a session form a family. Spending an already-spent token means two parties
hold the family (one of them stole it), so the whole session is revoked (reuse detection).
Races are decided by the database: a token is spent by a conditional UPDATE that exactly one
transaction wins.
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from auth.models import RefreshToken, Session
from auth.tokens import hash_refresh_token, looks_like_refresh_token, new_refresh_token
from shared.errors import Invalid, NotFound, Unauthorized
from shared.ids import is_uuid, uuid7

REVOKED = "session.revoked"


def now_utc():
    return datetime.now(UTC)


def invalid_refresh(reason="invalid"):
    return Unauthorized("invalid refresh token", {"reason": reason})


def to_dict(session):
    return {
        "id": session.id,
        "user_id": session.user_id,
        "client": session.client,
        "created_at": session.created_at.isoformat(),
        "last_used_at": session.last_used_at.isoformat(),
        "expires_at": session.expires_at.isoformat(),
    }


def start(uow, user_id, keys, client, lifetime, now=None):
    """A new session for ``user_id`` and its first refresh token (returned, never stored)."""
    now = now or now_utc()
    values = dict(id=uuid7(), user_id=user_id, account_key=keys.account, client_key=keys.client,
                  client=client, created_at=now, last_used_at=now,
                  expires_at=now + timedelta(seconds=lifetime))
    token = new_refresh_token()
    # Core inserts, in this order (the token refers to the session): every login comes here
    uow.session.execute(Session.__table__.insert().values(**values))
    uow.session.execute(RefreshToken.__table__.insert().values(
        token_hash=hash_refresh_token(token), session_id=values["id"], created_at=now))
    return Session(**values), token


def _find(uow, token):
    if not looks_like_refresh_token(token):
        return None
    return uow.session.execute(
        sa.select(RefreshToken, Session).join(Session, RefreshToken.session_id == Session.id)
        .where(RefreshToken.token_hash == hash_refresh_token(token))).first()


def rotate(uow, token, reuse_grace=0.0, check_user=None, now=None):
    """Spend ``token`` and return (session, next refresh token); commits.

    ``check_user(session)`` returns False when the session's user may no longer hold it (then
    the session is revoked). A token spent less than ``reuse_grace`` seconds ago is refused
    without revoking its session (a client retrying a lost reply); any other reuse revokes it.
    """
    now = now or now_utc()
    found = _find(uow, token)
    if found is None:
        raise invalid_refresh()
    spent, session = found
    if session.revoked_at is not None:
        raise invalid_refresh("revoked")
    if session.expires_at <= now:
        raise invalid_refresh("expired")
    if spent.used_at is None and check_user is not None and not check_user(session):
        revoke(uow, session.id, "user_inactive", now=now)
        uow.commit()
        raise invalid_refresh("revoked")
    won = uow.session.execute(
        sa.update(RefreshToken)
        .where(RefreshToken.token_hash == spent.token_hash, RefreshToken.used_at.is_(None))
        .values(used_at=now).execution_options(synchronize_session=False))
    if won.rowcount != 1:
        _reused(uow, spent.token_hash, session, reuse_grace, now)
    alive = uow.session.execute(
        sa.update(Session)
        .where(Session.id == session.id, Session.revoked_at.is_(None), Session.expires_at > now)
        .values(last_used_at=now).execution_options(synchronize_session=False))
    if alive.rowcount != 1:  # revoked meanwhile (logout, reuse elsewhere, user events)
        uow.rollback()
        raise invalid_refresh("revoked")
    following = new_refresh_token()
    uow.session.execute(RefreshToken.__table__.insert().values(
        token_hash=hash_refresh_token(following), session_id=session.id, created_at=now))
    uow.commit()
    return session, following


def _reused(uow, token_hash, session, reuse_grace, now):
    used_at = uow.session.scalar(sa.select(RefreshToken.used_at)
                                 .where(RefreshToken.token_hash == token_hash))
    if reuse_grace and used_at is not None and (now - used_at).total_seconds() <= reuse_grace:
        uow.rollback()
        raise invalid_refresh("already_used")
    revoke(uow, session.id, "refresh_token_reused", now=now)
    uow.commit()
    raise Unauthorized("refresh token reuse detected; the session is revoked",
                       {"reason": "reused"})


def revoke(uow, session_id, reason, user_id=None, now=None):
    """Revoke one session and announce it; False when it was not active. The caller commits."""
    now = now or now_utc()
    query = (sa.update(Session)
             .where(Session.id == session_id, Session.revoked_at.is_(None))
             .values(revoked_at=now, revoke_reason=reason)
             .returning(Session.id, Session.user_id)
             .execution_options(synchronize_session=False))
    if user_id is not None:
        query = query.where(Session.user_id == user_id)
    revoked = uow.session.execute(query).all()
    for sid, owner in revoked:
        uow.emit(REVOKED, sid, {"session_id": sid, "user_id": owner, "reason": reason})
    return bool(revoked)


def revoked_since(uow, since):
    """Ids of the sessions revoked at or after ``since``."""
    return list(uow.session.scalars(sa.select(Session.id).where(Session.revoked_at >= since)))


def revoke_all(uow, user_id, reason, now=None):
    """Revoke every live session of ``user_id``; returns how many. The caller commits."""
    now = now or now_utc()
    revoked = uow.session.execute(
        sa.update(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None),
               Session.expires_at > now)
        .values(revoked_at=now, revoke_reason=reason)
        .returning(Session.id)
        .execution_options(synchronize_session=False)).scalars().all()
    for sid in revoked:
        uow.emit(REVOKED, sid, {"session_id": sid, "user_id": user_id, "reason": reason})
    return len(revoked)


def logout(uow, token, now=None):
    """Revoke the session ``token`` belongs to (spent or not). Unknown tokens are no error
    (RFC 7009): there is nothing left to revoke. Returns whether a session was revoked."""
    found = _find(uow, token)
    if found is None:
        return False
    revoked = revoke(uow, found[1].id, "logout", now=now)
    uow.commit()
    return revoked


def end(uow, session_id, user_id=None, now=None):
    """Revoke a session by id (the ``sid`` of an access token); NotFound if not its user's."""
    for name, value in (("session_id", session_id), ("user_id", user_id)):
        if value is not None and not is_uuid(value):
            raise Invalid(f"{name} is not a valid id", {name: ["not a valid UUID"]})
    query = sa.select(Session.id).where(Session.id == session_id)
    if user_id is not None:
        query = query.where(Session.user_id == user_id)
    if uow.session.scalar(query) is None:
        raise NotFound("no such session", {"session_id": session_id})
    revoked = revoke(uow, session_id, "logout", user_id=user_id, now=now)
    uow.commit()
    return revoked


def is_active(uow, session_id, now=None):
    """Is the session there, unrevoked and unexpired?"""
    now = now or now_utc()
    return uow.session.scalar(sa.select(Session.id).where(
        Session.id == session_id, Session.revoked_at.is_(None), Session.expires_at > now)) \
        is not None


def active_of(uow, user_id, now=None):
    now = now or now_utc()
    rows = uow.session.scalars(
        sa.select(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None), Session.expires_at > now)
        .order_by(Session.created_at.desc())).all()
    return [to_dict(s) for s in rows]


def prune(session, now, retention):
    """Delete sessions (and their tokens) that ended more than ``retention`` ago."""
    ended = sa.select(Session.id).where(Session.expires_at < now - retention)
    session.execute(sa.delete(RefreshToken).where(RefreshToken.session_id.in_(ended))
                    .execution_options(synchronize_session=False))
    return session.execute(sa.delete(Session).where(Session.id.in_(ended))
                           .execution_options(synchronize_session=False)).rowcount
