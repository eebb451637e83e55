"""Sessions and refresh tokens: rotation, reuse detection, revocation, lifetime (SQLite)."""

from datetime import timedelta

import pytest
import sqlalchemy as sa

from auth import sessions, throttle
from auth.models import RefreshToken, Session
from auth.tokens import hash_refresh_token
from shared.errors import Invalid, NotFound, Unauthorized
from tests.support.auth_helpers import outbox_events, sqlite_database, unit_of_work

CLIENT = {"ip": "198.51.100.1", "user_agent": "pytest"}
USER, OTHER_USER = "01a20000-0000-7000-8000-000000000001", "01a20000-0000-7000-8000-000000000002"
DAY = 86400


@pytest.fixture
def db(tmp_path):
    engine, factory = sqlite_database(tmp_path)
    yield factory
    engine.dispose()


def open_session(db, user_id=USER, lifetime=30 * DAY, now=None):
    uow = unit_of_work(db)
    keys = throttle.Keys.of(b"k" * 32, "ann@example.test", CLIENT)
    session, token = sessions.start(uow, user_id, keys, CLIENT, lifetime, now=now)
    uow.commit()
    uow.close()
    return session, token


def rotate(db, token, **options):
    uow = unit_of_work(db)
    try:
        return sessions.rotate(uow, token, **options)
    finally:
        uow.close()


def refused(db, token, **options):
    with pytest.raises(Unauthorized) as excinfo:
        rotate(db, token, **options)
    return excinfo.value.details["reason"]


def stored(db, model):
    with db() as s:
        return s.scalars(sa.select(model)).all()


def test_login_session_stores_only_the_hash_of_its_refresh_token(db):
    session, token = open_session(db)
    [row] = stored(db, RefreshToken)
    assert row.token_hash == hash_refresh_token(token) and row.session_id == session.id
    with db() as s:
        dump = " ".join(str(v) for r in s.execute(sa.text("SELECT * FROM refresh_tokens"))
                        for v in r)
    assert token not in dump


def test_refresh_rotates_the_token_within_the_same_session(db):
    session, first = open_session(db)
    same, second = rotate(db, first)
    assert same.id == session.id and second != first
    third_session, third = rotate(db, second)
    assert third_session.id == session.id
    spent = {r.token_hash: r.used_at for r in stored(db, RefreshToken)}
    assert spent[hash_refresh_token(first)] is not None
    assert spent[hash_refresh_token(second)] is not None
    assert spent[hash_refresh_token(third)] is None


def test_reused_refresh_token_revokes_its_whole_family(db):
    session, first = open_session(db)
    _, second = rotate(db, first)
    with pytest.raises(Unauthorized) as excinfo:
        rotate(db, first)
    assert excinfo.value.details == {"reason": "reused"}
    assert refused(db, second) == "revoked"  # the legitimate holder is out too
    [row] = stored(db, Session)
    assert row.revoked_at is not None and row.revoke_reason == "refresh_token_reused"
    [event] = outbox_events(db, "session.revoked")
    assert event["subject"] == session.id
    assert event["data"] == {"session_id": session.id, "user_id": USER,
                             "reason": "refresh_token_reused"}
    assert first not in str(event) and second not in str(event)


def test_reuse_within_the_grace_period_is_refused_without_revoking(db):
    _, first = open_session(db)
    _, second = rotate(db, first)
    assert refused(db, first, reuse_grace=30.0) == "already_used"
    assert rotate(db, second, reuse_grace=30.0)[1]
    assert stored(db, Session)[0].revoked_at is None


def test_reuse_after_the_grace_period_revokes(db):
    _, first = open_session(db)
    rotate(db, first)
    with db() as s:
        s.execute(sa.update(RefreshToken).where(RefreshToken.used_at.isnot(None))
                  .values(used_at=sessions.now_utc() - timedelta(seconds=31)))
        s.commit()
    with pytest.raises(Unauthorized) as excinfo:
        rotate(db, first, reuse_grace=30.0)
    assert excinfo.value.details["reason"] == "reused"


def test_refresh_that_loses_the_race_for_a_token_is_treated_as_reuse(db):
    """The conditional update decides: the second spender finds the token spent."""
    _, token = open_session(db)
    winners = []

    def spend_it_first(user_id):
        if not winners:
            winners.append(rotate(db, token, check_user=lambda _: True))
        return True

    with pytest.raises(Unauthorized) as excinfo:
        rotate(db, token, check_user=spend_it_first)
    assert excinfo.value.details["reason"] == "reused"
    assert len(winners) == 1
    assert stored(db, Session)[0].revoke_reason == "refresh_token_reused"


def test_unknown_or_malformed_refresh_tokens_are_refused(db):
    open_session(db)
    for token in ["x" * 43, "not a token", "", "A" * 44]:
        assert refused(db, token) == "invalid"


def test_session_has_an_absolute_lifetime_that_refresh_does_not_extend(db):
    session, token = open_session(db, lifetime=60)
    _, token = rotate(db, token)
    [row] = stored(db, Session)
    assert row.expires_at == session.expires_at
    later = session.expires_at + timedelta(seconds=1)
    assert refused(db, token, now=later) == "expired"


def test_refresh_of_an_inactive_user_revokes_the_session(db):
    _, token = open_session(db)
    assert refused(db, token, check_user=lambda user_id: False) == "revoked"
    assert stored(db, Session)[0].revoke_reason == "user_inactive"
    assert len(outbox_events(db, "session.revoked")) == 1


def test_logout_revokes_the_session_once(db):
    session, token = open_session(db)
    uow = unit_of_work(db)
    assert sessions.logout(uow, token) is True
    assert sessions.logout(uow, token) is False
    assert refused(db, token) == "revoked"
    [event] = outbox_events(db, "session.revoked")
    assert event["data"]["reason"] == "logout" and event["subject"] == session.id


def test_logout_with_a_spent_token_still_ends_the_session(db):
    _, first = open_session(db)
    _, second = rotate(db, first)
    assert sessions.logout(unit_of_work(db), first) is True
    assert refused(db, second) == "revoked"


def test_logout_with_an_unknown_token_revokes_nothing(db):
    open_session(db)
    assert sessions.logout(unit_of_work(db), "x" * 43) is False
    assert sessions.logout(unit_of_work(db), "garbage") is False
    assert stored(db, Session)[0].revoked_at is None
    assert outbox_events(db) == []


def test_end_session_by_id_checks_its_owner(db):
    session, token = open_session(db)
    with pytest.raises(NotFound):
        sessions.end(unit_of_work(db), session.id, user_id=OTHER_USER)
    assert stored(db, Session)[0].revoked_at is None
    assert sessions.end(unit_of_work(db), session.id, user_id=USER) is True
    assert sessions.end(unit_of_work(db), session.id) is False
    with pytest.raises(NotFound):
        sessions.end(unit_of_work(db), "01a20000-0000-7000-8000-00000000ffff")
    with pytest.raises(Invalid):
        sessions.end(unit_of_work(db), "not-a-uuid")


def test_revoke_all_ends_every_live_session_of_the_user_only(db):
    mine = [open_session(db)[0].id for _ in range(3)]
    theirs, _ = open_session(db, user_id=OTHER_USER)
    expired, _ = open_session(db, now=sessions.now_utc() - timedelta(days=31))
    uow = unit_of_work(db)
    assert sessions.revoke_all(uow, USER, "logout_all") == 3
    uow.commit()
    assert sessions.revoke_all(uow, USER, "logout_all") == 0
    uow.commit()
    events = outbox_events(db, "session.revoked")
    assert sorted(e["subject"] for e in events) == sorted(mine)
    assert {e["data"]["reason"] for e in events} == {"logout_all"}
    assert sessions.active_of(unit_of_work(db), OTHER_USER)[0]["id"] == theirs.id
    assert expired.id not in [e["subject"] for e in events]


def test_active_sessions_list_no_secrets(db):
    session, token = open_session(db)
    revoked, _ = open_session(db)
    uow = unit_of_work(db)
    sessions.revoke(uow, revoked.id, "logout")
    uow.commit()
    [listed] = sessions.active_of(unit_of_work(db), USER)
    assert listed["id"] == session.id and listed["client"] == CLIENT
    assert set(listed) == {"id", "user_id", "client", "created_at", "last_used_at",
                           "expires_at"}
    assert token not in str(listed) and hash_refresh_token(token) not in str(listed)


def test_prune_deletes_sessions_ended_long_ago_with_their_tokens(db):
    old, _ = open_session(db, now=sessions.now_utc() - timedelta(days=40))
    current, _ = open_session(db)
    with db() as s:
        assert sessions.prune(s, sessions.now_utc(), timedelta(days=1)) == 1
        s.commit()
    assert [r.id for r in stored(db, Session)] == [current.id]
    assert {r.session_id for r in stored(db, RefreshToken)} == {current.id}
    assert old.id not in {r.id for r in stored(db, Session)}
