"""The RPC entrypoint every service uses, and input validation through marshmallow."""

import logging
import sys
import uuid

import amqp
import eventlet
import kombu.serialization
from amqp.exceptions import ConnectionError as AmqpConnectionError
from eventlet import patcher
from eventlet.semaphore import Semaphore
from kombu.exceptions import OperationalError as BrokerError
from marshmallow import ValidationError
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import UnknownService, UnserializableValueError, serialize
from nameko.rpc import Responder, RpcConsumer, get_rpc_exchange
from nameko.rpc import Rpc as _NamekoRpc

from shared import compat
from shared import config as cfg
from shared.errors import InternalError, Invalid, PlinthError, Unavailable
from shared.rpc_client import amqp_connection_params

__all__ = ["Rpc", "rpc", "load", "dump", "rpc_input", "call_service", "rpc_timeout",
           "rpc_timeout_key"]

log = logging.getLogger(__name__)
# the classes below replace nameko's reply path: refuse to start on a nameko that moved it
compat.check_nameko_reply_path()
# the real select, for a poll that must not hand over to eventlet's hub
_select = patcher.original("select")


class _ReplyPublisher(Publisher):
    # A reply needs no publisher confirm: if it is lost the caller times out, which is what
    # it would see anyway. Waiting for the confirm cost a broker round trip on every call.
    use_confirms = False
    delivery_mode = 1


class _Responder(Responder):
    publisher_cls = _ReplyPublisher


class _ReplySender:
    """Publishes a container's RPC replies over one kept AMQP connection.

    nameko builds a Responder, a Publisher and a kombu connection for every reply and takes a
    producer from kombu's pool with retry wrappers around it: about a fifth of a service's
    CPU per call went there. Here a reply is one ``basic_publish`` on a channel opened once,
    under a green lock (frames of two replies must not interleave on the socket). A
    connection the broker closed is noticed before it is written to (anything readable on a
    connection that never asks for anything is a close or EOF) and replaced.
    """

    def __init__(self, amqp_uri, exchange, name):
        self._params = amqp_connection_params(amqp_uri, connect_timeout=3.0)
        # named so that an operator (and a test) can tell it apart in RabbitMQ's UI
        self._params["client_properties"]["connection_name"] = name
        self._exchange = exchange
        self._lock = Semaphore(1)
        self._conn = None
        self._channel = None

    def send(self, body, content_type, reply_to, correlation_id):
        message = amqp.Message(body, content_type=content_type, content_encoding="utf-8",
                               correlation_id=correlation_id, delivery_mode=1)
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._channel is None or self._closed_by_peer():
                        self._reconnect()
                    self._channel.basic_publish(message, exchange=self._exchange,
                                                routing_key=reply_to)
                    return
                except (OSError, AmqpConnectionError, amqp.exceptions.AMQPError):
                    self._drop()
                    if attempt == 2:
                        raise

    def _closed_by_peer(self):
        sock = self._conn.transport.sock
        return bool(sock is None or _select.select([sock], [], [], 0)[0])

    def _reconnect(self):
        self._drop()
        conn = amqp.Connection(**self._params, write_timeout=5.0)
        conn.connect()
        self._conn, self._channel = conn, conn.channel()

    def _drop(self):
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    def close(self):
        with self._lock:
            self._drop()


class _RpcConsumer(RpcConsumer):
    """nameko's RPC consumer, replying through one kept connection (see _ReplySender)."""

    _sender = None

    def setup(self):
        super().setup()
        config = self.container.config
        # TLS and custom logins keep nameko's own reply path, which knows how to use them
        if not config.get(AMQP_SSL_CONFIG_KEY) and not config.get(LOGIN_METHOD_CONFIG_KEY):
            self._sender = _ReplySender(config[AMQP_URI_CONFIG_KEY],
                                        get_rpc_exchange(config).name,
                                        f"{self.container.service_name} rpc replies")

    def stop(self):
        super().stop()
        if self._sender is not None:
            self._sender.close()

    def handle_result(self, message, result, exc_info):
        try:
            if self._sender is None:
                result, exc_info = self._nameko_reply(message, result, exc_info)
            else:
                result, exc_info = self._reply(message, result, exc_info)
        except (BrokerError, AmqpConnectionError, OSError) as exc:
            # The broker went away while the worker ran: the caller's reply queue went with
            # it, so the reply is lost either way. Raised from here, the error would kill the
            # whole container (nameko treats it as a crashed worker thread).
            log.warning("could not send the reply of %s: the broker is unreachable (%s)",
                        message.delivery_info.get("routing_key"), type(exc).__name__)
        # acked only if its channel is still alive; otherwise the broker redelivers it
        self.queue_consumer.ack_message(message)
        return result, exc_info

    def _reply(self, message, result, exc_info):
        # what nameko's Responder sends: {"result", "error"}, encoded like the request
        content_type = message.properties["content_type"]
        serializer = kombu.serialization.registry.type_to_name[content_type]
        error = serialize(exc_info[1]) if exc_info is not None else None
        try:
            content_type, _, body = kombu.serialization.dumps(
                {"result": result, "error": error}, serializer)
        except Exception:  # noqa: BLE001 - whatever the result holds that cannot be encoded
            exc_info = sys.exc_info()
            error = serialize(UnserializableValueError(result))
            result = None
            content_type, _, body = kombu.serialization.dumps(
                {"result": None, "error": error}, serializer)
        self._sender.send(body, content_type, message.properties["reply_to"],
                          message.properties.get("correlation_id"))
        return result, exc_info

    def _nameko_reply(self, message, result, exc_info):
        config = self.container.config
        responder = _Responder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY), login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        return responder.send_response(result, exc_info)


class Rpc(_NamekoRpc):
    """nameko's RPC entrypoint, with typed errors as the only errors a caller can see.

    A ``PlinthError`` travels to the caller as itself. Anything else is logged here with a
    reference and replaced by an ``InternalError`` carrying only that reference, so internals
    (SQL, paths, stack frames) never leave the service.
    """

    rpc_consumer = _RpcConsumer()

    def __init__(self, expected_exceptions=(), **kwargs):
        if not isinstance(expected_exceptions, tuple):
            expected_exceptions = (expected_exceptions,)
        super().__init__(expected_exceptions=expected_exceptions + (PlinthError,), **kwargs)

    def handle_result(self, message, worker_ctx, result, exc_info):
        if exc_info is not None and _is_outage(exc_info[1]):
            log.warning("%s.%s: a dependency is unavailable: %s", self.container.service_name,
                        self.method_name, type(exc_info[1]).__name__)
            error = Unavailable(f"{self.container.service_name} cannot reach a dependency; "
                                "retry shortly")
            exc_info = (Unavailable, error, None)
        if exc_info is not None and not isinstance(exc_info[1], PlinthError):
            reference = uuid.uuid4().hex[:12]
            log.error("unexpected error in %s.%s, reference %s: %s",
                      self.container.service_name, self.method_name, reference,
                      type(exc_info[1]).__name__)
            error = InternalError(f"internal error (reference {reference})",
                                  {"reference": reference})
            exc_info = (InternalError, error, None)
        return super().handle_result(message, worker_ctx, result, exc_info)


rpc = Rpc.decorator


def _is_outage(exc):
    """A lost database or broker connection: the caller should retry, not see a 500."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, (OperationalError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def load(schema, data, partial=None):
    """Validate ``data`` with ``schema``; bad input raises ``Invalid`` naming every field."""
    if not isinstance(data, dict):
        raise Invalid("input must be an object", {"_schema": ["must be an object"]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise Invalid("invalid input: " + ", ".join(sorted(map(str, messages))),
                      messages) from None


def dump(schema, obj, many=False):
    return schema.dump(obj, many=many)


def call_service(service, method, *args, timeout, **kwargs):
    """Call ``method`` (an attribute of a nameko ``RpcProxy`` to ``service``) and wait at most
    ``timeout`` seconds. nameko's in-service proxy has no timeout of its own: a service that
    does not answer in time, or has no instance running, is ``Unavailable`` (retry shortly),
    never a hang. The service's own typed errors reach the caller as themselves.
    """
    timer = eventlet.Timeout(timeout)
    try:
        return method(*args, **kwargs)
    except eventlet.Timeout as exc:
        if exc is not timer:
            raise
        raise Unavailable(f"{service} did not answer within {timeout:g}s; try again",
                          {"service": service}) from None
    except UnknownService:
        raise Unavailable(f"{service} is not running; try again",
                          {"service": service}) from None
    finally:
        timer.cancel()


def rpc_input(data, fields):
    """An RPC method's input, given as one dict (the gateway) or as keyword arguments (nameko
    shell): ``def create(self, data=None, **fields)`` loads ``rpc_input(data, fields)``."""
    if data is None:
        return fields
    if not isinstance(data, dict):
        return data  # load() rejects it with a clear error
    return {**data, **fields}


def rpc_timeout_key(service):
    """The setting that bounds calls to ``service``: ``<SERVICE>_RPC_TIMEOUT`` (seconds)."""
    return f"{service.upper()}_RPC_TIMEOUT"


def rpc_timeout(config, service, default=5.0, old_key=None):
    """Seconds a call to ``service`` may take (``rpc_timeout_key``); ``old_key`` is a
    deprecated name of the same setting, still read with a warning."""
    key = rpc_timeout_key(service)
    if old_key is None:
        return cfg.setting(config, key, default, float)
    return cfg.renamed_setting(config, key, old_key, default, float)
