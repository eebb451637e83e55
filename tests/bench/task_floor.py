"""The floor for task throughput: a minimal AMQP consumer that acknowledges every message.

Run as a process: ``python -m tests.bench.task_floor AMQP_URI QUEUE COUNT PREFETCH``. It
prints ``ready``, consumes QUEUE (prefetch PREFETCH, as a service's worker pool), acks each
message, and prints ``done`` once it has acknowledged COUNT messages.
"""

import sys

import amqp

from shared.rpc_client import amqp_connection_params


def main(amqp_uri, queue, count, prefetch):
    conn = amqp.Connection(**amqp_connection_params(amqp_uri, 5))
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True, auto_delete=False)
    channel.basic_qos(0, prefetch, False)
    acked = 0

    def ack(message):
        nonlocal acked
        channel.basic_ack(message.delivery_tag)
        acked += 1

    channel.basic_consume(queue, callback=ack)
    print("ready", flush=True)
    while acked < count:
        conn.drain_events()
    print("done", flush=True)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
