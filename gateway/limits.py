"""Rate limiting: per client IP and per user, per route class, with ``limits``.

Classes (``Route.rate_limit``): ``auth`` (sign-up, login, refresh, password change: per IP,
strict), ``default`` and ``read`` (per IP, and per user when a valid token is presented). The
limits are settings (``RATE_LIMIT_<CLASS>_<IP|USER>``, e.g. ``20/minute;200/hour``) so
deployments and tests choose them; all routes of a class share one budget per key. Counts
live in memory (per process) unless ``RATELIMIT_STORAGE_URI`` names Redis
(``redis://host:6379/N``), which every gateway process then shares; if Redis fails, counting
falls back to memory for a few seconds at a time rather than failing requests.

Fixed windows, counted with the storage and rate-limit items of ``limits`` (the library
under flask-limiter, by the same maintainers): flask-limiter's own request hooks cost about
0.4 ms per request here, several times what the count itself does, and its headers are not
the IETF draft's. Responses of limited routes carry ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds until the window resets) and
``RateLimit-Policy``; a 429 also carries ``Retry-After``.
"""

import logging
import threading
import time
from typing import NamedTuple

from flask import request
from limits import parse_many
from limits.storage import storage_from_string

from gateway import request_state
from shared.errors import TooManyRequests

__all__ = ["RateLimits", "RateLimitState", "rate_limit_headers", "KINDS"]

log = logging.getLogger("gateway.limits")

KINDS = ("ip", "user")
FALLBACK_SECONDS = 5.0


class RateLimitState(NamedTuple):
    """Where a request stands in one rate-limit window (the headers describe the tightest)."""

    item: object  # the ``limits`` RateLimitItem: amount and window length
    remaining: int
    key: str
    store: object  # where it was counted (Redis, or memory while Redis fails)
    breached: bool


class RateLimits:
    def __init__(self, settings, classes):
        self.enabled = settings.get_as("RATELIMIT_ENABLED", bool)
        self.prefix = settings.get("RATELIMIT_KEY_PREFIX") or "plinth-gateway"
        uri = settings.get("RATELIMIT_STORAGE_URI") or "memory://"
        options = {}
        if uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        self.uri = uri
        self.fallback = Windows()
        self.storage = self.fallback if uri.startswith("memory://") \
            else storage_from_string(uri, **options)
        self._failed_until = 0.0
        self._lock = threading.Lock()
        self.items = {}
        for cls in classes:
            for kind in KINDS:
                value = settings.get(f"RATE_LIMIT_{cls.upper()}_{kind.upper()}")
                self.items[(cls, kind)] = sorted(parse_many(str(value)), key=_window) \
                    if value else []

    def _store(self):
        if self._failed_until and time.monotonic() < self._failed_until:
            return self.fallback
        return self.storage

    def _count(self, key, item):
        store = self._store()
        try:
            count = store.incr(key, item.get_expiry())
            return count, store
        except Exception as exc:  # the storage failing must not fail requests
            if store is self.fallback:
                raise
            with self._lock:
                self._failed_until = time.monotonic() + FALLBACK_SECONDS
            log.warning("rate-limit storage failed (%s: %s); counting in memory for %.0fs",
                        type(exc).__name__, exc, FALLBACK_SECONDS)
            return self.fallback.incr(key, item.get_expiry()), self.fallback

    def hit(self, route_class):
        """Count this request against its class's limits; TooManyRequests past one of them.

        The tightest window (least remaining) is kept in the request state for the response
        headers."""
        if not self.enabled:
            return
        state = request_state.current()
        principal = state.principal
        keys = {"ip": request.remote_addr or "unknown",
                "user": principal.user_id if principal is not None else None}
        tightest = None
        for kind in KINDS:
            if keys[kind] is None:
                continue
            for item in self.items.get((route_class, kind), ()):
                key = item.key_for(self.prefix, route_class, kind, keys[kind])
                count, store = self._count(key, item)
                window = RateLimitState(item, max(0, item.amount - count), key, store,
                                count > item.amount)
                if tightest is None or window.breached or \
                        (not tightest.breached and window.remaining < tightest.remaining):
                    tightest = window
                if window.breached:
                    state.rate_limit = tightest
                    raise TooManyRequests("rate limit exceeded; retry later", {
                        "retry_after": _reset_in(item, key, store), "limit": str(item)})
        state.rate_limit = tightest


class Windows:
    """Fixed-window counters in this process's memory (``limits``' MemoryStorage starts a
    timer thread every 10 ms to expire keys; here expired keys are swept lazily)."""

    SWEEP_EVERY = 10000

    def __init__(self):
        self._counts = {}  # key -> [count, expires_at]
        self._lock = threading.Lock()
        self._ops = 0

    def incr(self, key, expiry, amount=1):
        now = time.time()
        with self._lock:
            entry = self._counts.get(key)
            if entry is None or entry[1] <= now:
                entry = self._counts[key] = [0, now + expiry]
            entry[0] += amount
            self._ops += 1
            if self._ops >= self.SWEEP_EVERY:
                self._ops = 0
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            return entry[0]

    def get_expiry(self, key):
        entry = self._counts.get(key)
        return entry[1] if entry is not None else time.time()


def _window(item):
    return item.get_expiry()


def _reset_in(item, key, store):
    try:
        reset_at = store.get_expiry(key)
    except Exception:  # noqa: BLE001 - headers are a courtesy
        return item.get_expiry()
    return max(0, int(reset_at - time.time() + 0.999))


def rate_limit_headers(response):
    window = request_state.current().rate_limit
    if window is None:
        return response
    item = window.item
    reset = _reset_in(item, window.key, window.store)
    response.headers["RateLimit-Limit"] = str(item.amount)
    response.headers["RateLimit-Remaining"] = "0" if window.breached else str(window.remaining)
    response.headers["RateLimit-Reset"] = str(reset)
    response.headers["RateLimit-Policy"] = f"{item.amount};w={item.get_expiry()}"
    if window.breached:
        response.headers["Retry-After"] = str(max(1, reset))
    return response
