"""Ended sessions: the access tokens of a revoked session are refused before they expire.

Access tokens are checked locally (gateway.security), so on their own they would outlive a
logout, a logout-all, a password change, a reused refresh token, or a disabled or deleted user
by up to their lifetime. auth announces every revoked session (``session.revoked`` on
``auth.events``); each gateway process keeps the ids of the sessions revoked within an access
token's lifetime in ``RevokedSessions`` and refuses their tokens (401). ``SessionListener`` is
a daemon thread with an exclusive, auto-delete queue bound to that event (like the
authorisation cache's listener); once bound, at every (re)connection, it asks auth's
``revoked_sessions`` for what was revoked while it was not listening.
"""

import logging
import threading
import time

from gateway.events import EventSubscription

__all__ = ["RevokedSessions", "SessionListener", "ROUTING_KEY"]

log = logging.getLogger("gateway.revocations")

ROUTING_KEY = "session.revoked"
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

    def __init__(self, amqp_uri, revoked, fetch, heartbeat=10, retry_fetch=2.0):
        super().__init__(amqp_uri, "auth", ROUTING_KEY, "session-events", heartbeat)
        self.revoked = revoked
        self.fetch = fetch
        self.retry_fetch = retry_fetch
        self._synced = threading.Event()
        self.synced = False  # the revocations made while not listening are known
        self._last_sync = 0.0

    def on_bound(self):
        # from now on no revocation is missed; fetch what came before (on_idle)
        self.synced = False
        self._last_sync = 0.0

    def on_idle(self):
        if not self.synced and time.monotonic() - self._last_sync > self.retry_fetch:
            self._last_sync = time.monotonic()
            self._sync()

    def on_event(self, body, event_type):
        data = body.get("data") if isinstance(body, dict) else None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if session_id is None and isinstance(body, dict):
            session_id = body.get("subject")
        self.revoked.add([session_id])

    def _sync(self):
        """Learn what was revoked while this process was not listening (best effort)."""
        try:
            answer = self.fetch()
        except Exception as exc:  # noqa: BLE001 - auth may be down: retried while connected
            if self.last_error is None:  # once per run of failures, not every retry
                log.warning("could not fetch the revoked sessions from auth (%s); retrying",
                            type(exc).__name__)
            self.last_error = exc
            return False
        self.last_error = None
        self.revoked.add(answer.get("session_ids") or [], window=answer.get("window"))
        self.synced = True
        self._synced.set()
        return True

    def wait_synced(self, timeout):
        """Wait until the revocations made before this process listened are known (the
        first sync; the gateway's warm-up waits for it before taking requests)."""
        return self._synced.wait(timeout)
