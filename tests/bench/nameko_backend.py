"""The gateway with stock nameko proxies instead of its pooled client, for ``make bench``.

``NamekoBackend`` keeps one standalone ``ClusterRpcProxy`` per thread (they cannot be shared
between threads); ``install(app)`` puts it in a gateway app in place of its pooled client
(gunicorn serves such a gateway as ``tests.bench.nameko_wsgi:app``).
"""

import os
import threading

from shared import compat
from shared.errors import PlinthError
from shared.rpc_client import BrokerUnavailable, RpcTimeout, ServiceNotRunning

__all__ = ["NamekoBackend", "install"]


class NamekoBackend:
    """A stock nameko ``ClusterRpcProxy`` per thread (not shareable between threads)."""

    def __init__(self, amqp_uri, timeout, connect_timeout):
        self.config = {"AMQP_URI": amqp_uri}
        self.timeout = timeout
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def _proxy(self):
        holder = getattr(self._local, "holder", None)
        if holder is None or holder[0] != os.getpid():
            from nameko.standalone.rpc import ClusterRpcProxy

            standalone = ClusterRpcProxy(self.config, context_data={}, timeout=self.timeout)
            holder = (os.getpid(), standalone, standalone.start())
            self._local.holder = holder
            with self._lock:
                self._all.append(standalone)
        return holder

    def _drop(self):
        holder = getattr(self._local, "holder", None)
        self._local.holder = None
        if holder is not None:
            try:
                holder[1].stop()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    def call(self, service, method, kwargs, timeout, context):
        from nameko.exceptions import RpcTimeout as NamekoTimeout
        from nameko.exceptions import UnknownService

        try:
            _, standalone, proxy = self._proxy()
        except OSError as exc:
            raise BrokerUnavailable(f"the message broker is unreachable ({exc})") from None
        # the proxy's context data and timeout are fixed at creation: set them per call
        compat.set_call_options(standalone, context, timeout)
        try:
            return getattr(getattr(proxy, service), method)(**(kwargs or {}))
        except NamekoTimeout:
            self._drop()  # a late reply would otherwise reach the next call's listener
            raise RpcTimeout(f"{service}.{method} did not answer within {timeout:g}s",
                             {"service": service, "timeout": timeout}) from None
        except UnknownService:
            raise ServiceNotRunning(f"no instance of {service} is running",
                                    {"service": service}) from None
        except PlinthError:
            raise
        except (OSError, ConnectionError) as exc:
            self._drop()
            raise BrokerUnavailable(f"lost the message broker ({type(exc).__name__})") \
                from None

    def connected(self, wait=0.0):
        from kombu import Connection

        try:
            with Connection(self.config["AMQP_URI"], connect_timeout=max(wait, 1.0)) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:  # noqa: BLE001 - unreachable is the answer
            return False

    last_error = None

    def close(self):
        with self._lock:
            proxies, self._all = self._all, []
        for standalone in proxies:
            try:
                standalone.stop()
            except Exception:  # noqa: BLE001
                pass


def install(app):
    """Make ``app`` (a gateway Flask app) call services through ``NamekoBackend``."""
    state = app.extensions["plinth"]
    settings = state.settings
    state.rpc.backend.close()
    state.rpc.backend = NamekoBackend(settings["AMQP_URI"], settings.get_as("RPC_TIMEOUT", float),
                                      settings.get_as("RPC_CONNECT_TIMEOUT", float))
    state.rpc.backend_name = "nameko"
    return app

