"""The floor for an RPC round trip: a minimal AMQP request/reply echo on the same broker.

Run as a process: ``python -m tests.bench.echo_server AMQP_URI QUEUE``. It consumes QUEUE
and publishes each body back to the message's reply_to through the default exchange.
"""

import sys

import amqp

from shared.rpc_client import amqp_connection_params


def main(amqp_uri, queue):
    conn = amqp.Connection(**amqp_connection_params(amqp_uri, 5))
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(queue, auto_delete=True)

    def echo(message):
        reply = amqp.Message(message.body, correlation_id=message.properties["correlation_id"])
        channel.basic_publish(reply, exchange="", routing_key=message.properties["reply_to"])

    channel.basic_consume(queue, callback=echo, no_ack=True)
    print("ready", flush=True)
    while True:
        conn.drain_events()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
