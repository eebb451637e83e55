"""An RPC call in flight when its client's node dies fails at once with Unavailable (the
gateway's 503), not at its timeout; the client reconnects to another node and the next call
works. The responder is a plain kombu consumer of a quorum queue, answering like nameko."""

import json
import threading
import time

import kombu
import pytest

from shared.errors import Unavailable
from shared.rpc_client import RpcClient

SLOW = 3.0  # the responder takes this long: the node dies while the call waits


class SlowResponder(threading.Thread):
    """Answers ``echo.*`` calls after SLOW seconds, through whichever node it can reach."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.uri, self.stopping = uri, threading.Event()
        self.exchange = kombu.Exchange("nameko-rpc", "topic", durable=True)
        self.queue = kombu.Queue("rpc-echo", exchange=self.exchange, routing_key="echo.*",
                                 durable=True, auto_delete=False,
                                 queue_arguments={"x-queue-type": "quorum"})

    def run(self):
        while not self.stopping.is_set():
            try:
                with kombu.Connection(self.uri, connect_timeout=3) as conn:
                    conn.ensure_connection(max_retries=3)
                    with conn.Consumer(self.queue, callbacks=[self._answer(conn)],
                                       accept=["json"]):
                        while not self.stopping.is_set():
                            try:
                                conn.drain_events(timeout=0.5)
                            except TimeoutError:
                                pass
            except Exception:  # noqa: BLE001 - its node went away: reconnect to another
                time.sleep(0.5)

    def _answer(self, conn):
        def answer(body, message):
            time.sleep(SLOW)
            conn.Producer().publish(
                json.dumps({"result": body["args"], "error": None}), exchange=self.exchange,
                routing_key=message.properties["reply_to"], content_type="application/json",
                correlation_id=message.properties["correlation_id"])
            message.ack()
        return answer


@pytest.fixture
def responder(cluster, cluster_vhost):
    # the responder prefers node 2, the client node 0: the test stops node 0
    thread = SlowResponder(cluster.amqp_uri(cluster_vhost, order=[2, 1, 0]))
    thread.start()
    yield thread
    thread.stopping.set()
    thread.join(10)


def test_a_call_in_flight_on_a_lost_node_fails_at_once_and_the_next_call_works(
        cluster, cluster_vhost, responder):
    client = RpcClient(cluster.amqp_uri(cluster_vhost, order=[0, 1, 2]), timeout=30).start()
    try:
        assert client.wait_connected(20), client.last_error
        deadline = time.monotonic() + 30
        while True:  # until the responder consumes (its queue declared, a leader elected)
            try:
                assert client.call("echo", "ping", args=[0], timeout=SLOW + 5) == [0]
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the responder never answered"
        outcome = {}

        def in_flight():
            started = time.monotonic()
            try:
                outcome["result"] = client.call("echo", "ping", args=[1])
            except Unavailable as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

        caller = threading.Thread(target=in_flight)
        caller.start()
        time.sleep(1.0)  # the request is with the responder
        stopped = time.monotonic()
        cluster.kill_node(0)  # the client's node, with its reply queue
        caller.join(30)
        assert isinstance(outcome.get("error"), Unavailable), outcome
        assert outcome["error"].status == 503
        assert time.monotonic() - stopped < SLOW  # at once, not at the call's 30 s timeout

        deadline = time.monotonic() + 20
        while True:  # reconnected through node 1 or 2
            try:
                assert client.call("echo", "ping", args=[2], timeout=SLOW + 5) == [2]
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the next call never worked"
                time.sleep(0.5)
    finally:
        client.close()
