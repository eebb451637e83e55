"""The confirmed publisher sends a batch at once and tells, per message, what the broker did."""

from kombu import Connection, Exchange, Queue

from shared.publishing import ConfirmedPublisher, Outgoing

EXCHANGE = Exchange("batch.test", type="topic", durable=True)


def _drain(amqp_uri, queue):
    bodies = []
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue.name, no_ack=True)) is not None:
            bodies.append(message.body.decode() if isinstance(message.body, bytes)
                          else message.body)
    return bodies


def test_a_batch_mixing_routed_unroutable_and_refused_messages_gets_each_ones_outcome(amqp_uri):
    queue = Queue("batch.bound", exchange=EXCHANGE, routing_key="bound.#", durable=True)
    publisher = ConfirmedPublisher(amqp_uri, timeout=5)
    try:
        publisher.declare(EXCHANGE, queue)
        messages = []
        for index in range(60):
            if index % 3 == 0:  # nothing is bound to it: the broker returns it
                key, headers = f"loose.{index}", {}
            elif index % 3 == 1:
                key, headers = f"bound.{index}", {}
            else:  # a header value AMQP cannot carry: refused before it is sent
                key, headers = f"bound.{index}", {"too_big": 2 ** 80}
            messages.append(Outgoing(str(index), EXCHANGE, key, headers, (EXCHANGE,), {
                "content_type": "text/plain", "content_encoding": "utf-8",
                "message_id": f"m-{index}"}))
        outcomes, trouble = publisher.publish_batch(messages)
        assert trouble is None
        assert [o for o in outcomes[0::3]] == [False] * 20
        assert [o for o in outcomes[1::3]] == [True] * 20
        assert all(isinstance(o, Exception) for o in outcomes[2::3])
        assert _drain(amqp_uri, queue) == [str(i) for i in range(1, 60, 3)]

        # the connection is still good for the next batch, and a lone publish works as before
        again, trouble = publisher.publish_batch(messages[:2])
        assert (again, trouble) == ([False, True], None)
        assert publisher.publish("lone", exchange=EXCHANGE, routing_key="bound.lone") is True
        assert publisher.publish("lost", exchange=EXCHANGE, routing_key="loose.lone") is False
        assert _drain(amqp_uri, queue) == ["1", "lone"]
    finally:
        publisher.close()


def test_a_batch_to_an_exchange_that_does_not_exist_is_broker_trouble_with_nothing_confirmed(
        amqp_uri):
    publisher = ConfirmedPublisher(amqp_uri, timeout=5)
    try:
        missing = Exchange("batch.missing", type="topic", passive=True)
        outcomes, trouble = publisher.publish_batch(
            [Outgoing(str(i), missing, "any", {}, (), {}) for i in range(5)])
        assert trouble is not None
        assert outcomes == [None] * 5
        # a new connection is made for the next publish
        assert publisher.publish("x", exchange="", routing_key="no-such-queue") is False
    finally:
        publisher.close()
