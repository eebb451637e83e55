"""The transactional outbox: events survive a broker outage; consumers are idempotent."""

import time
import uuid

import eventlet
import sqlalchemy as sa
from kombu import Connection, Producer
from nameko.standalone.events import get_event_exchange
from sqlalchemy.orm import sessionmaker

from identity.models import Base as IdentityBase
from identity.models import User
from shared import migrations, outbox
from shared.db import UnitOfWork, make_engine
from tests.support.events import EventTap
from tests.support.faultproxy import FaultProxy
from tests.support.probe.service import ProbeService

OUTBOX = IdentityBase.metadata.tables["identity.outbox"]


def _user(email):
    now = outbox.utcnow()
    return User(id=str(uuid.uuid4()), email=email, email_normalized=email, display_name="",
                status="active", type="user", created_at=now, updated_at=now)


def _pending(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(OUTBOX)
                            .where(OUTBOX.c.sent_at.is_(None))).scalar()


def test_change_committed_while_broker_is_down_is_announced_once_it_returns(
        fresh_pg_uri, amqp_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    tap = EventTap(amqp_uri, "identity")
    host_uri, vhost = amqp_uri.rsplit("/", 1)
    with FaultProxy(("127.0.0.1", 5672)) as proxy:
        relay = outbox.Relay(engine, "identity",
                             f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", interval=0.05)
        runner = eventlet.spawn(relay.run)
        try:
            proxy.cut()
            uow = UnitOfWork(sessionmaker(bind=engine), "identity", {"request_id": "outage"})
            uow.session.add(_user("outage@example.test"))
            env = uow.emit("user.created", "u-outage", {"email": "outage@example.test"})
            uow.commit()
            uow.close()
            eventlet.sleep(1.0)
            assert _pending(engine) == 1, "an event was marked sent while the broker was down"
            assert tap.wait_for(1, timeout=0.2) == []

            proxy.restore()
            received = tap.wait_for(1, timeout=10)
            assert [e["event_id"] for e in received] == [env["event_id"]]
            deadline = time.monotonic() + 5
            while _pending(engine) and time.monotonic() < deadline:
                eventlet.sleep(0.05)
            assert _pending(engine) == 0
            assert tap.headers_of(env["event_id"])["nameko.request_id"] == "outage"
            eventlet.sleep(0.5)
            assert len(tap.wait_for(2, timeout=0.3)) == 1, "published more than once"
        finally:
            relay.stop()
            runner.wait()
            tap.close()
            engine.dispose()


def test_rollback_discards_the_event_with_the_change(fresh_pg_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    uow = UnitOfWork(sessionmaker(bind=engine), "identity", {})
    uow.session.add(_user("rolled@example.test"))
    uow.emit("user.created", "u-rolled", {})
    uow.rollback()
    uow.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(OUTBOX)).scalar() == 0
    engine.dispose()


def _publish_twice(amqp_uri, envelope):
    with Connection(amqp_uri) as conn:
        exchange = get_event_exchange("identity", {})
        producer = Producer(conn.channel(), exchange=exchange)
        for _ in range(2):
            producer.publish(envelope, routing_key="user.created", serializer="json",
                             headers=outbox.headers_for(envelope), declare=[exchange])


def test_the_same_event_delivered_twice_changes_state_once(start_service, rpc, amqp_uri):
    start_service(ProbeService)
    subject = uuid.uuid4().hex
    envelope = outbox.envelope("identity", "user.created", subject, {}, {"request_id": "dup"})
    _publish_twice(amqp_uri, envelope)
    deadline = time.monotonic() + 5
    while rpc.call("probe", "tally", [subject]) < 1 and time.monotonic() < deadline:
        eventlet.sleep(0.05)
    eventlet.sleep(0.5)  # give the duplicate every chance to be (wrongly) applied
    assert rpc.call("probe", "tally", [subject]) == 1


def test_two_consumers_racing_on_one_event_apply_it_once(start_service, rpc, amqp_uri):
    # two instances share the handler's queue; a redelivered duplicate may land on either
    start_service(ProbeService)
    start_service(ProbeService)
    subjects = [uuid.uuid4().hex for _ in range(20)]
    for subject in subjects:
        envelope = outbox.envelope("identity", "user.created", subject, {}, {})
        _publish_twice(amqp_uri, envelope)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = [rpc.call("probe", "tally", [s]) for s in subjects]
        if all(counts):
            break
        eventlet.sleep(0.1)
    eventlet.sleep(0.3)
    assert [rpc.call("probe", "tally", [s]) for s in subjects] == [1] * 20


def test_service_events_reach_consumers_through_the_outbox(start_service, rpc, amqp_uri):
    start_service(ProbeService)
    tap = EventTap(amqp_uri, "probe")
    assert rpc.call("probe", "bump", ["x"], context={"request_id": "bump-1"}) == 1
    [event] = tap.wait_for(1, timeout=5)
    assert event["event_type"] == "tally.bumped" and event["data"] == {"count": 1}
    assert event["request_id"] == "bump-1" and event["source"] == "probe"
    tap.close()

