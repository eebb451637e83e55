"""The RPC entrypoint every service uses, and input validation through marshmallow."""

import logging
import uuid

from amqp.exceptions import ConnectionError as AmqpConnectionError
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
from nameko.rpc import Responder, RpcConsumer, get_rpc_exchange
from nameko.rpc import Rpc as _NamekoRpc

from shared.errors import InternalError, Invalid, PlinthError, Unavailable

__all__ = ["Rpc", "rpc", "load", "dump"]

log = logging.getLogger(__name__)


class _ReplyPublisher(Publisher):
    # A reply needs no publisher confirm: if it is lost the caller times out, which is what
    # it would see anyway. Waiting for the confirm cost a broker round trip on every call.
    use_confirms = False
    delivery_mode = 1


class _Responder(Responder):
    publisher_cls = _ReplyPublisher


class _RpcConsumer(RpcConsumer):
    """nameko's RPC consumer, replying without publisher confirms (see _ReplyPublisher)."""

    def handle_result(self, message, result, exc_info):
        config = self.container.config
        responder = _Responder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY), login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        try:
            result, exc_info = responder.send_response(result, exc_info)
        except (BrokerError, AmqpConnectionError, OSError) as exc:
            # The broker went away while the worker ran: the caller's reply queue went with
            # it, so the reply is lost either way. Raised from here, the error would kill the
            # whole container (nameko treats it as a crashed worker thread).
            log.warning("could not send the reply of %s: the broker is unreachable (%s)",
                        message.delivery_info.get("routing_key"), type(exc).__name__)
        # acked only if its channel is still alive; otherwise the broker redelivers it
        self.queue_consumer.ack_message(message)
        return result, exc_info


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
