"""Two audit instances consuming at once keep one gap-free, correctly linked chain."""

import uuid

import eventlet

from audit.service import AuditService
from tests.support.audit_helpers import EventPublisher, Trail, consumer_of, envelope, wait_until

SOURCES = ("identity", "auth", "authz")


def test_two_instances_share_the_queue_and_keep_the_chain_whole(fresh_pg_uri, start_service,
                                                               rpc, amqp_uri):
    settings = dict(DB_URI=fresh_pg_uri, AUDIT_BATCH_SIZE=40, AUDIT_PREFETCH=80,
                    AUDIT_BATCH_WAIT_MS=10)
    instances = [start_service(AuditService, **settings) for _ in range(2)]
    publisher = EventPublisher(amqp_uri)
    events = [envelope("thing.happened", source=SOURCES[n % 3], data={"n": n})
              for n in range(1200)]
    # every event twice, the copies far apart: the two instances race to record them
    for event in events + events[::-1]:
        publisher.publish(event)
    publisher.close()

    # meanwhile, record() calls append to the same chain
    tag = uuid.uuid4().hex[:8]
    pool = eventlet.GreenPool(4)
    recorded = list(pool.imap(
        lambda n: rpc.call("audit", "record", kwargs={"action": "test.recorded",
                                                      "source": "tests", "subject": tag}),
        range(40)))

    trail = Trail(fresh_pg_uri)
    assert wait_until(lambda: trail.count() == 1240, timeout=30), trail.count()
    assert trail.scalar("SELECT max(seq) FROM audit.entries") == 1240
    assert trail.scalar("SELECT count(DISTINCT event_id) FROM audit.entries") == 1240
    stored = {r["event_id"] for r in trail.rows("SELECT event_id FROM audit.entries")}
    assert stored == {e["event_id"] for e in events} | {r["event_id"] for r in recorded}
    trail.close()

    stats = [consumer_of(c).stats for c in instances]
    assert wait_until(lambda: sum(s.duplicates for s in stats) == 1200)
    assert sum(s.written for s in stats) == 1200
    assert all(s.written > 0 for s in stats), [s.written for s in stats]
    assert trail_count_is_still(fresh_pg_uri, 1240)
    report = rpc.call("audit", "verify")
    assert (report["ok"], report["checked"]) == (True, 1240), report


def trail_count_is_still(db_uri, count):
    trail = Trail(db_uri)
    try:
        return trail.count() == count
    finally:
        trail.close()
