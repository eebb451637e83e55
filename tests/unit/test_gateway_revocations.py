"""The gateway's record of ended sessions and its listener's sync state, without a broker
(the listener's connection is simulated by calling its hooks as its thread would)."""

import os
import threading

import pytest

from gateway.revocations import RevokedSessions, SessionListener
from shared.errors import Unavailable


class Auth:
    """auth's ``revoked_sessions``, with a switchable outage and a gate to hold a read."""

    def __init__(self, ids=()):
        self.ids = list(ids)
        self.calls = 0
        self.down = False
        self.gate = None

    def __call__(self):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.down:
            raise ConnectionError("auth is down")
        return {"session_ids": list(self.ids), "window": 930}


def listener(auth):
    return SessionListener("amqp://unused", RevokedSessions(), auth, retry_fetch=0.0)


def bind(subject):
    """What the listener's thread does once a queue is bound."""
    subject.connections += 1
    subject.on_bound()
    subject._pid = os.getpid()
    subject._connected.set()


def test_listener_is_in_sync_only_once_connected_and_synced():
    auth = Auth(["s1"])
    subject = listener(auth)
    assert not subject.in_sync and not subject.ever_synced
    bind(subject)
    assert not subject.in_sync  # bound, but what came before is not known yet
    subject.on_idle()
    subject._syncing.join(5)
    assert subject.in_sync and "s1" in subject.revoked
    subject._connected.clear()  # the link is found dead
    assert not subject.in_sync and subject.ever_synced


def test_a_sync_that_outlives_its_connection_does_not_count_for_the_next_one():
    auth = Auth(["s1"])
    auth.gate = threading.Event()
    subject = listener(auth)
    bind(subject)
    subject.on_idle()  # the read starts on the first connection...
    subject._connected.clear()
    bind(subject)  # ...which dies and is replaced while auth answers
    auth.gate.set()
    subject._syncing.join(5)
    assert "s1" in subject.revoked  # what it read still counts
    assert not subject.in_sync  # but the second connection's gap is not covered
    subject.on_idle()
    subject._syncing.join(5)
    assert subject.in_sync


def test_tokens_wait_for_a_fresh_read_while_not_in_sync_and_fail_closed():
    auth = Auth(["s1"])
    subject = listener(auth)
    subject.ensure_fresh(60)
    subject.ensure_fresh(60)
    assert auth.calls == 1 and "s1" in subject.revoked
    subject.fetched_at -= 61  # the read is too old now
    auth.down = True
    with pytest.raises(Unavailable):
        subject.ensure_fresh(60)
    with pytest.raises(Unavailable):  # not asked again at once
        subject.ensure_fresh(60)
    assert auth.calls == 2


def test_in_sync_listener_needs_no_read():
    auth = Auth()
    subject = listener(auth)
    bind(subject)
    subject.on_idle()
    subject._syncing.join(5)
    calls = auth.calls
    auth.down = True
    subject.ensure_fresh(0)
    assert auth.calls == calls
