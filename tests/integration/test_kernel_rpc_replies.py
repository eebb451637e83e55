"""RPC replies go out over one kept connection per container (shared.replies.ReplySender)."""

import threading
import time

import pytest
from nameko.exceptions import RemoteError

from shared.rpc import rpc


class Replier:
    name = "replier"

    @rpc
    def echo(self, value):
        return value

    @rpc
    def unencodable(self):
        return object()


def _reply_connections(rabbit_manager, vhost):
    return [c for c in rabbit_manager.get_connections()
            if c.get("vhost") == vhost
            and c.get("client_properties", {}).get("connection_name") == "replier rpc replies"]


def _wait_for(predicate, what, timeout=20):
    # the management API lists connections a few seconds late
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_concurrent_replies_each_reach_their_own_caller(start_service, rpc):
    start_service(Replier, max_workers=20)
    results, errors = {}, []

    def caller(n):
        try:
            for i in range(20):
                value = {"caller": n, "i": i, "pad": "x" * (n * 500)}
                results[(n, i)] = rpc.call("replier", "echo", [value]) == value
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 16 * 20 and all(results.values())


def test_a_result_that_cannot_be_encoded_is_an_error_and_the_service_lives_on(start_service, rpc):
    start_service(Replier)
    with pytest.raises(RemoteError) as caught:
        rpc.call("replier", "unencodable")
    assert caught.value.exc_type == "UnserializableValueError"
    assert rpc.call("replier", "echo", ["still here"]) == "still here"


def test_a_reply_connection_closed_by_the_broker_is_replaced(start_service, rpc, rabbit_manager,
                                                             rabbit_config):
    start_service(Replier)
    assert rpc.call("replier", "echo", [1]) == 1
    first = _wait_for(lambda: _reply_connections(rabbit_manager, rabbit_config["vhost"]),
                      "the reply connection")
    assert len(first) == 1
    rabbit_manager.delete_connection(first[0]["name"])
    # the broker sends connection.close at once (the connection stays listed until it times
    # out waiting for a close-ok that this write-only connection never reads to send)
    time.sleep(0.5)
    # the next replies still arrive: the closed connection is noticed before it is used
    assert [rpc.call("replier", "echo", [i], timeout=5) for i in range(5)] == list(range(5))
    again = _wait_for(lambda: [c for c in _reply_connections(rabbit_manager,
                                                             rabbit_config["vhost"])
                               if c["name"] != first[0]["name"]], "a new reply connection")
    assert len(again) == 1
