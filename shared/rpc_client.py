"""A thread-safe RPC client speaking nameko's wire protocol over one kept AMQP connection.

nameko's standalone ``ClusterRpcProxy`` is one connection and one reply queue per proxy and
is not safe to share between threads. This client is shared: any number of threads call
through one connection; a reader thread routes replies to callers by correlation id. It needs
no eventlet, so it works in gunicorn's threads, and it reconnects by itself after a broker
outage. Calls to a service with no running instance fail at once (mandatory publish), not at
their timeout.
"""

import itertools
import json
import logging
import os
import select
import threading
import time
import uuid
from urllib.parse import unquote, urlparse

import amqp
from nameko.exceptions import deserialize

import shared.errors  # noqa: F401 - registers the typed errors for deserialisation
from shared.backoff import NO_JITTER, Backoff
from shared.config import amqp_ssl
from shared.errors import Unavailable

__all__ = ["RpcClient", "RpcTimeout", "ServiceNotRunning", "BrokerUnavailable"]

log = logging.getLogger(__name__)
RPC_EXCHANGE = "nameko-rpc"
# once a connection was lost, how long a call waits for the reader to reconnect before it fails
RECONNECT_GRACE = 0.5
SOCKET_TIMEOUT = 5.0


class RpcTimeout(Unavailable):
    """No reply within the call's timeout (the gateway answers 504)."""

    kind, status, title = "timeout", 504, "Gateway timeout"


class ServiceNotRunning(Unavailable):
    """No instance of the service is consuming its RPC queue."""


class BrokerUnavailable(Unavailable):
    """The broker cannot be reached right now."""


class _Pending:
    __slots__ = ("event", "body", "error")

    def __init__(self):
        self.event = threading.Event()
        self.body = None
        self.error = None


def amqp_connection_params(amqp_uri, connect_timeout, ssl=None):
    """py-amqp ``Connection`` arguments for ``amqp_uri``: no heartbeats, no blocked notices;
    over TLS with ``ssl`` (default: ``AMQP_SSL`` from the environment, shared.config)."""
    url = urlparse(amqp_uri)
    ssl = ssl if ssl is not None else amqp_ssl()
    vhost = unquote(url.path[1:]) if url.path and url.path != "/" else "/"
    return dict(
        host=f"{url.hostname or 'localhost'}:{url.port or 5672}",
        userid=unquote(url.username or "guest"),
        password=unquote(url.password or "guest"),
        virtual_host=vhost or "/",
        connect_timeout=connect_timeout,
        ssl=ssl or False,
        heartbeat=0,
        # Without connection.blocked, py-amqp's basic_publish does not read from the socket
        # (it drains events to look for blocked notices), so only the reader thread reads.
        client_properties={"capabilities": {
            "publisher_confirms": True, "exchange_exchange_bindings": True,
            "basic.nack": True, "consumer_cancel_notify": True,
            "authentication_failure_close": True, "per_consumer_qos": True,
        }},
    )


def _connection(params):
    """A py-amqp connection that does not ask for connection.blocked notices.

    py-amqp adds every capability the broker offers to those the client announced; with
    connection.blocked, each ``basic_publish`` first reads the socket, while the reader thread
    may be waiting on it (under eventlet over TLS that is a second reader of the socket, which
    eventlet refuses)."""
    conn = amqp.Connection(**params)
    conn.negotiate_capabilities = {name: wanted for name, wanted
                                   in conn.negotiate_capabilities.items()
                                   if name != "connection.blocked"}
    return conn


class RpcClient:
    def __init__(self, amqp_uri, timeout=10.0, connect_timeout=3.0, name=None, ssl=None):
        self.amqp_uri = amqp_uri
        self.ssl = ssl
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.name = name or f"rpc.reply-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pending = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._conn = None
        self._pub = None
        self._pub_conn = None
        self._generation = 0
        self._closed = False
        self._ready = threading.Event()
        self._counter = itertools.count()
        self._reader = None
        self.last_error = None

    # -- connection ---------------------------------------------------------------------------
    def _connect(self):
        params = amqp_connection_params(self.amqp_uri, self.connect_timeout, self.ssl)
        # Two connections so that each socket is used by one thread at a time: py-amqp is not
        # thread-safe. The reader thread alone reads ``sub``; callers publish on ``pub`` under
        # the write lock and read its returns (unroutable calls) there too.
        sub = _connection(params)
        sub.connect()
        channel = sub.channel()
        try:
            # passively: a least-privilege broker user may not declare it (deploy/broker_users)
            channel.exchange_declare(RPC_EXCHANGE, "topic", passive=True)
        except amqp.exceptions.NotFound:  # not there yet: declared by those allowed to
            channel = sub.channel()
            channel.exchange_declare(RPC_EXCHANGE, "topic", durable=True, auto_delete=False)
        channel.queue_declare(self.name, exclusive=True, auto_delete=True)
        channel.queue_bind(self.name, RPC_EXCHANGE, routing_key=self.name)
        channel.basic_consume(self.name, callback=self._on_reply, no_ack=True)
        # no publisher confirms (a broker round trip per call, serialised by the write lock):
        # an unroutable call (no instance running) still comes back as a basic.return, read
        # by the reader thread, and fails at once; any other loss ends in the call's timeout
        pub = _connection(params)
        try:
            pub.connect()
            pub_channel = pub.channel()
            pub_channel.events["basic_return"].add(self._on_return)
        except Exception:
            sub.collect()
            raise
        # One fixed socket timeout each, for good: py-amqp changes a socket's timeout around a
        # read given one, which would race with sends from caller threads. The reader only
        # reads what select() says has arrived.
        for conn in (sub, pub):
            conn.transport.sock.settimeout(SOCKET_TIMEOUT)
        with self._write_lock:
            self._conn, self._pub_conn, self._pub = sub, pub, pub_channel
        self._generation += 1
        self.last_error = None
        self._ready.set()

    def _disconnect(self, error):
        self._ready.clear()
        self.last_error = error
        with self._write_lock:
            conns = (self._conn, self._pub_conn)
            self._conn = self._pub_conn = self._pub = None
        for conn in conns:
            if conn is not None:
                try:
                    conn.collect()
                except Exception:  # noqa: BLE001 - the connection is already broken
                    pass
        # a reply can no longer reach callers waiting on the old reply queue
        with self._pending_lock:
            waiting = list(self._pending.values())
            self._pending.clear()
        for pending in waiting:
            pending.error = BrokerUnavailable("lost the connection to the message broker")
            pending.event.set()

    def start(self):
        """Connect (best effort) and start the reader thread; idempotent."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._run, name="rpc-client-reader",
                                            daemon=True)
            self._reader.start()
        return self

    def _run(self):
        backoff = Backoff(initial=0.2, maximum=2.0, jitter=NO_JITTER)
        while not self._closed:
            if self._conn is None:
                try:
                    self._connect()
                    backoff.reset()
                except Exception as exc:  # noqa: BLE001 - retried with backoff
                    self.last_error = exc
                    time.sleep(backoff.next())
                    continue
            try:
                self._read_some()
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect
                if not self._closed:
                    log.warning("rpc client lost the broker: %s: %s", type(exc).__name__, exc)
                self._disconnect(exc)
        # closed: the reader closes its own sockets, so no other thread touches them meanwhile
        self._disconnect(None)

    def _read_some(self):
        sub, pub = self._conn, self._pub_conn
        sockets = {sub.transport.sock: sub, pub.transport.sock: pub}
        readable, _, _ = select.select(list(sockets), [], [], 0.5)
        for sock in readable:
            conn = sockets[sock]
            if conn is pub:
                # callers write on this connection; what it reads (returns, a channel close)
                # may make py-amqp answer, so it reads under the write lock
                with self._write_lock:
                    conn.drain_events(timeout=None)
            else:
                conn.drain_events(timeout=None)

    @property
    def connected(self):
        return self._ready.is_set()

    def wait_connected(self, timeout=5.0):
        self.start()
        return self._ready.wait(timeout)

    def close(self):
        self._closed = True
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        else:
            self._disconnect(None)

    # -- replies ------------------------------------------------------------------------------
    def _on_reply(self, message):
        with self._pending_lock:
            pending = self._pending.pop(message.properties.get("correlation_id"), None)
        if pending is not None:
            pending.body = message.body
            pending.event.set()

    def _on_return(self, exc, exchange, routing_key, message):
        with self._pending_lock:
            pending = self._pending.pop(message.properties.get("correlation_id"), None)
        if pending is not None:
            service = routing_key.split(".", 1)[0]
            pending.error = ServiceNotRunning(f"no instance of {service} is running",
                                              {"service": service})
            pending.event.set()

    # -- calls --------------------------------------------------------------------------------
    def call(self, service, method, args=(), kwargs=None, timeout=None, context=None):
        """Call ``service.method`` and return its result or raise its (typed) error."""
        timeout = self.timeout if timeout is None else timeout
        if not self._ready.is_set():
            self.start()
            # the first connection is worth waiting for; after a lost one the reader is
            # reconnecting in the background, and an outage must not hold every caller for
            # connect_timeout: a short grace for a quick reconnect, then fail
            wait = self.connect_timeout if self._generation == 0 \
                else min(self.connect_timeout, RECONNECT_GRACE)
            if not self._ready.wait(min(timeout, wait)):
                raise BrokerUnavailable("the message broker is unreachable")
        correlation_id = uuid.uuid4().hex
        pending = _Pending()
        headers = {f"nameko.{k}": v for k, v in (context or {}).items() if v is not None}
        body = json.dumps({"args": list(args), "kwargs": kwargs or {}})
        message = amqp.Message(body, content_type="application/json",
                               content_encoding="utf-8", correlation_id=correlation_id,
                               reply_to=self.name, application_headers=headers,
                               delivery_mode=1,
                               # a call nobody took before its timeout is dropped, not run
                               # later when an instance comes back
                               expiration=str(max(1, int(timeout * 1000))))
        with self._pending_lock:
            self._pending[correlation_id] = pending
        try:
            with self._write_lock:
                if self._pub is None:
                    raise BrokerUnavailable("the message broker is unreachable")
                self._pub.basic_publish(message, exchange=RPC_EXCHANGE,
                                        routing_key=f"{service}.{method}", mandatory=True)
        except BrokerUnavailable:
            self._forget(correlation_id)
            raise
        except Exception as exc:  # noqa: BLE001 - the socket is broken; the reader reconnects
            self._forget(correlation_id)
            raise BrokerUnavailable(f"could not publish to the broker ({type(exc).__name__})") \
                from None
        if not pending.event.wait(timeout):
            self._forget(correlation_id)
            raise RpcTimeout(f"{service}.{method} did not answer within {timeout:g}s",
                             {"service": service, "timeout": timeout})
        if pending.error is not None:
            raise pending.error
        reply = json.loads(pending.body)
        if reply.get("error"):
            raise deserialize(reply["error"])
        return reply.get("result")

    def _forget(self, correlation_id):
        with self._pending_lock:
            self._pending.pop(correlation_id, None)
