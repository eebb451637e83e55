"""Every patch of a library's private parts, each behind a guard that fails loudly at start.

nameko 2.14.1 is its last release and eventlet is retiring, so an upgrade will come. Each
patch here first checks that what it replaces is still there with the shape it was written
for, and raises ``IncompatibleLibrary`` (naming the library, its installed version and the
attribute) when it is not: the process refuses to start instead of misbehaving later.

The patches: nameko's RPC reply path (``RpcConsumer.handle_result`` and ``Responder``:
``KeptConnectionRpcConsumer``, the consumer of ``shared.rpc.Rpc``), py-amqp's
``transport._quick_recv`` (``read_ahead``), the private parts of a standalone
``ClusterRpcProxy`` (``set_call_options``, used by benchmarks), gunicorn's ``Server``
header and error pages (``set_server_name``, ``replace_error_writer``), nameko's
``QueueConsumer.get_consumers`` (``RawQueueConsumer``, the consumer of ``shared.tasks``) and
the export queue of opentelemetry-sdk's ``BatchSpanProcessor`` (``counting_span_processor``)
and its reading of the sampler variables (``sampler_from_environment``).
"""

import inspect
import logging
import sys
from functools import partial
from importlib import metadata

import kombu.serialization
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import EncodeError
from kombu.exceptions import OperationalError as BrokerError
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import UnserializableValueError, serialize
from nameko.messaging import QueueConsumer
from nameko.rpc import Responder, RpcConsumer, get_rpc_exchange

from shared.replies import ReplySender

__all__ = ["IncompatibleLibrary", "require", "check_nameko_reply_path", "RawQueueConsumer",
           "check_nameko_queue_consumer",
           "KeptConnectionRpcConsumer", "read_ahead", "set_call_options", "set_server_name",
           "replace_error_writer", "counting_span_processor", "sampler_from_environment"]

log = logging.getLogger(__name__)


class IncompatibleLibrary(RuntimeError):
    """The installed version of a library no longer has what a patch of ours replaces."""

    def __init__(self, library, attribute, problem):
        self.library, self.attribute = library, attribute
        self.version = _version(library)
        super().__init__(f"{library} {self.version}: {attribute} {problem}; shared/compat.py "
                         "patches it and must be updated for this version")


def _version(library):
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def require(library, owner, attribute, parameters=None):
    """``owner.attribute`` (a dotted path below ``owner``), checked to exist and, given
    ``parameters``, to take exactly those; returns it."""
    value, where = owner, getattr(owner, "__name__", type(owner).__name__)
    for name in attribute.split("."):
        if not hasattr(value, name):
            raise IncompatibleLibrary(library, f"{where}.{attribute}", "is missing")
        value = getattr(value, name)
    if parameters is not None:
        try:
            found = list(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            found = None
        if found != list(parameters):
            raise IncompatibleLibrary(library, f"{where}.{attribute}",
                                      f"takes {found}, not {list(parameters)}")
    return value


# -- nameko: the RPC reply path ---------------------------------------------------------------

def check_nameko_reply_path():
    """shared.rpc answers RPC calls itself: it overrides ``RpcConsumer.handle_result``, swaps
    ``Responder.publisher_cls`` and acks through the queue consumer as nameko does."""
    from nameko import exceptions, rpc
    from nameko.messaging import QueueConsumer

    require("nameko", rpc, "RpcConsumer.handle_result", ["self", "message", "result",
                                                         "exc_info"])
    require("nameko", rpc, "Rpc.handle_result", ["self", "message", "worker_ctx", "result",
                                                 "exc_info"])
    require("nameko", rpc, "Rpc.rpc_consumer")
    require("nameko", rpc, "Responder.publisher_cls")
    require("nameko", rpc, "Responder.send_response", ["self", "result", "exc_info"])
    require("nameko", rpc, "get_rpc_exchange", ["config"])
    require("nameko", exceptions, "serialize", ["exc"])
    require("nameko", QueueConsumer, "ack_message", ["self", "message"])


class _ReplyPublisher(Publisher):
    # A reply needs no publisher confirm: if it is lost the caller times out, which is what
    # it would see anyway. Waiting for the confirm cost a broker round trip on every call.
    use_confirms = False
    delivery_mode = 1


class _Responder(Responder):
    publisher_cls = _ReplyPublisher


class KeptConnectionRpcConsumer(RpcConsumer):
    """nameko's RPC consumer, replying through one kept connection (``shared.replies``).

    nameko builds a Responder, a Publisher and a kombu connection for every reply: about a
    fifth of a service's CPU per call. This consumer's ``handle_result`` sends what nameko's
    Responder would send, through a ``ReplySender``; ``setup()`` first checks that nameko
    still has the reply path this replaces (``check_nameko_reply_path``).
    """

    _sender = None

    def setup(self):
        check_nameko_reply_path()
        super().setup()
        config = self.container.config
        # TLS and custom logins keep nameko's own reply path, which knows how to use them
        if not config.get(AMQP_SSL_CONFIG_KEY) and not config.get(LOGIN_METHOD_CONFIG_KEY):
            self._sender = ReplySender(config[AMQP_URI_CONFIG_KEY],
                                        get_rpc_exchange(config).name,
                                        f"{self.container.service_name} rpc replies")

    def stop(self):
        super().stop()
        if self._sender is not None:
            self._sender.close()

    def handle_result(self, message, result, exc_info):
        if not message.properties.get("reply_to"):
            # nobody to answer (a malformed or forged request): raised from here, the
            # KeyError would kill the whole container
            log.warning("dropped an RPC request to %s without reply_to (%s)",
                        message.delivery_info.get("routing_key"),
                        type(exc_info[1]).__name__ if exc_info else "no error")
            self.queue_consumer.ack_message(message)
            return result, exc_info
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
        except EncodeError:  # the result holds what the serializer cannot encode
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


# -- py-amqp: reading ahead -------------------------------------------------------------------

def read_ahead(connection, size=4096):
    """Make py-amqp cheaper per message on ``connection`` (a py-amqp Connection); returns its
    socket if it did.

    py-amqp keeps surplus bytes in its read buffer already, but asks the socket for just the
    bytes it needs next: three reads per frame and three frames per message, each a green
    socket call under eventlet. Here it reads ``size`` bytes ahead instead. The caller may
    also give the socket a standing timeout, so ``drain_events()`` needs none of its own.
    Plain TCP transports only; others stay as they are.
    """
    from amqp import transport as amqp_transport

    require("amqp", amqp_transport, "TCPTransport._read", ["self", "n", "initial", "_errnos"])
    transport = getattr(connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if not isinstance(transport, amqp_transport.TCPTransport) or sock is None:
        return None
    require("amqp", transport, "_quick_recv")
    recv = sock.recv
    transport._quick_recv = lambda wanted: recv(max(wanted, size))
    return sock


# -- nameko: a standalone ClusterRpcProxy's call options --------------------------------------

def set_call_options(standalone, context, timeout):
    """Give a started ``ClusterRpcProxy`` the context data and timeout of the next call (both
    are otherwise fixed when the proxy is made)."""
    require("nameko", standalone, "_worker_ctx.data")
    queue_consumer = require("nameko", standalone, "_reply_listener.queue_consumer")
    require("nameko", queue_consumer, "timeout")
    standalone._worker_ctx.data = dict(context or {})
    queue_consumer.timeout = timeout


# -- gunicorn: the Server header and its own error pages --------------------------------------

def set_server_name(name):
    """The ``Server`` header gunicorn sends in every response (its name and version by
    default)."""
    import gunicorn.http.wsgi

    current = require("gunicorn", gunicorn.http.wsgi, "SERVER")
    if not isinstance(current, str):
        raise IncompatibleLibrary("gunicorn", "gunicorn.http.wsgi.SERVER", "is not a string")
    gunicorn.http.wsgi.SERVER = name


def replace_error_writer(write_error):
    """Answer the requests gunicorn cannot parse with ``write_error(sock, status_int, reason,
    mesg)``, which gunicorn's workers call through ``gunicorn.util``."""
    from gunicorn import util

    require("gunicorn", util, "write_error", ["sock", "status_int", "reason", "mesg"])
    require("gunicorn", util, "write_nonblock")
    util.write_error = write_error


# -- nameko: a queue consumer that hands messages over undecoded ------------------------------

def check_nameko_queue_consumer():
    """``RawQueueConsumer`` replaces ``QueueConsumer.get_consumers`` and fills its
    ``_consumers`` from its ``_providers`` as nameko 2.14 does."""
    require("nameko", QueueConsumer, "get_consumers", ["self", "consumer_cls", "channel"])
    require("nameko", QueueConsumer, "handle_message", ["self", "provider", "body", "message"])
    require("nameko", QueueConsumer, "prefetch_count")
    consumer = QueueConsumer()
    for attribute in ("_consumers", "_providers"):
        require("nameko", consumer, attribute)


class RawQueueConsumer(QueueConsumer):
    """nameko's queue consumer, handing messages over undecoded (``body`` is None): a body
    that does not decode (a poison task) must be dead-lettered by its consumer, not raise in
    kombu's loop and come back forever."""

    def setup(self):
        check_nameko_queue_consumer()
        super().setup()

    def get_consumers(self, consumer_cls, channel):
        for provider in self._providers:
            handle = partial(self.handle_message, provider, None)
            consumer = consumer_cls(queues=[provider.queue], on_message=handle,
                                    on_decode_error=lambda message, _exc, h=handle: h(message))
            consumer.qos(prefetch_count=self.prefetch_count)
            self._consumers[provider] = consumer
        return self._consumers.values()


# -- opentelemetry-sdk: counting the spans a full export queue drops --------------------------

def sampler_from_environment():
    """The sampler ``OTEL_TRACES_SAMPLER`` / ``_ARG`` name, as the SDK reads them for a
    ``TracerProvider`` given none (shared.tracing wraps it, so it must read them itself)."""
    from opentelemetry.sdk.trace import sampling

    return require("opentelemetry-sdk", sampling, "_get_from_env_or_default", [])()


def counting_span_processor(exporter, on_drop):
    """A ``BatchSpanProcessor`` for ``exporter`` that calls ``on_drop(1, "queue_full")`` for
    each span it drops because its bounded queue is full (the SDK only logs those). It reads
    the processor's private queue and its bound."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    require("opentelemetry-sdk", BatchSpanProcessor, "on_end", ["self", "span"])

    class CountingBatchSpanProcessor(BatchSpanProcessor):
        def on_end(self, span):
            if span.context.trace_flags.sampled:
                batch = self._batch_processor
                if len(batch._queue) >= batch._max_queue_size:
                    on_drop(1, "queue_full")
            super().on_end(span)

    processor = CountingBatchSpanProcessor(exporter)
    try:
        inner = require("opentelemetry-sdk", processor, "_batch_processor")
        require("opentelemetry-sdk", inner, "_queue")
        require("opentelemetry-sdk", inner, "_max_queue_size")
    except IncompatibleLibrary:
        processor.shutdown()
        raise
    return processor
