"""Login and refresh: the flows that tie identity, throttling, sessions and tokens together."""

import logging
from datetime import UTC, datetime

from auth import sessions, throttle
from shared.context import Actor
from shared.errors import NotFound, TooManyRequests, Unauthorized, Unavailable

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "invalid email or password"
AUTHED = "user.authed"
LOGIN_FAILED = "user.login_failed"


def login(uow, tokens, guard, verify_credentials, email, password, client):
    """The token pair for correct credentials; Unauthorized or TooManyRequests otherwise.

    ``verify_credentials(email=, password=)`` is identity's check (the user dict, or
    Unauthorized). A throttled attempt is refused before it costs a password hash. An attempt
    is counted in flight (committed) before identity hashes, so that concurrent attempts
    cannot all pass the throttle before the first failure is recorded; no lock is held
    while identity hashes.
    """
    keys = guard.keys(email, client)
    try:
        throttle.reserve(uow.session, keys, sessions.now_utc(), guard.policy,
                         guard.reservation_hold)
    except TooManyRequests:
        uow.rollback()  # nothing reserved
        raise
    uow.commit()
    try:
        user = verify_credentials(email=email, password=password)
    except Unauthorized:
        blocked = throttle.record_failure(uow.session, keys, sessions.now_utc(), guard.policy)
        uow.emit(LOGIN_FAILED, keys.account, {
            "account": keys.account, "client": client, "reason": "invalid_credentials",
            "throttled_for": round(blocked, 3) if blocked else None,  # seconds
        })
        uow.commit()
        if blocked:
            log.warning("failed logins are throttled for %.0fs", blocked,
                        extra={"account": keys.account})
        raise Unauthorized(INVALID_CREDENTIALS) from None
    except BaseException:
        _give_back(uow, keys, guard)
        raise
    session, refresh_token = sessions.start(uow, user["id"], keys, client,
                                            tokens.settings.refresh_ttl)
    throttle.release(uow.session, keys, sessions.now_utc(), guard.policy, success=True)
    uow.emit(AUTHED, user["id"], {"user_id": user["id"], "session_id": session.id,
                                  "client": client},
             actor=Actor(user["id"], user.get("type") or "user"))
    uow.commit()
    return pair(tokens, user["id"], session.id, refresh_token)


def _give_back(uow, keys, guard):
    """Identity did not answer (or the worker is being killed): the attempt counts neither
    way. Best effort: a reservation left behind expires on its own."""
    try:
        uow.rollback()
        throttle.release(uow.session, keys, sessions.now_utc(), guard.policy)
        uow.commit()
    except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
        log.warning("could not release a login reservation (%s)", type(exc).__name__)
        uow.rollback()


def pair(tokens, user_id, session_id, refresh_token):
    issued = tokens.issue(user_id, session_id)
    return {"access_token": issued["access_token"], "refresh_token": refresh_token,
            "token_type": issued["token_type"], "expires_in": issued["expires_in"]}


def user_checker(get_user):
    """check_user for sessions.rotate: may this session's user still hold it, says identity?

    No when the user is not active, or changed their password after the session began.
    Identity's events revoke such sessions anyway; this closes the moment before they arrive,
    and stands in for an event that never did. When identity cannot answer the refresh goes
    ahead (it cannot have disabled anyone or changed a password meanwhile).
    """

    def allowed(session):
        try:
            user = get_user(user_id=session.user_id)
        except NotFound:
            return False
        except Unavailable:
            log.warning("identity unavailable; refresh allowed without the user check")
            return True
        return user.get("status") == "active" and \
            not changed_since(user.get("password_changed_at"), session.created_at)

    return allowed


def changed_since(password_changed_at, moment):
    """True when identity's ``password_changed_at`` (ISO 8601 text or None) is after
    ``moment``. Both clocks are the platform's hosts' (kept in sync, as token expiry needs)."""
    if not password_changed_at:
        return False
    changed = datetime.fromisoformat(password_changed_at)
    if changed.tzinfo is None:
        changed = changed.replace(tzinfo=UTC)
    return changed > moment


def refresh(uow, tokens, guard, get_user, refresh_token):
    check = user_checker(get_user) if guard.check_user_on_refresh else None
    session, following = sessions.rotate(uow, refresh_token, guard.reuse_grace, check)
    return pair(tokens, session.user_id, session.id, following)
