"""Listen to a service's events on the real broker, as any consumer would."""

import time

from kombu import Connection, Queue
from nameko.standalone.events import get_event_exchange


class EventTap:
    """Binds a private queue to ``<service>.events`` and collects the envelopes it receives."""

    def __init__(self, amqp_uri, service, routing_key="#"):
        self.connection = Connection(amqp_uri)
        self.channel = self.connection.channel()
        exchange = get_event_exchange(service, {})
        exchange(self.channel).declare()
        self.queue = Queue(exclusive=True, exchange=exchange, routing_key=routing_key)
        self.queue = self.queue(self.channel)
        self.queue.declare()
        self.received = []

    def _drain(self):
        while True:
            message = self.queue.get(no_ack=True)
            if message is None:
                return
            self.received.append((message.delivery_info["routing_key"], message.payload,
                                  message.headers))

    def wait_for(self, count=1, timeout=5.0, event_type=None):
        """The envelopes received so far once ``count`` (of ``event_type``) have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            matching = [p for rk, p, _ in self.received if event_type in (None, rk)]
            if len(matching) >= count or time.monotonic() > deadline:
                return matching
            time.sleep(0.02)

    def headers_of(self, event_id):
        for _, payload, headers in self.received:
            if payload.get("event_id") == event_id:
                return headers
        return None

    def close(self):
        self.connection.release()
