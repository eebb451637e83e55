"""The RPC entrypoint every service uses, and input validation through marshmallow."""

import logging
import uuid

import eventlet
from marshmallow import ValidationError
from nameko.exceptions import UnknownService
from nameko.rpc import Rpc as _NamekoRpc
from nameko.rpc import RpcProxy

from shared import compat, tracing
from shared import config as cfg
from shared.calls import UndeclaredCall, check_declared
from shared.errors import InternalError, Invalid, PlinthError, Unavailable

__all__ = ["Rpc", "rpc", "load", "rpc_input", "call_service", "rpc_timeout", "rpc_timeout_key",
           "ServiceRpc", "UndeclaredCall", "check_declared"]

log = logging.getLogger(__name__)


class Rpc(_NamekoRpc):
    """nameko's RPC entrypoint, with typed errors as the only errors a caller can see.

    A ``PlinthError`` travels to the caller as itself. Anything else is logged here with a
    reference and replaced by an ``InternalError`` carrying only that reference, so internals
    (SQL, paths, stack frames) never leave the service.
    """

    # replies over one kept connection: a patch of nameko's reply path (shared.compat)
    rpc_consumer = compat.KeptConnectionRpcConsumer()

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


def call_service(service, method, *args, timeout, **kwargs):
    """Call ``method`` (an attribute of a nameko ``RpcProxy`` to ``service``) and wait at most
    ``timeout`` seconds. nameko's in-service proxy has no timeout of its own: a service that
    does not answer in time, or has no instance running, is ``Unavailable`` (retry shortly),
    never a hang. The service's own typed errors reach the caller as themselves. The call
    gets a client span, whose context travels in the worker's context data.
    """
    handle = _client_span(service, method)
    timer = eventlet.Timeout(timeout)
    error = None
    try:
        return method(*args, **kwargs)
    except eventlet.Timeout as exc:
        if exc is not timer:
            raise
        error = Unavailable(f"{service} did not answer within {timeout:g}s; try again",
                            {"service": service})
        raise error from None
    except UnknownService:
        error = Unavailable(f"{service} is not running; try again", {"service": service})
        raise error from None
    except Exception as exc:
        error = exc
        raise
    finally:
        timer.cancel()
        _end_client_span(handle, method, error)


def _client_span(service, method):
    """Start the client span of a call through a nameko proxy method and point the worker's
    context data (what the proxy sends as headers) at it; None when not traced."""
    worker_ctx = getattr(method, "worker_ctx", None)
    if not tracing.enabled() or worker_ctx is None:
        return None
    name = getattr(method, "method_name", "call")
    handle = tracing.start(f"{service}.{name}", tracing.SpanKind.CLIENT, attributes={
        "rpc.system": "nameko", "rpc.service": service, "rpc.method": name})
    saved = tracing.carrier_of(worker_ctx.data)
    tracing.inject(worker_ctx.data)
    return handle, worker_ctx, saved


def _end_client_span(traced, method, error):
    if traced is None:
        return
    handle, worker_ctx, saved = traced
    for key in (tracing.TRACEPARENT, tracing.TRACESTATE):
        worker_ctx.data.pop(key, None)
    worker_ctx.data.update(saved)
    tracing.finish(handle, error)


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


class ServiceRpc(RpcProxy):
    """nameko's ``RpcProxy`` to ``target_service``, limited to the methods in ``calls``.

    ``identity_rpc = ServiceRpc("identity", calls=("get_user",))``: the declaration is the one
    list of what this service calls there. ``deploy/broker_users.py`` reads it (``rpc_calls``)
    to allow exactly those routing keys to this service's broker user, and the proxy refuses
    any other method before it reaches the broker (``UndeclaredCall``), so the list cannot
    fall behind the code.
    """

    def __init__(self, target_service, calls=(), **options):
        if isinstance(calls, str) or not all(isinstance(c, str) and c for c in calls):
            raise TypeError("calls must be a sequence of method names")
        self.calls = frozenset(calls)
        super().__init__(target_service, **options)

    @property
    def rpc_calls(self):
        """``{service: methods}`` this dependency may call."""
        return {self.target_service: self.calls}

    def get_dependency(self, worker_ctx):
        return _DeclaredProxy(super().get_dependency(worker_ctx), self.target_service,
                              self.calls)


class _DeclaredProxy:
    __slots__ = ("_proxy", "_service", "_calls")

    def __init__(self, proxy, service, calls):
        self._proxy, self._service, self._calls = proxy, service, calls

    def __getattr__(self, name):
        check_declared(self._calls, self._service, name)
        return getattr(self._proxy, name)
