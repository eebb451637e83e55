"""Ended sessions: the access tokens of a revoked session are refused before they expire.

Access tokens are checked locally (gateway.security), so on their own they would outlive a
logout, a logout-all, a password change, a reused refresh token, or a disabled or deleted user
by up to their lifetime. auth announces every revoked session (``session.revoked`` on
``auth.events``); each gateway process keeps the ids of the sessions revoked within an access
token's lifetime in ``RevokedSessions`` and refuses their tokens (401). ``SessionListener`` is
a daemon thread with an exclusive, auto-delete queue bound to that event (like the
authorisation cache's listener); once bound, at every (re)connection, it asks auth's
``revoked_sessions`` for what was revoked while it was not listening.

While the listener is not *in sync* (it never fetched that list since its queue was bound:
the gateway just started, auth cannot answer, or the connection was lost — a dead link is
found by heartbeats within seconds), revocations may be missed, so no token is taken on trust:
before a token is accepted, ``ensure_fresh`` makes sure the list was read from auth within
``SESSION_CHECK_INTERVAL`` seconds (one read per process per interval, whatever the traffic),
and when auth cannot say, the token is refused with 503. Tokens of every age are checked: a
session of any age may have ended while nobody listened.
"""

import logging
import threading
import time

from gateway.events import DEFAULT_HEARTBEAT, EventSubscription
from shared.errors import Unavailable

__all__ = ["RevokedSessions", "SessionListener", "ROUTING_KEY"]

log = logging.getLogger("gateway.revocations")

SOURCE, ROUTING_KEY = "auth", "session.revoked"  # what the listener binds (deploy/broker_users.py)
DEFAULT_WINDOW = 3600.0  # until auth says how long its access tokens live
MAX_ENTRIES = 1_000_000


class RevokedSessions:
    """Session ids whose access tokens are no longer accepted, each kept for ``window``
    seconds (an access token's lifetime and the clock leeway, as auth reports them)."""

    def __init__(self, window=DEFAULT_WINDOW, clock=time.monotonic):
        self.window = window
        self.clock = clock
        self._until = {}  # session id -> when its tokens have expired anyway
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._until)

    def __contains__(self, session_id):
        if session_id is None:
            return False
        until = self._until.get(session_id)
        return until is not None and until > self.clock()

    def add(self, session_ids, window=None):
        if window:
            self.window = float(window)
        until = self.clock() + self.window
        with self._lock:
            for session_id in session_ids:
                if isinstance(session_id, str) and session_id:
                    self._until[session_id] = until
            if len(self._until) > MAX_ENTRIES // 2:
                now = self.clock()
                self._until = {s: u for s, u in self._until.items() if u > now}


class SessionListener(EventSubscription):
    """Consumes ``auth.events`` ``session.revoked`` into ``revoked``; ``fetch()`` returns
    auth's ``revoked_sessions`` answer (``{"session_ids": [...], "window": seconds}``)."""

    def __init__(self, amqp_uri, revoked, fetch, heartbeat=DEFAULT_HEARTBEAT, retry_fetch=2.0):
        super().__init__(amqp_uri, SOURCE, ROUTING_KEY, "session-events", heartbeat)
        self.revoked = revoked
        self.fetch = fetch
        self.retry_fetch = retry_fetch
        self._synced = threading.Event()
        self.synced = False  # the revocations made before this connection are known
        self._bound = 0  # which connection the queue is bound on (EventSubscription.connections)
        self._last_sync = 0.0
        self._syncing = None
        self.fetched_at = None  # monotonic start of the last good read of auth's list
        self._fresh_lock = threading.Lock()
        self._failed_at = None

    @property
    def in_sync(self):
        """Listening, and every revocation made before the queue was bound is known."""
        return self.synced and self.connected

    def on_bound(self):
        # from now on no revocation is missed; fetch what came before (on_idle)
        self.synced = False
        self._bound = self.connections
        self._last_sync = 0.0

    def on_idle(self):
        if self.synced or time.monotonic() - self._last_sync <= self.retry_fetch:
            return
        if self._syncing is not None and self._syncing.is_alive():
            return
        self._last_sync = time.monotonic()
        # in a thread of its own: an RPC to auth may take seconds, while the consumer must
        # keep reading (and sending heartbeats) to stay connected
        self._syncing = threading.Thread(target=self._sync, args=(self._bound,),
                                         name=f"{self.name}-sync", daemon=True)
        self._syncing.start()

    def on_event(self, body, event_type):
        data = body.get("data") if isinstance(body, dict) else None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if session_id is None and isinstance(body, dict):
            session_id = body.get("subject")
        self.revoked.add([session_id])

    def _read(self):
        """Read auth's list into ``revoked``; the monotonic time the read started."""
        started = time.monotonic()
        answer = self.fetch()
        self.revoked.add(answer.get("session_ids") or [], window=answer.get("window"))
        self.fetched_at = started
        return started

    def _sync(self, bound):
        """Learn what was revoked before the queue was bound on connection ``bound``."""
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - auth may be down: retried while connected
            if self.last_error is None:  # once per run of failures, not every retry
                log.warning("could not fetch the revoked sessions from auth (%s); retrying",
                            type(exc).__name__)
            self.last_error = exc
            return False
        self.last_error = None
        if bound == self._bound == self.connections:  # not reconnected meanwhile
            self.synced = True
        self._synced.set()
        return True

    def wait_synced(self, timeout):
        """Wait until the revocations made before this process listened are known (the
        first sync; the gateway's warm-up waits for it before taking requests)."""
        return self._synced.wait(timeout)

    @property
    def ever_synced(self):
        return self.fetched_at is not None

    def ensure_fresh(self, max_age):
        """Return when tokens may be checked against ``revoked``: the listener is in sync, or
        auth's list was read less than ``max_age`` seconds ago (read now when not). Raises
        Unavailable when auth cannot say (a failed read is not retried for ``max_age``)."""
        if self.in_sync:
            return
        with self._fresh_lock:
            now = time.monotonic()
            if self.fetched_at is not None and now - self.fetched_at < max_age:
                return
            if self._failed_at is not None and now - self._failed_at < max_age:
                raise _cannot_check()
            try:
                self._read()
            except Exception as exc:  # noqa: BLE001 - whatever it was, the token is unchecked
                if self._failed_at is None:  # once per run of failures
                    log.warning("not listening to auth's events and auth did not answer (%s):"
                                " access tokens are refused (503) until it does",
                                type(exc).__name__)
                self._failed_at = time.monotonic()
                raise _cannot_check() from None
            self._failed_at = None


def _cannot_check():
    return Unavailable("cannot check the session of this access token now; try again",
                       {"service": "auth"})
