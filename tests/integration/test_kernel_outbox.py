"""The transactional outbox: events survive a broker outage; consumers are idempotent."""

import time
import uuid

import eventlet
import pytest
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



# -- rows that cannot be published (yet) -----------------------------------------------------
def _relay(engine, amqp_uri, **policy):
    settings = {"base": 0.2, "cap": 0.5, **policy}
    relay = outbox.Relay(engine, "identity", amqp_uri, interval=0.05,
                         policy=outbox.RelayPolicy(**settings))
    return relay, eventlet.spawn(relay.run)


def _emit(engine, event_type, data=None, context=None):
    uow = UnitOfWork(sessionmaker(bind=engine), "identity", context or {})
    env = uow.emit(event_type, "s-1", data or {})
    uow.commit()
    uow.close()
    return env


def _row(engine, event_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(OUTBOX).where(OUTBOX.c.event_id == event_id)).one()


def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        eventlet.sleep(0.05)
    return value


def test_an_event_published_before_any_consumer_queue_exists_is_delivered_once_one_does(
        fresh_pg_uri, amqp_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    relay, runner = _relay(engine, amqp_uri)
    tap = None
    try:
        env = _emit(engine, "thing.unheard")
        row = _until(lambda: (r := _row(engine, env["event_id"])).attempts >= 2 and r)
        assert row.sent_at is None and row.parked_at is None
        assert row.last_error == "unroutable: no queue is bound to thing.unheard"

        tap = EventTap(amqp_uri, "identity", routing_key="thing.unheard")
        assert [e["event_id"] for e in tap.wait_for(1, timeout=5)] == [env["event_id"]]
        _until(lambda: _row(engine, env["event_id"]).sent_at is not None)
        eventlet.sleep(0.5)
        assert len(tap.wait_for(2, timeout=0.2)) == 1, "published more than once"
    finally:
        relay.stop()
        runner.wait()
        if tap is not None:
            tap.close()
        engine.dispose()


POISONS = {
    # more than the relay lets through (the broker's own limit would refuse it as well)
    "oversized": ({"blob": "x" * 5000}, {}),
    # a request id the broker's header encoding cannot carry
    "unencodable": ({}, {"request_id": 2 ** 80}),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_row_the_broker_cannot_take_is_parked_after_its_attempts_and_later_events_flow(
        poison, fresh_pg_uri, amqp_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    tap = EventTap(amqp_uri, "identity")
    relay, runner = _relay(engine, amqp_uri, max_attempts=3, base=0.1, max_event_bytes=4096,
                           parked_retry=3600)
    try:
        data, context = POISONS[poison]
        bad = _emit(engine, "thing.poisoned", data, context)
        good = [_emit(engine, "thing.fine") for _ in range(3)]
        # the rows behind the poisoned one flow at once, not after its attempts
        received = tap.wait_for(3, timeout=3, event_type="thing.fine")
        assert [e["event_id"] for e in received] == [e["event_id"] for e in good]

        row = _until(lambda: (r := _row(engine, bad["event_id"])).parked_at is not None and r)
        assert row.attempts == 3 and row.sent_at is None and row.last_error
        later = _emit(engine, "thing.fine")
        assert later["event_id"] in [e["event_id"] for e in tap.wait_for(4, timeout=3)]
        relay.count()
        assert relay.backlog() == {"pending": 1, "parked": 1}
        assert _row(engine, bad["event_id"]).attempts == 3, "a parked row was retried at once"
        assert "thing.poisoned" not in [rk for rk, _, _ in tap.received]
    finally:
        relay.stop()
        runner.wait()
        tap.close()
        engine.dispose()


def _locked(engine, row_id):
    """True while another transaction holds the row's lock."""
    with engine.connect() as conn:
        try:
            conn.execute(sa.select(OUTBOX.c.id).where(OUTBOX.c.id == row_id)
                         .with_for_update(nowait=True)).all()
            return False
        except sa.exc.OperationalError:
            return True
        finally:
            conn.rollback()


def test_a_broker_that_stops_answering_mid_publish_does_not_hold_the_row_lock(
        fresh_pg_uri, amqp_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    tap = EventTap(amqp_uri, "identity")
    vhost = amqp_uri.rsplit("/", 1)[1]
    with FaultProxy(("127.0.0.1", 5672)) as proxy:
        relay, runner = _relay(engine, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                               confirm_timeout=1.0)
        try:
            first = _emit(engine, "thing.before")
            assert tap.wait_for(1, timeout=5)  # the relay's connection is up
            proxy.stall()
            stuck = _emit(engine, "thing.during")
            row_id = _row(engine, stuck["event_id"]).id
            _until(lambda: _locked(engine, row_id), timeout=3)  # publishing it now
            started = time.monotonic()
            _until(lambda: not _locked(engine, row_id), timeout=5)
            assert time.monotonic() - started < 3.0
            row = _row(engine, stuck["event_id"])
            # not the row's fault: no attempt counted against it
            assert row.sent_at is None and row.attempts == 0 and row.parked_at is None

            proxy.cut()  # the hung connection dies (what it held never reaches the broker)
            proxy.restore()
            received = tap.wait_for(2, timeout=10)
            assert [e["event_id"] for e in received] == [first["event_id"], stuck["event_id"]]
            _until(lambda: _row(engine, stuck["event_id"]).sent_at is not None)
        finally:
            relay.stop()
            runner.wait()
            tap.close()
            engine.dispose()
