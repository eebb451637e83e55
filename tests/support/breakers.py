"""Driving the gateway's circuit breakers with real calls and exceptions, for tests and benches.

Production reports each call's outcome through the RPC pool's hooks (``Breakers.before_rpc`` /
``after_rpc``); these wrap a callable instead: admit, run, record what it raised.
"""

from shared.errors import PlinthError, Unavailable

__all__ = ["counts_as_failure", "guard", "call"]

# nameko's standalone proxy and py-amqp have their own timeout and connection error types,
# which derive from none of the ones counts_as_failure checks by class
_FOREIGN_FAILURES = ("RpcTimeout", "ConnectionError", "RecoverableConnectionError",
                     "ConnectionForced", "OperationalError")


def counts_as_failure(exc):
    """True for what says the service is unwell (timeouts, unavailability, broker/socket
    errors); False for typed errors a healthy service raises on purpose."""
    if isinstance(exc, Unavailable):
        return True
    if isinstance(exc, PlinthError):
        return False
    if isinstance(exc, TimeoutError | OSError):
        return True
    return type(exc).__name__ in _FOREIGN_FAILURES


def _describe(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class guard:  # lower-case: it reads as a function, ``with guard(breaker):``
    """One call through ``breaker``: admitted on entry, its outcome recorded on exit."""

    __slots__ = ("breaker", "ticket")

    def __init__(self, breaker):
        self.breaker = breaker

    def __enter__(self):
        self.ticket = self.breaker.admit()
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc is None:
            self.breaker.record(self.ticket, False)
        elif isinstance(exc, Exception):
            failed = counts_as_failure(exc)
            self.breaker.record(self.ticket, failed, _describe(exc) if failed else None)
        else:
            self.breaker.record(self.ticket, None)  # interrupted: GreenletExit, Ctrl-C
        return False


def call(breaker, func, *args, **kwargs):
    """``func(*args, **kwargs)`` through ``breaker``."""
    with guard(breaker):
        return func(*args, **kwargs)
