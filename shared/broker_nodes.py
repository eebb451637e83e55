"""The broker nodes an ``AMQP_URI`` names, and connecting to whichever of them answers.

``AMQP_URI`` may list several nodes of one RabbitMQ cluster separated by ``;``
(``amqp://u:p@h1:5672/v;amqp://u:p@h2:5672/v``), as kombu accepts it. kombu-based clients
(nameko, the audit consumer, the gateway's listeners) fail over between them by themselves;
the clients built on py-amqp directly (``shared.rpc_client``, ``shared.replies``) connect
through ``Nodes``: the first node that answers, starting with the one after a node that went
away, so a reconnect after a node's loss does not first wait on the dead node.
"""

import threading
from urllib.parse import unquote, urlparse

import amqp

from shared.config import amqp_ssl

__all__ = ["node_uris", "amqp_connection_params", "open_connection", "Nodes"]


def node_uris(amqp_uri):
    """The single-node URIs of ``amqp_uri``, in order; ValueError when it names none."""
    uris = [part.strip() for part in str(amqp_uri or "").split(";") if part.strip()]
    if not uris:
        raise ValueError("AMQP_URI names no broker node")
    return uris


def amqp_connection_params(amqp_uri, connect_timeout, ssl=None):
    """py-amqp ``Connection`` arguments for a single-node ``amqp_uri``: no heartbeats, no
    blocked notices; over TLS with ``ssl`` (default: ``AMQP_SSL`` from the environment,
    shared.config)."""
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


def open_connection(params, **extra):
    """A py-amqp connection (not connected yet) that does not ask for connection.blocked
    notices.

    py-amqp adds every capability the broker offers to those the client announced; with
    connection.blocked, each ``basic_publish`` first reads the socket, while a reader thread
    may be waiting on it (under eventlet over TLS that is a second reader of the socket, which
    eventlet refuses)."""
    conn = amqp.Connection(**{**params, **extra})
    conn.negotiate_capabilities = {name: wanted for name, wanted
                                   in conn.negotiate_capabilities.items()
                                   if name != "connection.blocked"}
    return conn


class Nodes:
    """The nodes of one ``AMQP_URI``, connected to in turn (see the module docstring)."""

    def __init__(self, amqp_uri, connect_timeout, ssl=None):
        self.params = [amqp_connection_params(uri, connect_timeout, ssl)
                       for uri in node_uris(amqp_uri)]
        self._current = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.params)

    @property
    def current(self):
        """Connection arguments of the node in use (or to be tried first)."""
        return self.params[self._current]

    def connect(self, **extra):
        """A connected py-amqp ``Connection`` to the first node that answers; the last node's
        error when none does."""
        error = None
        for _ in range(len(self.params)):
            params = self.current
            conn = open_connection(params, **extra)
            try:
                conn.connect()
                return conn
            except Exception as exc:  # noqa: BLE001 - any failure: try the next node
                error = exc
                conn.collect()
                self.failed()
        raise error

    def failed(self):
        """The node in use went away: the next connect starts with the following one."""
        with self._lock:
            self._current = (self._current + 1) % len(self.params)
