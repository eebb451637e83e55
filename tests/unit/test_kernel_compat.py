"""shared/compat.py: each patch is applied, and its guard refuses a library that moved on."""

import socket

import amqp
import gunicorn.http.wsgi
import pytest
from gunicorn import util
from nameko import rpc as nameko_rpc
from nameko.standalone.rpc import ClusterRpcProxy

from shared import compat
from shared.compat import IncompatibleLibrary


def test_the_guard_names_the_library_its_version_and_the_attribute():
    with pytest.raises(IncompatibleLibrary) as caught:
        compat.require("nameko", nameko_rpc, "RpcConsumer.no_such_method")
    error = caught.value
    assert error.library == "nameko" and error.version == "2.14.1"
    assert error.attribute == "nameko.rpc.RpcConsumer.no_such_method"
    assert "nameko 2.14.1" in str(error) and "is missing" in str(error)


def test_the_guard_refuses_a_changed_signature():
    def handle_result(self, message, result):
        pass

    with pytest.raises(IncompatibleLibrary, match=r"takes \['self', 'message', 'result'\]"):
        compat.require("nameko", type("Fake", (), {"handle_result": handle_result}),
                       "handle_result", ["self", "message", "result", "exc_info"])


# -- nameko's reply path ----------------------------------------------------------------------

def test_the_kernel_rpc_entrypoint_replies_through_its_own_consumer():
    from shared.rpc import Rpc

    compat.check_nameko_reply_path()  # the installed nameko passes
    assert isinstance(Rpc.rpc_consumer, compat.KeptConnectionRpcConsumer)
    assert compat.KeptConnectionRpcConsumer.handle_result \
        is not nameko_rpc.RpcConsumer.handle_result


def test_the_reply_path_guard_fires_when_nameko_moved_the_responder(monkeypatch):
    monkeypatch.delattr(nameko_rpc.Responder, "publisher_cls")
    with pytest.raises(IncompatibleLibrary, match="Responder.publisher_cls is missing"):
        compat.check_nameko_reply_path()


# -- py-amqp's _quick_recv --------------------------------------------------------------------

class _Connection:
    def __init__(self, transport):
        self.transport = transport


def _tcp_transport(sock):
    transport = amqp.transport.TCPTransport("127.0.0.1:5672")
    transport.sock = sock
    transport._quick_recv = sock.recv
    return transport


def test_read_ahead_makes_py_amqp_ask_the_socket_for_more_than_it_needs():
    left, right = socket.socketpair()
    try:
        transport = _tcp_transport(left)
        assert compat.read_ahead(_Connection(transport), size=64) is left
        right.sendall(b"x" * 100)
        assert transport._quick_recv(1) == b"x" * 64  # one call, 64 bytes read ahead
    finally:
        left.close()
        right.close()


def test_read_ahead_leaves_other_transports_alone():
    assert compat.read_ahead(_Connection(object())) is None


def test_read_ahead_guard_fires_when_py_amqp_dropped_quick_recv(monkeypatch):
    left, right = socket.socketpair()
    try:
        transport = _tcp_transport(left)
        del transport._quick_recv
        with pytest.raises(IncompatibleLibrary, match="_quick_recv is missing"):
            compat.read_ahead(_Connection(transport))
    finally:
        left.close()
        right.close()


def test_read_ahead_guard_fires_when_py_amqp_changed_its_read(monkeypatch):
    monkeypatch.setattr(amqp.transport.TCPTransport, "_read", lambda self, n: b"")
    with pytest.raises(IncompatibleLibrary, match="amqp .*TCPTransport._read takes"):
        compat.read_ahead(_Connection(object()))


# -- ClusterRpcProxy's call options -----------------------------------------------------------

def test_call_options_reach_a_standalone_proxy():
    standalone = ClusterRpcProxy({"AMQP_URI": "memory://"}, context_data={}, timeout=1.0)
    compat.set_call_options(standalone, {"request_id": "r-1"}, 2.5)
    assert standalone._worker_ctx.data == {"request_id": "r-1"}
    assert standalone._reply_listener.queue_consumer.timeout == 2.5


def test_call_options_guard_fires_when_the_proxy_lost_its_reply_listener():
    standalone = ClusterRpcProxy({"AMQP_URI": "memory://"}, context_data={}, timeout=1.0)
    del standalone._reply_listener
    with pytest.raises(IncompatibleLibrary, match="_reply_listener.queue_consumer is missing"):
        compat.set_call_options(standalone, {}, 1.0)


# -- gunicorn ---------------------------------------------------------------------------------

def test_the_server_header_is_replaced(monkeypatch):
    monkeypatch.setattr(gunicorn.http.wsgi, "SERVER", gunicorn.http.wsgi.SERVER)
    compat.set_server_name("plinth")
    assert gunicorn.http.wsgi.SERVER == "plinth"


def test_the_server_header_guard_fires_when_gunicorn_dropped_it(monkeypatch):
    monkeypatch.delattr(gunicorn.http.wsgi, "SERVER")
    with pytest.raises(IncompatibleLibrary, match="gunicorn .*SERVER is missing"):
        compat.set_server_name("plinth")


def test_the_error_writer_is_replaced(monkeypatch):
    monkeypatch.setattr(util, "write_error", util.write_error)

    def write_error(sock, status_int, reason, mesg):
        pass

    compat.replace_error_writer(write_error)
    assert util.write_error is write_error


def test_the_error_writer_guard_fires_when_gunicorn_changed_its_signature(monkeypatch):
    monkeypatch.setattr(util, "write_error", lambda sock, status, reason: None)
    with pytest.raises(IncompatibleLibrary, match="write_error takes"):
        compat.replace_error_writer(lambda sock, status_int, reason, mesg: None)


def test_the_task_queue_consumer_guard_passes_on_this_nameko_and_fires_when_it_changed(
        monkeypatch):
    from nameko.messaging import QueueConsumer

    compat.check_nameko_queue_consumer()
    monkeypatch.setattr(QueueConsumer, "get_consumers", lambda self, consumer_cls: [])
    with pytest.raises(IncompatibleLibrary, match="get_consumers"):
        compat.check_nameko_queue_consumer()
