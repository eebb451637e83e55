"""Exponential backoff with jitter: the one retry schedule every kernel loop uses."""

import random

__all__ = ["Backoff", "NO_JITTER", "HALF_JITTER", "WIDE_JITTER"]

# multipliers a delay is spread over: each wait is ceiling * uniform(low, high)
NO_JITTER = (1.0, 1.0)
HALF_JITTER = (0.5, 1.0)  # never more than the ceiling: a cap stays a cap
WIDE_JITTER = (0.5, 1.5)  # around the ceiling: loops failing together drift apart sooner


class Backoff:
    """Waits of ``initial * factor ** n`` seconds, at most ``maximum``, each spread by
    ``jitter`` (a ``(low, high)`` multiplier range).

    ``delay(n)`` is the wait after the n-th retry (from 0) and keeps no state; ``next()``
    counts the attempts itself and ``reset()`` starts over after a success.
    """

    def __init__(self, initial=0.5, maximum=30.0, factor=2.0, jitter=HALF_JITTER,
                 rng=random.random):
        self.initial, self.maximum = initial, max(initial, maximum)
        self.factor, self.jitter, self.rng = factor, jitter, rng
        self.attempt = 0

    def ceiling(self, attempt):
        """The wait before jitter: ``initial * factor ** attempt``, capped."""
        return min(self.maximum, self.initial * self.factor ** min(max(attempt, 0), 64))

    def delay(self, attempt):
        low, high = self.jitter
        return self.ceiling(attempt) * (low + (high - low) * self.rng())

    def next(self):
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self):
        self.attempt = 0
