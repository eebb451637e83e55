"""Declared RPC calls: the methods a process may call, the one list its broker user allows."""

__all__ = ["UndeclaredCall", "check_declared"]


class UndeclaredCall(AttributeError):
    """A call to a method the caller did not declare: its broker identity may not send it."""


def check_declared(calls, service, method):
    """Refuse (``UndeclaredCall``) ``service.method`` unless it is in ``calls``, the methods
    the caller declared it calls there (deploy/broker_users.py derives the caller's broker
    permissions from these declarations)."""
    if method not in calls:
        raise UndeclaredCall(f"{service}.{method} is not among the calls declared for "
                             f"{service} ({', '.join(sorted(calls)) or 'none'}): declare it, "
                             "or the broker refuses it under per-process identities")
