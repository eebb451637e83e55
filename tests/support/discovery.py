"""Waiting on the gateway's view of the service registry (gateway/discovery.py) in tests."""

import time

__all__ = ["wait_for"]


def wait_for(view, predicate, timeout, interval=0.02):
    """Poll until ``predicate(view)`` holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate(view)
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
