"""Refresh tokens on PostgreSQL: rotation, reuse detection, the concurrent race, logout and
the absolute lifetime."""

import hashlib
from datetime import datetime, timedelta

import eventlet
import pytest
import sqlalchemy as sa
from kombu import Connection

from shared.db import make_engine
from shared.errors import Unauthorized
from tests.helpers import OTHER_PASSWORD, STRONG_PASSWORD
from tests.support.auth_helpers import login, start_platform, user_and_login
from tests.support.events import EventTap


@pytest.fixture
def tap(amqp_uri):
    listener = EventTap(amqp_uri, "auth", routing_key="session.revoked")
    yield listener
    listener.close()


@pytest.fixture
def auth_db(pg_uri):
    engine = make_engine(pg_uri, "auth", pool_size=2)
    yield engine
    engine.dispose()


def refresh(rpc, token):
    return rpc.call("auth", "refresh", kwargs={"refresh_token": token})


def refused(rpc, token):
    with pytest.raises(Unauthorized) as excinfo:
        refresh(rpc, token)
    return excinfo.value.details["reason"]


def claims_of(rpc, pair):
    return rpc.call("auth", "verify_token", kwargs={"access_token": pair["access_token"]})


def test_refresh_hands_out_a_new_pair_in_the_same_session(start_service, rpc):
    start_platform(start_service)
    user, first = user_and_login(rpc)
    second = refresh(rpc, first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    old, new = claims_of(rpc, first), claims_of(rpc, second)
    assert new["sub"] == user["id"] and new["sid"] == old["sid"] and new["jti"] != old["jti"]
    assert refresh(rpc, second["refresh_token"])["token_type"] == "Bearer"


def test_reused_refresh_token_revokes_the_family_and_announces_it(start_service, rpc, tap):
    start_platform(start_service)
    user, first = user_and_login(rpc)
    second = refresh(rpc, first["refresh_token"])
    assert refused(rpc, first["refresh_token"]) == "reused"
    assert refused(rpc, second["refresh_token"]) == "revoked"
    assert rpc.call("auth", "sessions_of", kwargs={"user_id": user["id"]}) == []
    [event] = tap.wait_for(1, event_type="session.revoked")
    assert event["subject"] == claims_of(rpc, first)["sid"]
    assert event["data"]["reason"] == "refresh_token_reused"
    assert event["data"]["user_id"] == user["id"]
    for token in (first["refresh_token"], second["refresh_token"]):
        assert token not in str(event)


def attempt_refresh(rpc, token):
    try:
        return refresh(rpc, token)
    except Unauthorized as exc:
        return exc


def test_concurrent_refreshes_of_one_token_have_exactly_one_winner(start_service, rpc):
    start_platform(start_service)
    pool = eventlet.GreenPool(4)
    for _ in range(5):
        _, pair = user_and_login(rpc)
        results = list(pool.imap(lambda token: attempt_refresh(rpc, token),
                                 [pair["refresh_token"]] * 4))
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, Unauthorized)]
        assert len(winners) == 1 and len(losers) == 3, results
        # the losers presented a spent token: reuse, so the family is revoked
        assert refused(rpc, winners[0]["refresh_token"]) == "revoked"


def test_unknown_and_malformed_refresh_tokens_are_refused(start_service, rpc):
    start_platform(start_service)
    for token in ["A" * 43, "not-a-token", "x" * 500]:
        assert refused(rpc, token) == "invalid"


def test_logout_revokes_the_session_and_is_announced(start_service, rpc, tap):
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    assert rpc.call("auth", "logout", kwargs={"refresh_token": pair["refresh_token"]}) == \
        {"revoked": True}
    assert rpc.call("auth", "logout", kwargs={"refresh_token": pair["refresh_token"]}) == \
        {"revoked": False}
    assert refused(rpc, pair["refresh_token"]) == "revoked"
    [event] = tap.wait_for(1, event_type="session.revoked")
    assert event["data"]["reason"] == "logout"


def test_end_session_by_access_token_sid(start_service, rpc):
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    sid = claims_of(rpc, pair)["sid"]
    assert rpc.call("auth", "end_session", kwargs={"session_id": sid, "user_id": user["id"]}) \
        == {"revoked": True}
    assert refused(rpc, pair["refresh_token"]) == "revoked"


def test_logout_all_revokes_every_session_of_the_user_only(start_service, rpc, tap):
    start_platform(start_service)
    user, first = user_and_login(rpc)
    second = login(rpc, user["email"])
    other, theirs = user_and_login(rpc)
    assert rpc.call("auth", "logout_all", kwargs={"user_id": user["id"]}) == {"revoked": 2}
    for pair in (first, second):
        assert refused(rpc, pair["refresh_token"]) == "revoked"
    assert refresh(rpc, theirs["refresh_token"])["access_token"]
    assert len(tap.wait_for(2, event_type="session.revoked")) == 2


def test_session_ends_at_its_absolute_lifetime_whatever_the_refreshes(start_service, rpc,
                                                                     auth_db):
    start_platform(start_service, AUTH_REFRESH_TOKEN_TTL=3600)
    user, pair = user_and_login(rpc)
    [session] = rpc.call("auth", "sessions_of", kwargs={"user_id": user["id"]})
    created = datetime.fromisoformat(session["created_at"])
    assert datetime.fromisoformat(session["expires_at"]) - created == timedelta(hours=1)
    pair = refresh(rpc, pair["refresh_token"])
    [after] = rpc.call("auth", "sessions_of", kwargs={"user_id": user["id"]})
    assert after["expires_at"] == session["expires_at"]
    with auth_db.begin() as conn:  # an hour passes
        conn.execute(sa.text("UPDATE auth.sessions SET expires_at = now() - interval '1 second'"
                             " WHERE id = :id"), {"id": session["id"]})
    assert refused(rpc, pair["refresh_token"]) == "expired"
    assert rpc.call("auth", "sessions_of", kwargs={"user_id": user["id"]}) == []


def test_refresh_token_is_stored_only_as_its_hash(start_service, rpc, auth_db):
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    with auth_db.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT t.* FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id "
            "WHERE s.user_id = :u"), {"u": user["id"]}).all()
    assert len(rows) == 1
    assert pair["refresh_token"] not in str(rows)
    assert rows[0].token_hash == hashlib.sha256(pair["refresh_token"].encode()).hexdigest()


def test_refresh_after_a_password_change_whose_event_was_lost_is_refused(start_service, rpc,
                                                                         amqp_uri):
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    # the event is lost on its way: nothing routes user.password_changed to auth any more
    with Connection(amqp_uri) as conn:
        conn.default_channel.queue_unbind(
            "evt-identity-user.password_changed--auth.on_password_changed",
            exchange="identity.events", routing_key="user.password_changed")
    rpc.call("identity", "change_password", [user["id"]],
             {"old_password": STRONG_PASSWORD, "new_password": OTHER_PASSWORD})
    eventlet.sleep(0.3)
    assert rpc.call("auth", "sessions_of", kwargs={"user_id": user["id"]}), \
        "the session was revoked after all: the event was not lost"
    assert refused(rpc, pair["refresh_token"]) == "revoked"
    # a session begun after the change refreshes as usual
    fresh = login(rpc, user["email"], password=OTHER_PASSWORD)
    assert refresh(rpc, fresh["refresh_token"])["access_token"]
