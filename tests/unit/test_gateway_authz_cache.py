"""The permission cache: hits, misses, invalidation by event, and the race with a fetch."""

import uuid

import eventlet

from gateway.authz_cache import EventListener, PermissionCache


class Authz:
    """Stands for authz's effective_permissions RPC."""

    def __init__(self):
        self.grants = {}
        self.calls = []
        self.before_answer = None

    def __call__(self, user_id):
        self.calls.append(user_id)
        answer = {"user_id": user_id, "global": sorted(self.grants.get(user_id, ())),
                  "scopes": {"billing": ["invoices:*"]}}
        if self.before_answer is not None:
            hook, self.before_answer = self.before_answer, None
            hook()
        return answer


def user():
    return str(uuid.uuid4())


def test_a_miss_asks_authz_once_then_the_cache_answers():
    authz, alice = Authz(), user()
    authz.grants[alice] = {"profile:read", "users:*"}
    cache = PermissionCache(authz)
    assert cache.allows(alice, "users:delete")
    assert cache.allows(alice, "profile:read")
    assert not cache.allows(alice, "audit:read")
    assert cache.allows(alice, "invoices:refund", "billing")
    assert not cache.allows(alice, "invoices:refund")
    assert authz.calls == [alice]


def test_invalidation_forgets_exactly_the_affected_users():
    authz, alice, bob = Authz(), user(), user()
    authz.grants = {alice: {"users:read"}, bob: {"users:read"}}
    cache = PermissionCache(authz)
    assert cache.allows(alice, "users:read") and cache.allows(bob, "users:read")
    authz.grants = {alice: set(), bob: set()}
    cache.invalidate([alice])
    assert not cache.allows(alice, "users:read")
    assert cache.allows(bob, "users:read")  # not named by the event: still cached
    assert authz.calls == [alice, bob, alice]


def test_an_answer_older_than_an_invalidation_is_not_cached():
    authz, alice = Authz(), user()
    authz.grants[alice] = {"users:read"}
    cache = PermissionCache(authz)
    # the revocation lands while authz's (old) answer is on its way back
    authz.before_answer = lambda: cache.invalidate([alice])
    assert cache.allows(alice, "users:read")
    authz.grants[alice] = set()
    assert not cache.allows(alice, "users:read")
    cache.invalidate([alice])
    authz.before_answer = cache.clear  # the listener reconnected meanwhile
    cache.allows(alice, "users:read")
    assert len(cache) == 0


def test_an_untrusted_cache_asks_authz_every_time():
    authz, alice = Authz(), user()
    cache = PermissionCache(authz)
    cache.trusted = lambda: False
    for _ in range(3):
        cache.allows(alice, "users:read")
    assert len(authz.calls) == 3 and len(cache) == 0


def test_size_and_age_are_bounded():
    authz = Authz()
    cache = PermissionCache(authz, max_size=3, ttl=0.05)
    users = [user() for _ in range(5)]
    for u in users:
        cache.grants(u)
    assert len(cache) == 3
    cache.grants(users[-1])
    assert authz.calls.count(users[-1]) == 1
    eventlet.sleep(0.06)
    cache.grants(users[-1])
    assert authz.calls.count(users[-1]) == 2


class Message:
    def __init__(self, routing_key):
        self.delivery_info = {"routing_key": routing_key}
        self.acked = False

    def ack(self):
        self.acked = True


def test_events_invalidate_their_affected_users_and_unreadable_ones_clear_all():
    authz, alice, bob = Authz(), user(), user()
    cache = PermissionCache(authz)
    listener = EventListener("amqp://unused", cache)
    cache.grants(alice), cache.grants(bob)
    message = Message("role.unassigned")
    listener._on_message({"event_type": "role.unassigned",
                          "data": {"affected_users": [alice]}}, message)
    assert message.acked and len(cache) == 1
    listener._on_message({"event_type": "role.updated", "data": {}}, Message("role.updated"))
    assert len(cache) == 0
    assert listener.received == 2
