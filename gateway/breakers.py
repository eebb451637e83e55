"""Per-service circuit breakers: stop calling a service that keeps failing, probe it later.

A breaker is ``closed`` (calls go through; consecutive failures are counted), ``open`` (after
``fail_max`` consecutive failures: calls are refused at once with ``BreakerOpen``, a 503 with
``retry_after``, for ``reset_timeout`` seconds) or ``half-open`` (the timeout has passed: the
next call goes through as the one probe, others are still refused; its success closes the
breaker, its failure opens it again). Only infrastructure failures count: the RPC pool's
outcomes ``timeout``, ``unavailable`` (the broker or the service) and ``failed`` (any other
exception: a socket, the broker). A typed business error (NotFound, Invalid, Conflict,
Unauthorized, Forbidden, TooManyRequests, even InternalError) proves the service answered,
so it counts as a success.

Why not pybreaker (1.4.1, which setup.cfg lists): its ``CircuitBreaker.call`` holds the
breaker's RLock for the whole guarded call, so every request a gateway process sends to one
service would run one at a time -- with gthread workers, a slow call would queue all the
others behind it (docs/benchmarks.md measures it: 16 threads making 20 ms calls through one
breaker get 1/16 of the throughput). Its ``calling()`` context manager avoids the lock but then
lets every concurrent call through in half-open (a thundering herd on a recovering service)
and, with the default ``throw_new_error_on_trip``, replaces the tripping call's own error. The
state machine is small; this one holds its lock only to change state.

Wiring into the gateway's RPC pool (``gateway.rpc.RpcPool`` hooks)::

    breakers = Breakers.from_config(settings)
    pool.add_before_rpc("breakers", breakers.before_rpc)  # raises BreakerOpen when open
    pool.add_after_rpc("breakers", breakers.after_rpc)    # records each call's outcome
"""

import logging
import math
import threading
import time
from datetime import UTC, datetime

from shared.config import ConfigError, setting
from shared.errors import Unavailable

__all__ = ["CircuitBreaker", "Breakers", "BreakerOpen", "FAILURE_OUTCOMES",
           "CLOSED", "OPEN", "HALF_OPEN", "FAIL_MAX_KEY", "RESET_TIMEOUT_KEY"]

log = logging.getLogger("gateway.breakers")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
FAIL_MAX_KEY = "BREAKER_FAIL_MAX"
RESET_TIMEOUT_KEY = "BREAKER_RESET_TIMEOUT"
DEFAULT_FAIL_MAX = 5
DEFAULT_RESET_TIMEOUT = 5.0  # the platform recovers within 10 s of an outage's end
# outcomes gateway.rpc.RpcPool reports to after_rpc hooks that mean "the service failed us"
FAILURE_OUTCOMES = frozenset({"timeout", "unavailable", "failed"})


class BreakerOpen(Unavailable):
    """The service's breaker is open: answered 503 at once, without calling it."""


class _Ticket:
    __slots__ = ("probe", "admitted_at")

    def __init__(self, probe, admitted_at):
        self.probe, self.admitted_at = probe, admitted_at


class CircuitBreaker:
    """One service's breaker; thread-safe, and never holds its lock during a call."""

    def __init__(self, name, fail_max=DEFAULT_FAIL_MAX, reset_timeout=DEFAULT_RESET_TIMEOUT,
                 clock=time.monotonic, on_change=None):
        if fail_max < 1 or reset_timeout <= 0:
            raise ValueError("fail_max must be >= 1 and reset_timeout > 0")
        self.name = name
        self.fail_max, self.reset_timeout = int(fail_max), float(reset_timeout)
        self.clock, self.on_change = clock, on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = None
        self._probe_since = None  # when the half-open probe in flight was admitted
        self._changed_at = time.time()
        self.last_failure = None
        self.counts = {"calls": 0, "failures": 0, "rejected": 0, "opened": 0}

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self):
        with self._lock:
            return self._visible_state()

    def _visible_state(self):
        if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout:
            return HALF_OPEN  # ready to probe: what a person reading the dashboard expects
        return self._state

    def _move(self, new):
        """Change state (lock held); returns the (old, new) pair to announce after unlocking."""
        old = self._state
        self._state = new
        self._changed_at = time.time()
        if new == OPEN:
            self._opened_at = self.clock()
            self.counts["opened"] += 1
        if new == CLOSED:
            self._failures = 0
        return (old, new) if old != new else None

    def _announce(self, change):
        if change is None:
            return
        old, new = change
        (log.warning if new == OPEN else log.info)(
            "circuit breaker for %s: %s -> %s%s", self.name, old, new,
            f" (last failure: {self.last_failure})" if new == OPEN else "")
        if self.on_change is not None:
            try:
                self.on_change(self.name, old, new)
            except Exception:  # a listener must not break the call path
                log.exception("breaker listener failed")

    # -- calls -----------------------------------------------------------------------------

    def admit(self):
        """Let one call through or raise ``BreakerOpen``; hand the ticket to ``record``."""
        change = None
        with self._lock:
            now = self.clock()
            if self._state == OPEN:
                remaining = self.reset_timeout - (now - self._opened_at)
                if remaining > 0:
                    self.counts["rejected"] += 1
                    raise self._refusal(remaining)
                change = self._move(HALF_OPEN)
                self._probe_since = None
            if self._state == HALF_OPEN:
                # a probe that never reported (its caller died) must not wedge the breaker
                stuck = (self._probe_since is not None
                         and now - self._probe_since > self.reset_timeout)
                if self._probe_since is not None and not stuck:
                    self.counts["rejected"] += 1
                    raise self._refusal(1.0, probing=True)
                self._probe_since = now
                ticket = _Ticket(True, now)
            else:
                ticket = _Ticket(False, now)
            self.counts["calls"] += 1
        self._announce(change)
        return ticket

    def _refusal(self, retry_after, probing=False):
        why = "a probe call is in flight" if probing else "recent calls failed"
        return BreakerOpen(f"{self.name} is unavailable: its circuit breaker is open ({why})",
                           {"service": self.name, "retry_after": max(1, math.ceil(retry_after)),
                            "reason": "circuit_open"})

    def record(self, ticket, failed, error=None):
        """Report how the admitted call went: ``failed`` True/False, or None (no verdict)."""
        change = None
        with self._lock:
            if failed:
                self.counts["failures"] += 1
                self.last_failure = error
            if ticket.probe:
                self._probe_since = None
                if failed is None:
                    pass  # the probe slot is free again; the next call probes
                elif failed:
                    change = self._move(OPEN)
                else:
                    change = self._move(CLOSED)
            elif self._state == CLOSED and failed is not None:
                if failed:
                    self._failures += 1
                    if self._failures >= self.fail_max:
                        change = self._move(OPEN)
                else:
                    self._failures = 0
            # a call admitted before the breaker opened changes nothing when it ends late
        self._announce(change)

    def reset(self):
        with self._lock:
            change = self._move(CLOSED)
            self._probe_since = None
        self._announce(change)

    def snapshot(self):
        with self._lock:
            state = self._visible_state()
            retry_in = None
            if self._state == OPEN:
                retry_in = max(0.0, self.reset_timeout - (self.clock() - self._opened_at))
            since = datetime.fromtimestamp(self._changed_at, UTC).isoformat(timespec="seconds")
            return {"state": state, "consecutive_failures": self._failures,
                    "fail_max": self.fail_max, "reset_timeout": self.reset_timeout,
                    "retry_in": round(retry_in, 1) if retry_in is not None else None,
                    "since": since, "age_s": round(time.time() - self._changed_at, 1),
                    "last_failure": self.last_failure, **self.counts}


class Breakers:
    """A breaker per service, made on first use, all with the same settings."""

    def __init__(self, fail_max=DEFAULT_FAIL_MAX, reset_timeout=DEFAULT_RESET_TIMEOUT,
                 clock=time.monotonic, on_change=None):
        self.options = {"fail_max": fail_max, "reset_timeout": reset_timeout,
                        "clock": clock, "on_change": on_change}
        CircuitBreaker("check", fail_max, reset_timeout)  # validate now, not at first call
        self._breakers = {}
        self._lock = threading.Lock()
        self._tickets = threading.local()

    @classmethod
    def from_config(cls, config=None, **options):
        """Read BREAKER_FAIL_MAX and BREAKER_RESET_TIMEOUT (seconds) from config or env."""
        try:
            return cls(fail_max=setting(config or {}, FAIL_MAX_KEY, DEFAULT_FAIL_MAX, int),
                       reset_timeout=setting(config or {}, RESET_TIMEOUT_KEY,
                                             DEFAULT_RESET_TIMEOUT, float), **options)
        except ValueError as exc:
            raise ConfigError(f"{FAIL_MAX_KEY}/{RESET_TIMEOUT_KEY}: {exc}") from None

    def get(self, service):
        breaker = self._breakers.get(service)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(service)
                if breaker is None:
                    breaker = self._breakers[service] = CircuitBreaker(service, **self.options)
        return breaker

    # -- gateway.rpc.RpcPool hooks (same thread for before and after) -----------------------

    def before_rpc(self, service):
        ticket = self.get(service).admit()
        pending = self._pending()
        pending[service] = ticket

    def after_rpc(self, service, outcome, seconds=None):
        ticket = self._pending().pop(service, None)
        if ticket is None:
            return  # admitted elsewhere, or refused before the call
        failed = outcome in FAILURE_OUTCOMES
        self.get(service).record(ticket, failed, outcome if failed else None)

    def _pending(self):
        pending = getattr(self._tickets, "pending", None)
        if pending is None:
            pending = self._tickets.pending = {}
        return pending

    # -- for the dashboard and metrics ------------------------------------------------------

    def states(self):
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.state for b in breakers}

    def snapshot(self):
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.snapshot() for b in breakers}
