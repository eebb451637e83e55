"""shared/redelivery.py without a broker: delay buckets, backoff, and what a failure records."""

import pytest
import sqlalchemy as sa

from shared.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests, Unavailable
from shared.redelivery import RetryPolicy, Topology, describe, is_client_error


@pytest.mark.parametrize("seconds", [0.1, 0.25, 0.3, 1, 1.7, 5, 42, 300, 3600, 86400])
def test_a_delay_is_held_within_five_percent_by_its_bucket(seconds):
    ms = Topology.bucket_ms(seconds)
    assert abs(ms - seconds * 1000) <= 0.045 * seconds * 1000 + 1


def test_jittered_retries_share_a_few_buckets():
    backoff = RetryPolicy(base=1.0, cap=300.0)
    buckets = {Topology.bucket_ms(backoff.delay(n)) for n in range(1, 6) for _ in range(500)}
    assert len(buckets) <= 5 * 7


def test_delay_queues_return_expired_messages_through_the_services_queues_exchange():
    # not the default exchange: a least-privilege broker user may not publish there
    queue = Topology("billing").delay_queue(Topology.bucket_ms(2))
    assert queue.name == "billing.retry.2000"
    assert queue.queue_arguments["x-message-ttl"] == 2000
    assert queue.queue_arguments["x-dead-letter-exchange"] == "billing.queues"
    assert queue.queue_arguments["x-expires"] > 2000
    assert queue.exchange.name == "billing.retry" and queue.exchange.type == "headers"
    dead = Topology("billing").dead_letter_queue
    assert (dead.exchange.name, dead.routing_key) == ("billing.queues", "billing.dead-letters")


def test_backoff_grows_by_its_factor_within_its_jitter_up_to_its_cap():
    backoff = RetryPolicy(base=0.5, factor=2.0, cap=3.0, jitter=0.25)
    for failures, plain in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(plain * 0.75 <= d <= plain * 1.25 for d in delays)
        assert max(delays) - min(delays) > plain * 0.2  # jittered, not fixed


def test_backoff_reads_its_settings_from_config_with_explicit_overrides_winning():
    config = {"EVENT_MAX_ATTEMPTS": "7", "EVENT_RETRY_DELAY": "0.2", "EVENT_RETRY_MAX_DELAY": 9}
    assert RetryPolicy.from_config(config, "EVENT") == RetryPolicy(max_attempts=7, base=0.2,
                                                                   cap=9.0)
    assert RetryPolicy.from_config(config, "EVENT", max_attempts=2).max_attempts == 2
    assert RetryPolicy.from_config({}, "EVENT") == RetryPolicy()


@pytest.mark.parametrize("error", [Invalid("bad"), NotFound("gone"), Conflict("taken"),
                                   Forbidden("no")])
def test_client_errors_are_not_worth_a_retry(error):
    assert is_client_error(error)


@pytest.mark.parametrize("error", [TooManyRequests("slow down"), Unavailable("away"),
                                   RuntimeError("boom"), OSError("reset")])
def test_other_failures_are_retried(error):
    assert not is_client_error(error)


def test_a_database_error_is_recorded_without_its_statement_or_parameters():
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as info:
        conn.execute(sa.text("SELECT secret FROM nowhere WHERE hash = :h"),
                     {"h": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"})
    kind, text = describe(info.value)
    assert kind == "OperationalError" and text == "no such table: nowhere"


def test_a_typed_error_is_recorded_by_its_message_and_long_text_is_cut():
    assert describe(Invalid("the event names no such thing", {"thing": ["x"]})) == \
        ("Invalid", "the event names no such thing")
    kind, text = describe(RuntimeError("x" * 1000 + "\nsecond line"))
    assert kind == "RuntimeError" and text == "x" * 200


def test_a_queue_bound_by_name_keeps_its_own_binding():
    from kombu import Exchange, Queue

    from shared.redelivery import bound_by_name

    queue = bound_by_name(Queue("evt-a-b--billing.m", exchange=Exchange("a.events", "topic"),
                                routing_key="b"), "billing")
    assert {(b.exchange.name, b.routing_key) for b in queue.bindings} == {
        ("a.events", "b"), ("billing.queues", "evt-a-b--billing.m")}
