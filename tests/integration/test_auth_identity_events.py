"""identity's events revoke a user's sessions: password change, disable, delete; and a
redelivered event changes nothing."""

import time

import pytest
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange

from shared.errors import Unauthorized
from tests.helpers import OTHER_PASSWORD, STRONG_PASSWORD
from tests.support.auth_helpers import login, start_platform, user_and_login
from tests.support.events import EventTap


def wait_until_no_sessions(rpc, user_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while rpc.call("auth", "sessions_of", kwargs={"user_id": user_id}):
        assert time.monotonic() < deadline, "sessions were not revoked"
        time.sleep(0.02)


def assert_refresh_refused(rpc, pair):
    with pytest.raises(Unauthorized):
        rpc.call("auth", "refresh", kwargs={"refresh_token": pair["refresh_token"]})


def two_sessions(rpc):
    user, first = user_and_login(rpc)
    return user, [first, login(rpc, user["email"])]


def revocation_reasons(tap, count):
    return {e["data"]["reason"] for e in tap.wait_for(count, event_type="session.revoked")}


@pytest.fixture
def tap(amqp_uri):
    listener = EventTap(amqp_uri, "auth", routing_key="session.revoked")
    yield listener
    listener.close()


def test_password_change_revokes_every_session(start_service, rpc, tap):
    start_platform(start_service)
    user, pairs = two_sessions(rpc)
    rpc.call("identity", "change_password", [user["id"]],
             {"old_password": STRONG_PASSWORD, "new_password": OTHER_PASSWORD})
    wait_until_no_sessions(rpc, user["id"])
    for pair in pairs:
        assert_refresh_refused(rpc, pair)
    assert revocation_reasons(tap, 2) == {"password_changed"}
    # the new password opens a new session
    assert login(rpc, user["email"], password=OTHER_PASSWORD)["access_token"]


def test_disabling_a_user_revokes_every_session(start_service, rpc, tap):
    start_platform(start_service)
    user, pairs = two_sessions(rpc)
    rpc.call("identity", "disable_user", [user["id"]])
    wait_until_no_sessions(rpc, user["id"])
    assert revocation_reasons(tap, 2) == {"user_disabled"}


def test_deleting_a_user_revokes_every_session(start_service, rpc, tap):
    start_platform(start_service, AUTH_CHECK_USER_ON_REFRESH=False)
    user, pairs = two_sessions(rpc)
    rpc.call("identity", "delete_user", [user["id"]])
    wait_until_no_sessions(rpc, user["id"])
    for pair in pairs:  # revoked by the event, not by a check at refresh (switched off)
        assert_refresh_refused(rpc, pair)
    assert revocation_reasons(tap, 2) == {"user_deleted"}


def test_other_users_sessions_survive(start_service, rpc):
    start_platform(start_service)
    user, _ = user_and_login(rpc)
    bystander, theirs = user_and_login(rpc)
    rpc.call("identity", "disable_user", [user["id"]])
    wait_until_no_sessions(rpc, user["id"])
    assert rpc.call("auth", "refresh", kwargs={"refresh_token": theirs["refresh_token"]})


def test_redelivered_identity_event_is_handled_once(start_service, rpc, amqp_uri):
    start_platform(start_service)
    identity_tap = EventTap(amqp_uri, "identity", routing_key="user.disabled")
    try:
        user, _ = user_and_login(rpc)
        rpc.call("identity", "disable_user", [user["id"]])
        [event] = identity_tap.wait_for(1)
        wait_until_no_sessions(rpc, user["id"])
        rpc.call("identity", "enable_user", [user["id"]])
        survivor = login(rpc, user["email"])
        # the broker delivers the same event again (at-least-once), then a fresh one for
        # someone else, which tells us the duplicate has been consumed
        sentinel_user, _ = user_and_login(rpc)
        sentinel = {**event, "event_id": "sentinel-" + event["event_id"],
                    "subject": sentinel_user["id"]}
        with Connection(amqp_uri) as conn:
            producer = Producer(conn.channel(), exchange=get_event_exchange("identity", {}))
            for envelope in (event, sentinel):
                producer.publish(envelope, routing_key="user.disabled", serializer="json")
        wait_until_no_sessions(rpc, sentinel_user["id"])
        assert [s["id"] for s in rpc.call("auth", "sessions_of",
                                          kwargs={"user_id": user["id"]})] \
            == [rpc.call("auth", "verify_token",
                         kwargs={"access_token": survivor["access_token"]})["sid"]]
    finally:
        identity_tap.close()
