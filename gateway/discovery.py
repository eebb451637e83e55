"""The gateway's live view of every service's instances and their health, from Consul.

One ``ServiceView`` per gateway process (start it after the fork). It keeps, per service, every
registered instance with its check status, output and the time of its last status change,
updated by Consul blocking queries on ``/v1/health/service/<name>`` (one long-poll thread per
watched service: a blocking query watches one service, so this is the fewest that sees every
change at once), and discovers services from ``/v1/catalog/services``. Plain threads, no
eventlet, no Flask: the request path only reads the cache.

``has_passing(service)`` answers True/False from the cache, or None when the view cannot say
(registry disabled, unreachable, or not answered yet): the gateway then routes blindly, as it
would without Consul. ``require(service)`` raises ``NoPassingInstance`` (503 with
``retry_after``) only on a definite False. ``snapshot()`` is the dashboard's data.

With Consul gone the watchers reconnect with backoff and start over from index 0 (Consul's
index may have moved backwards); the last known instances stay in the snapshot, marked stale.
"""

import logging
import os
import threading
import time
from datetime import UTC, datetime

from shared.backoff import Backoff
from shared.config import setting
from shared.errors import Unavailable
from shared.registry import (
    CONSUL_HTTP_ADDR_KEY,
    DEFAULT_REQUEST_TIMEOUT,
    REQUEST_TIMEOUT_KEY,
    ConsulRegistry,
    RegistryError,
    parse_duration,
)

__all__ = ["ServiceView", "NoPassingInstance", "WATCH_WAIT_KEY", "RETRY_AFTER_KEY"]

log = logging.getLogger("gateway.discovery")

WATCH_WAIT_KEY = "CONSUL_WATCH_WAIT"
RETRY_AFTER_KEY = "RETRY_AFTER_NO_INSTANCE"
REJOIN_GRACE_KEY = "CONSUL_REJOIN_GRACE"
DEFAULT_WAIT = 30.0
DEFAULT_RETRY_AFTER = 5
DEFAULT_BACKOFF_MAX = 5.0
# seconds after the registry comes back during which "no passing instance" is not believed
# (instances need time to register again: their retry backoff grows while it is away); the
# gateway sets it (CONSUL_REJOIN_GRACE), a bare view has none
DEFAULT_REJOIN_GRACE = 0.0
CONSUL_SERVICE = "consul"  # the agent lists itself in the catalog


class NoPassingInstance(Unavailable):
    """Consul knows no instance of the service whose checks pass: 503 at once."""


def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class _Watched:
    """What the view knows of one service (guarded by the view's lock)."""

    def __init__(self, name, configured):
        self.name = name
        self.configured = configured
        self.instances = {}  # id -> dict(instance fields, since)
        self.index = 0
        self.answered = False  # Consul answered at least once since the last error
        self.error = None
        self.updated_at = None
        self.stop = threading.Event()
        self.thread = None


class ServiceView:
    """A cached, live view of the registry, for routing decisions and the dashboard."""

    def __init__(self, registry_factory=None, services=(), discover=True, wait=DEFAULT_WAIT,
                 retry_after=DEFAULT_RETRY_AFTER, backoff_max=DEFAULT_BACKOFF_MAX,
                 address=None, clock=time.time, rejoin_grace=DEFAULT_REJOIN_GRACE):
        self.registry_factory = registry_factory
        self.enabled = registry_factory is not None
        self.address = address
        self.discover = discover
        self.wait = float(wait)
        self.retry_after = int(retry_after)
        self.backoff_max = float(backoff_max)
        self.rejoin_grace = float(rejoin_grace)
        self.clock = clock
        self._initial = tuple(services)
        self._lock = threading.RLock()
        self._services = {}
        self._stop = threading.Event()
        self._catalog_thread = None
        self._pid = None
        self._last_ok = None
        self._last_error_at = None
        self._last_error = None
        self._back_at = None  # when the registry became reachable again after an error

    @classmethod
    def from_config(cls, config=None, services=(), **options):
        """A view on CONSUL_HTTP_ADDR (config, else environment); disabled when it is empty."""
        config = config or {}
        address = str(setting(config, CONSUL_HTTP_ADDR_KEY, "") or "").strip()
        options.setdefault("wait", parse_duration(setting(config, WATCH_WAIT_KEY, DEFAULT_WAIT)))
        options.setdefault("retry_after",
                           int(setting(config, RETRY_AFTER_KEY, DEFAULT_RETRY_AFTER, float)))
        options.setdefault("rejoin_grace", parse_duration(
            setting(config, REJOIN_GRACE_KEY, DEFAULT_REJOIN_GRACE)))
        if not address:
            log.info("%s is empty: the gateway routes without a service registry",
                     CONSUL_HTTP_ADDR_KEY)
            return cls(None, services, **options)
        ConsulRegistry(address)  # a malformed address fails here, at start, not in a thread
        timeout = parse_duration(setting(config, REQUEST_TIMEOUT_KEY, DEFAULT_REQUEST_TIMEOUT))
        return cls(lambda: ConsulRegistry(address, timeout=timeout), services, address=address,
                   **options)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Start watching (idempotent; in a forked child it starts the child's own threads)."""
        if not self.enabled or self._pid == os.getpid():
            return self
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._lock = threading.RLock()  # a lock inherited through fork may be held
        self._services = {}
        for name in self._initial:
            self.watch(name)
        if self.discover:
            self._catalog_thread = threading.Thread(
                target=self._catalog_loop, daemon=True, name="consul-catalog-watch")
            self._catalog_thread.start()
        return self

    def stop(self, timeout=1.0):
        """Stop the watchers. A thread inside a long poll ends when it returns (daemon)."""
        self._stop.set()
        with self._lock:
            watched = list(self._services.values())
            for item in watched:
                item.stop.set()
        deadline = time.monotonic() + timeout
        for thread in [w.thread for w in watched] + [self._catalog_thread]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._pid = None

    def watch(self, service, configured=True):
        """Keep ``service`` in view (no-op if it already is)."""
        if not self.enabled:
            return
        with self._lock:
            item = self._services.get(service)
            if item is not None:
                item.configured = item.configured or configured
                return
            item = self._services[service] = _Watched(service, configured)
            if self._pid != os.getpid() or self._stop.is_set():
                return  # not started: start() begins the watch
            item.thread = threading.Thread(target=self._watch_loop, args=(item,), daemon=True,
                                           name=f"consul-watch-{service}")
        item.thread.start()

    # -- routing ---------------------------------------------------------------------------

    def has_passing(self, service):
        """True/False from Consul; None if it cannot be known (then route blindly)."""
        if not self.enabled:
            return None
        with self._lock:
            item = self._services.get(service)
            if item is not None:
                # any watcher finding Consul unreachable voids every verdict, not just its own
                if not item.answered or item.error is not None or not self._reachable():
                    return None
                passing = any(i["status"] == "passing" for i in item.instances.values())
                if not passing and self._rejoining():
                    return None  # a registry that just came back may not know them yet
                return passing
        self.watch(service, configured=False)  # a route to a service not seen yet
        return None

    def require(self, service):
        """Raise ``NoPassingInstance`` when Consul says no instance of ``service`` passes."""
        if self.has_passing(service) is False:
            raise NoPassingInstance(
                f"{service} has no healthy instance right now; retry shortly",
                {"service": service, "retry_after": self.retry_after,
                 "reason": "no_passing_instance"})

    def passing(self, service):
        """The passing instances of ``service`` known now (dicts)."""
        with self._lock:
            item = self._services.get(service)
            values = list(item.instances.values()) if item else []
        return [dict(i) for i in values if i["status"] == "passing"]

    @property
    def registry_reachable(self):
        """Whether the last contact with Consul succeeded (None when disabled)."""
        if not self.enabled:
            return None
        with self._lock:
            return self._reachable()

    def _rejoining(self):
        return self._back_at is not None and self.clock() - self._back_at < self.rejoin_grace

    def _reachable(self):
        if self._last_ok is None:
            return False
        return self._last_error_at is None or self._last_ok >= self._last_error_at

    @property
    def last_error(self):
        with self._lock:
            return self._last_error

    # -- the watchers ----------------------------------------------------------------------

    def _watch_loop(self, item):
        registry = self.registry_factory()
        backoff = Backoff(initial=0.2, maximum=self.backoff_max)
        while not (self._stop.is_set() or item.stop.is_set()):
            index = item.index
            try:
                new_index, instances = registry.instances(item.name, index=index or None,
                                                          wait=self.wait)
            except RegistryError as exc:
                self._failed(item, exc)
            except Exception as exc:  # a watcher must outlive one bad answer
                log.exception("watching %s failed", item.name)
                self._failed(item, exc)
            else:
                backoff.reset()
                self._record(item, new_index, instances)
                continue
            if self._stop.wait(backoff.next()):
                break

    def _catalog_loop(self):
        registry = self.registry_factory()
        backoff = Backoff(initial=0.2, maximum=self.backoff_max)
        index = 0
        while not self._stop.is_set():
            try:
                new_index, names = registry.services(index=index or None, wait=self.wait)
            except Exception as exc:  # noqa: BLE001 - RegistryError or a bad answer: retry
                self._note_error(exc)
                index = 0
                if self._stop.wait(backoff.next()):
                    break
                continue
            backoff.reset()
            index = 0 if new_index < index else new_index
            self._note_ok()
            for name in names:
                if name != CONSUL_SERVICE:
                    self.watch(name, configured=False)
            with self._lock:
                gone = [w for n, w in self._services.items()
                        if n not in names and not w.configured]
                for item in gone:
                    item.stop.set()
                    del self._services[item.name]

    def _note_ok(self):
        with self._lock:
            if not self._reachable() and self._last_error_at is not None:
                self._back_at = self.clock()
            self._last_ok = self.clock()

    def _note_error(self, exc):
        with self._lock:
            was_reachable = self._reachable()
            self._last_error_at = self.clock()
            self._last_error = str(exc) or type(exc).__name__
        if was_reachable:
            log.warning("service registry unreachable, routing blindly until it is back: %s",
                        exc)

    def _failed(self, item, exc):
        with self._lock:
            item.error = str(exc) or type(exc).__name__
            item.answered = False
            item.index = 0  # start over: a restarted agent's index may be lower
        self._note_error(exc)

    def _record(self, item, index, instances):
        now = self.clock()
        with self._lock:
            if item.stop.is_set():
                return
            was_reachable = self._reachable()
            if not was_reachable and self._last_error_at is not None:
                self._back_at = now
            # Consul's advice: an index that goes backwards means start over from 0
            item.index = 0 if index < item.index else index
            previous = item.instances
            current = {}
            for instance in instances:
                old = previous.get(instance.id)
                since = old["since"] if old and old["status"] == instance.status else now
                current[instance.id] = {
                    "id": instance.id, "address": instance.address, "port": instance.port,
                    "status": instance.status, "output": instance.output,
                    "tags": list(instance.tags), "meta": dict(instance.meta), "since": since}
            item.instances = current
            item.answered = True
            item.error = None
            item.updated_at = now
            self._last_ok = now
        if not was_reachable and self._last_error_at is not None:
            log.info("service registry reachable again")

    # -- the dashboard's data --------------------------------------------------------------

    def snapshot(self):
        """Everything the view knows, JSON-serialisable."""
        now = self.clock()
        with self._lock:
            reachable = self._reachable() if self.enabled else None
            registry = {
                "enabled": self.enabled,
                "address": self.address,
                "reachable": reachable,
                "degraded": bool(self.enabled and not reachable),
                "last_contact": _iso(self._last_ok),
                "last_error": self._last_error if self.enabled and not reachable else None,
            }
            services = {}
            for name, item in sorted(self._services.items()):
                instances = []
                for inst in sorted(item.instances.values(), key=lambda i: i["id"]):
                    instances.append({**inst, "since": _iso(inst["since"]),
                                      "age_s": round(now - inst["since"], 1),
                                      "version": inst["meta"].get("version")})
                passing = sum(1 for i in instances if i["status"] == "passing")
                known = item.answered and item.error is None
                services[name] = {
                    "has_passing": (passing > 0) if known else None,
                    "passing": passing,
                    "total": len(instances),
                    "stale": not known,
                    "error": item.error,
                    "updated_at": _iso(item.updated_at),
                    "instances": instances,
                }
        return {"registry": registry, "services": services}
