"""Authorisation: each route's permission answered from a local cache of effective
permissions, kept current by authz's events.

``PermissionCache`` holds ``shared.contracts.Grants`` per user (bounded LRU with a TTL as a
safety net). A miss asks authz's ``effective_permissions`` over RPC. ``EventListener`` is a
background thread per gateway process with its own exclusive, auto-delete queue bound to the
``authz.events`` exchange, so every process of every instance hears every ``role.*`` event
and forgets exactly the ``data.affected_users`` it names. While the listener is not connected
the cache cannot be trusted, so it is bypassed (every check asks authz), and on each
(re)connection the whole cache is dropped: events may have been missed meanwhile. A
connection that died silently is found by AMQP heartbeats (``EVENTS_HEARTBEAT``, see
gateway/events.py) within about 5 s: that is the longest a grant revoked meanwhile is still
served from the cache.

A fetch that was under way when an invalidation for its user arrived is not cached: its
answer may predate the change.
"""

import itertools
import logging
import threading
import time
from collections import OrderedDict

from gateway import metrics
from gateway.events import DEFAULT_HEARTBEAT, EventSubscription
from shared.contracts import Grants

__all__ = ["PermissionCache", "EventListener", "ROUTING_KEY"]

log = logging.getLogger("gateway.authz")

SOURCE, ROUTING_KEY = "authz", "role.#"  # what the listener binds (deploy/broker_users.py)


class PermissionCache:
    def __init__(self, fetch, max_size=10000, ttl=300.0):
        self._fetch = fetch  # user_id -> the dict of authz's effective_permissions
        self.max_size = max_size
        self.ttl = ttl
        self._entries = OrderedDict()  # user_id -> (Grants, stored_at)
        self._lock = threading.Lock()
        self._stamps = itertools.count()
        self._invalidated = {}  # user_id -> (stamp, monotonic time)
        self._cleared = -1
        self.trusted = None  # a callable: is the cache being kept current? (None: always)

    def __len__(self):
        return len(self._entries)

    def grants(self, user_id):
        """The user's Grants, from the cache or from authz."""
        now = time.monotonic()
        trusted = self.trusted is None or self.trusted()
        if trusted:
            with self._lock:
                entry = self._entries.get(user_id)
                if entry is not None and now - entry[1] < self.ttl:
                    self._entries.move_to_end(user_id)
                    metrics.AUTHZ_CACHE.labels("hit").inc()
                    return entry[0]
        metrics.AUTHZ_CACHE.labels("miss" if trusted else "bypass").inc()
        started = next(self._stamps)
        grants = Grants.from_dict(self._fetch(user_id))
        if trusted:
            with self._lock:
                stamp = self._invalidated.get(user_id, (-1, 0))[0]
                if stamp < started and self._cleared < started:
                    self._entries[user_id] = (grants, time.monotonic())
                    self._entries.move_to_end(user_id)
                    while len(self._entries) > self.max_size:
                        self._entries.popitem(last=False)
        return grants

    def allows(self, user_id, permission, scope=None):
        return self.grants(user_id).allows(permission, scope)

    def invalidate(self, user_ids):
        now = time.monotonic()
        with self._lock:
            for user_id in user_ids:
                self._entries.pop(user_id, None)
                self._invalidated[user_id] = (next(self._stamps), now)
            if len(self._invalidated) > 1000:  # forget marks older than any fetch in flight
                horizon = now - 600
                self._invalidated = {u: v for u, v in self._invalidated.items()
                                     if v[1] > horizon}

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._cleared = next(self._stamps)


class EventListener(EventSubscription):
    """Consumes ``authz.events`` ``role.*`` into ``cache`` from a daemon thread."""

    def __init__(self, amqp_uri, cache, routing_key=ROUTING_KEY, heartbeat=DEFAULT_HEARTBEAT):
        super().__init__(amqp_uri, SOURCE, routing_key, "authz-events", heartbeat)
        self.cache = cache

    def on_bound(self):
        # from now on no event is missed, so what came before goes
        self.cache.clear()

    def on_event(self, body, event_type):
        metrics.AUTHZ_EVENTS.labels(event_type).inc()
        data = body.get("data") if isinstance(body, dict) else None
        users = data.get("affected_users") if isinstance(data, dict) else None
        if isinstance(users, list) and all(isinstance(u, str) for u in users):
            self.cache.invalidate(users)
        else:  # an event we cannot read precisely: forget everything to be safe
            log.warning("authz event %s without affected_users: cache cleared", event_type)
            self.cache.clear()
