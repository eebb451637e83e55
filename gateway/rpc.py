"""The RPC client pool: how a request reaches a service, in one place.

``RpcPool.call`` is the only path from the gateway to a service. Each gunicorn worker process
holds a few (``RPC_POOL_SIZE``) thread-safe ``shared.rpc_client.RpcClient``s, created lazily
after the fork so that no socket or thread crosses it, which all its threads share; each
reconnects by itself after a broker outage. (``make bench`` compares it with stock
``ClusterRpcProxy``s: tests/bench/nameko_backend.py.)

Hooks, registered by name (``add_before_rpc(name, hook)``, ``add_after_rpc(name, hook)``) and
run in the order they were added: a before-hook ``hook(service)`` runs before every call and
may raise a typed error (for example ``Unavailable`` when no healthy instance is registered,
or an open circuit breaker); an after-hook ``hook(service, outcome, seconds)`` sees every
result.
"""

import itertools
import logging
import os
import socket
import sys
import threading
import time

from gateway import metrics
from shared import tracing
from shared.errors import PlinthError, Unavailable
from shared.rpc_client import BrokerUnavailable, RpcClient, RpcTimeout, ServiceNotRunning

__all__ = ["RpcPool", "PooledBackend", "RpcTimeout", "ServiceNotRunning",
           "BrokerUnavailable"]

log = logging.getLogger("gateway.rpc")


class PooledBackend:
    """``size`` thread-safe ``RpcClient``s per process, shared by all its threads.

    One client would do, but its threads take turns to send: it publishes under a write lock
    (py-amqp's connection is not thread-safe; there are no publisher confirms to wait for), so
    with many threads the calls queue behind each other; a few clients (each a publishing and
    a consuming connection, and a reader thread) spread them. A thread keeps the client it was
    first given."""

    def __init__(self, amqp_uri, timeout, connect_timeout, size=4):
        self.amqp_uri, self.timeout, self.connect_timeout = amqp_uri, timeout, connect_timeout
        self.size = max(1, int(size))
        self._clients = []
        self._pid = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._next = itertools.count()

    @property
    def clients(self):
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # clients inherited through fork have no reader thread: start afresh
                    self._clients = [self._new_client(i) for i in range(self.size)]
                    self._pid = os.getpid()
        return self._clients

    def _new_client(self, index):
        client = RpcClient(self.amqp_uri, timeout=self.timeout,
                           connect_timeout=self.connect_timeout,
                           name=f"rpc.reply-gateway-{socket.gethostname()}-{os.getpid()}-"
                                f"{id(self):x}-{index}")
        return client.start()

    @property
    def client(self):
        clients = self.clients
        mine = getattr(self._local, "client", None)
        if mine is None or mine not in clients:
            mine = self._local.client = clients[next(self._next) % len(clients)]
        return mine

    def call(self, service, method, kwargs, timeout, context):
        return self.client.call(service, method, kwargs=kwargs, timeout=timeout,
                                context=context)

    def connected(self, wait=0.0):
        clients = self.clients
        if wait:
            deadline = time.monotonic() + wait
            return all(c.wait_connected(max(0.0, deadline - time.monotonic()))
                       for c in clients)
        return all(c.connected for c in clients)

    @property
    def last_error(self):
        errors = [c.last_error for c in self._clients if c.last_error is not None]
        return errors[0] if errors else None

    def close(self):
        if self._pid == os.getpid():
            for client in self._clients:
                client.close()
        self._clients = []
        self._pid = None


class RpcPool:
    def __init__(self, amqp_uri, timeout=10.0, connect_timeout=3.0, size=4):
        self.backend_name = "pooled"
        self.backend = PooledBackend(amqp_uri, timeout, connect_timeout, size=size)
        self.timeout = timeout
        # (name, hook) pairs; replaced, never changed in place, so calls in flight on other
        # threads keep iterating the tuple they started with
        self._before_rpc = ()
        self._after_rpc = ()

    def add_before_rpc(self, name, hook):
        """Run ``hook(service)`` before every call; it may raise a typed error to refuse it."""
        self._before_rpc = _with_hook(self._before_rpc, name, hook)

    def add_after_rpc(self, name, hook):
        """Run ``hook(service, outcome, seconds)`` after every call, whatever its outcome."""
        self._after_rpc = _with_hook(self._after_rpc, name, hook)

    def call(self, service, method, kwargs=None, timeout=None, context=None):
        """``service.method(**kwargs)``'s result, or its typed error.

        Errors: the service's own (``shared.errors``), ``RpcTimeout`` (504),
        ``ServiceNotRunning`` and ``BrokerUnavailable`` (503). The call is a client span of
        the current trace, whose context travels in the call's headers.
        """
        for _name, hook in self._before_rpc:
            hook(service)
        timeout = self.timeout if timeout is None else timeout
        started = time.perf_counter()
        outcome = "ok"
        span = tracing.start(f"{service}.{method}", tracing.SpanKind.CLIENT, attributes={
            "rpc.system": "nameko", "rpc.service": service, "rpc.method": method})
        try:
            if span is not None:
                context = tracing.inject(dict(context or {}))
            return self.backend.call(service, method, kwargs or {}, timeout, context)
        except RpcTimeout:
            outcome = "timeout"
            raise
        except Unavailable:
            outcome = "unavailable"
            raise
        except PlinthError:
            outcome = "error"  # the service answered, with an error
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            if span is not None:
                tracing.finish(span, sys.exc_info()[1])
            elapsed = time.perf_counter() - started
            metrics.RPC_LATENCY.labels(service, outcome).observe(elapsed)
            for name, hook in self._after_rpc:
                try:
                    hook(service, outcome, elapsed)
                except Exception:  # a hook must not turn a result into an error
                    log.exception("after_rpc hook %s failed", name)

    def connected(self, wait=0.0):
        return self.backend.connected(wait)

    @property
    def last_error(self):
        return self.backend.last_error

    def close(self):
        self.backend.close()


def _with_hook(hooks, name, hook):
    """``hooks`` and then ``(name, hook)``; a name already there is a mistake in the wiring."""
    if any(existing == name for existing, _ in hooks):
        raise ValueError(f"an RPC hook named {name!r} is already registered")
    return (*hooks, (name, hook))
