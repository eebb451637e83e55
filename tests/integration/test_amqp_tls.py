"""AMQP over TLS by configuration (``AMQP_SSL``): a service, an RPC round trip from the
gateway's client and an event, against a RabbitMQ node of the test's own whose only listener
is TLS, with a CA made at test time (tests/support/tls.py)."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from nameko.containers import ServiceContainer

from shared.events import event_handler
from shared.publishing import ConfirmedPublisher
from shared.rpc import rpc
from shared.rpc_client import RpcClient
from tests.support import tls

pytestmark = pytest.mark.skipif(not tls.available(), reason="needs rabbitmq-server")

ROOT = Path(__file__).resolve().parents[2]
RECEIVED = []


class TlsProbe:
    name = "tlsprobe"

    @rpc
    def ping(self, text):
        return {"pong": text}

    @event_handler("tlsprobe", "pinged")
    def seen(self, payload):
        RECEIVED.append(payload)


@pytest.fixture(scope="module")
def node():
    directory = ROOT / "var" / f"tls-{uuid.uuid4().hex[:8]}"
    ca = tls.make_ca(directory / "certs")
    rabbit = tls.TlsRabbit(directory, ca).start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


def _options(ca_path):
    # what AMQP_SSL holds (shared.config.amqp_ssl): verify the broker against the test CA
    return {"ca_certs": str(ca_path), "cert_reqs": 2, "server_hostname": "localhost"}


# the gateway's client runs in plain threads (gunicorn's gthread workers, no eventlet): so here,
# in a process of its own rather than this eventlet-patched one
GATEWAY_CALL = """
import json, sys
from shared.rpc_client import RpcClient
client = RpcClient(sys.argv[1], timeout=10, ssl=json.loads(sys.argv[2]))
try:
    if not client.wait_connected(10):
        print(json.dumps({"error": repr(client.last_error)}))
    else:
        print(json.dumps(client.call("tlsprobe", "ping", kwargs={"text": "over tls"})))
finally:
    client.close()
"""


def _gateway_call(uri, options):
    result = subprocess.run([sys.executable, "-c", GATEWAY_CALL, uri, json.dumps(options)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_service_answers_rpc_and_takes_events_over_tls_only(node):
    options = _options(node.ca.cert)
    container = ServiceContainer(TlsProbe, {"AMQP_URI": node.amqp_uri, "AMQP_SSL": options})
    container.start()
    publisher = ConfirmedPublisher(node.amqp_uri, ssl=options)
    try:
        assert _gateway_call(node.amqp_uri, options) == {"pong": "over tls"}
        # and from a service's green threads (sagas, authz's bootstrap use the same client)
        client = RpcClient(node.amqp_uri, timeout=10, ssl=options)
        try:
            assert client.wait_connected(10), client.last_error
            assert client.call("tlsprobe", "ping", kwargs={"text": "green"}) == {"pong": "green"}
        finally:
            client.close()
        event = {"event_id": str(uuid.uuid4()), "event_type": "pinged", "data": {}}
        assert publisher.publish(json.dumps(event), exchange="tlsprobe.events",
                                 routing_key="pinged", content_type="application/json",
                                 content_encoding="utf-8", message_id=event["event_id"])
        _wait(lambda: any(p.get("event_id") == event["event_id"] for p in RECEIVED))
        connections = node.connections()
        assert connections and all(encrypted for _, encrypted in connections), connections
    finally:
        publisher.close()
        container.stop()


def test_a_broker_whose_certificate_the_ca_did_not_sign_is_refused(node, tmp_path):
    stranger = tls.make_ca(tmp_path / "other", name="another CA")
    client = RpcClient(node.amqp_uri, timeout=2, ssl=_options(stranger.cert))
    try:
        assert not client.wait_connected(3)
        assert "certificate" in str(client.last_error).lower() or \
            "ssl" in type(client.last_error).__name__.lower(), repr(client.last_error)
    finally:
        client.close()
