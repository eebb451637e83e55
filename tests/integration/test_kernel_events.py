"""The platform's event handler (shared/events.py): a failure is retried later through the
broker with growing delays, and given up into the service's dead-letter queue with its error
after max attempts -- at once for a client error. Real RabbitMQ and PostgreSQL."""

import json
import time

import requests
from kombu import Connection

from shared import outbox
from shared import service as kernel
from shared.db import Database
from shared.errors import Invalid
from shared.events import event_handler
from shared.rpc import rpc
from tests.support.audit_helpers import EventPublisher, envelope
from tests.support.probe.models import Base, Tally
from tests.support.probe.service import MIGRATIONS

DEAD_LETTERS = "probe.dead-letters"
ATTEMPTS = []  # (handler, event_id, monotonic time) of every call the handlers below receive


class FlakyProbe(kernel.ServiceBase):
    """The probe service's schema, with handlers that fail in the ways under test."""

    name = "probe"
    db = Database(Base.metadata, migrations=MIGRATIONS)

    @event_handler("identity", "user.created")
    def count(self, payload):
        ATTEMPTS.append(("count", payload["event_id"], time.monotonic()))
        if not self.db.claim(payload):
            return
        tally = self.db.session.get(Tally, payload["subject"]) or Tally(
            subject=payload["subject"], count=0)
        tally.count += 1
        self.db.session.add(tally)
        self.db.commit()

    @event_handler("identity", "thing.broken")
    def always_fails(self, payload):
        ATTEMPTS.append(("always_fails", payload["event_id"], time.monotonic()))
        raise RuntimeError("boom: this handler never manages")

    @event_handler("identity", "thing.refused")
    def refuses(self, payload):
        ATTEMPTS.append(("refuses", payload["event_id"], time.monotonic()))
        raise Invalid("the event names no such thing", {"thing": ["unknown"]})

    @rpc
    def tally(self, subject):
        row = self.db.session.get(Tally, subject)
        return row.count if row else 0


def attempts(handler, event_id):
    return [t for h, e, t in ATTEMPTS if (h, e) == (handler, event_id)]


def wait_until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def dead_letters(amqp_uri):
    """Everything in the dead-letter queue now (taken off it): (body, headers) pairs."""
    found = []
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(DEAD_LETTERS, no_ack=True)) is not None:
            found.append((json.loads(message.body), message.headers))
    return found


def metric(container, name, **labels):
    address = container.config["WEB_SERVER_ADDRESS"]
    text = requests.get(f"http://{address}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def publish(amqp_uri, event_type, **fields):
    publisher = EventPublisher(amqp_uri)
    try:
        event = envelope(event_type, **fields)
        publisher.publish(event, headers=outbox.headers_for(event))
        return event
    finally:
        publisher.close()


def test_an_event_whose_database_is_down_is_retried_later_and_applied_once_it_returns(
        start_service, pg_uri, fault_proxy, amqp_uri, rpc):
    proxy = fault_proxy(5432)
    database = pg_uri.rsplit("/", 1)[1]
    container = start_service(FlakyProbe,
                              DB_URI=f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}",
                              EVENT_RETRY_DELAY=0.3, EVENT_MAX_ATTEMPTS=20)
    proxy.cut()
    event = publish(amqp_uri, "user.created")
    wait_until(lambda: len(attempts("count", event["event_id"])) >= 4, what="four attempts")
    proxy.restore()
    tally = lambda: rpc.call("probe", "tally", [event["subject"]])  # noqa: E731
    wait_until(lambda: tally() == 1, timeout=15, what="the event's effect")

    times = attempts("count", event["event_id"])
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # 0.3 s, 0.6 s, 1.2 s, each within ±25% jitter: every wait is longer than the one before
    assert all(b > a for a, b in zip(gaps[:3], gaps[1:4], strict=False)), gaps
    assert 0.2 < gaps[0] < 0.6, gaps
    time.sleep(1.0)  # a stray retry or redelivery would show here
    assert tally() == 1
    assert len(attempts("count", event["event_id"])) == len(times)
    assert metric(container, "plinth_event_retries_total", handler="probe.count") \
        == len(times) - 1
    assert dead_letters(amqp_uri) == []


def test_an_event_that_always_fails_is_dead_lettered_after_max_attempts_with_its_error(
        start_service, amqp_uri):
    container = start_service(FlakyProbe, EVENT_RETRY_DELAY=0.1, EVENT_MAX_ATTEMPTS=3)
    event = publish(amqp_uri, "thing.broken")
    found = []
    wait_until(lambda: found.extend(dead_letters(amqp_uri)) or found, what="a dead letter")
    [(body, headers)] = found
    assert body == event
    assert headers["plinth-attempts"] == 3 and headers["plinth-dead-reason"] == "exhausted"
    assert headers["plinth-error-type"] == "RuntimeError"
    assert headers["plinth-error"] == "boom: this handler never manages"
    assert headers["plinth-queue"] == "evt-identity-thing.broken--probe.always_fails"
    assert headers["plinth-origin-exchange"] == "identity.events"
    assert headers["plinth-origin-routing-key"] == "thing.broken"
    assert headers["nameko.request_id"] == event["request_id"]  # its own headers are kept
    time.sleep(0.5)
    assert len(attempts("always_fails", event["event_id"])) == 3
    assert metric(container, "plinth_event_dead_letters_total",
                  handler="probe.always_fails", reason="exhausted") == 1


def test_a_client_error_is_dead_lettered_at_once_without_retries(start_service, amqp_uri):
    container = start_service(FlakyProbe, EVENT_RETRY_DELAY=0.1, EVENT_MAX_ATTEMPTS=5)
    event = publish(amqp_uri, "thing.refused")
    found = []
    wait_until(lambda: found.extend(dead_letters(amqp_uri)) or found, what="a dead letter")
    [(body, headers)] = found
    assert body == event
    assert headers["plinth-attempts"] == 1 and headers["plinth-dead-reason"] == "client_error"
    assert (headers["plinth-error-type"], headers["plinth-error"]) == \
        ("Invalid", "the event names no such thing")
    time.sleep(0.5)
    assert len(attempts("refuses", event["event_id"])) == 1
    assert metric(container, "plinth_event_retries_total", handler="probe.refuses") is None


def test_the_dead_letter_queue_exists_from_the_first_start(start_service, amqp_uri):
    start_service(FlakyProbe)
    with Connection(amqp_uri) as conn:
        _, depth, _ = conn.default_channel.queue_declare(DEAD_LETTERS, passive=True)
    assert depth == 0
