"""The provider that keeps each service instance registered with Consul while it runs.

``Registration`` is the nameko dependency every ``ServiceBase`` carries: on start it registers
the instance with an HTTP check on ``/health/ready`` and keeps it registered (retrying with
backoff while Consul is unreachable, re-registering when Consul forgets it); on stop it
deregisters *before* in-flight work drains, through the ``deregister_first`` entrypoint (nameko
stops entrypoints before it waits for workers, and dependencies only after).
``CONSUL_HTTP_ADDR`` empty disables registration.
"""

import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import eventlet
import eventlet.event
import eventlet.semaphore
from nameko.extensions import DependencyProvider, Entrypoint
from nameko.web.server import WebServer

from shared import config as cfg
from shared.backoff import Backoff
from shared.health import VERSION, Check
from shared.hub import Hub
from shared.registry import (
    CHECK_INTERVAL_KEY,
    CHECK_TIMEOUT_KEY,
    CONSUL_HTTP_ADDR_KEY,
    CONSUL_MIN_DEREGISTER_AFTER,
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_CHECK_TIMEOUT,
    DEFAULT_DEREGISTER_AFTER,
    DEFAULT_REQUEST_TIMEOUT,
    DEREGISTER_AFTER_KEY,
    REQUEST_TIMEOUT_KEY,
    CheckSpec,
    ConsulRegistry,
    Instance,
    RegistryError,
    format_duration,
    parse_duration,
)

__all__ = ["Registration", "RegistrationStatus", "deregister_first", "SERVICE_ADDRESS_KEY",
           "TAGS_KEY", "RESYNC_INTERVAL_KEY", "RETRY_MAX_KEY"]

log = logging.getLogger(__name__)

SERVICE_ADDRESS_KEY = "SERVICE_ADDRESS"
TAGS_KEY = "CONSUL_SERVICE_TAGS"
RESYNC_INTERVAL_KEY = "CONSUL_RESYNC_INTERVAL"
RETRY_MAX_KEY = "CONSUL_RETRY_MAX"
DEFAULT_RESYNC_INTERVAL = 5.0
DEFAULT_RETRY_MAX = 30.0
HEALTH_PATH = "/health/ready"


def _duration_setting(config, key, default):
    value = cfg.setting(config, key, default)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise cfg.ConfigError(f"{key}: {exc}") from None


def _tags_setting(config):
    return cfg.list_setting(config, TAGS_KEY, separators=",")


def _reachable_ip(consul_host):
    """The address by which the Consul agent can reach this host (the route towards it)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((consul_host, 9))  # UDP: nothing is sent, only a route is chosen
            return probe.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


@dataclass(frozen=True)
class RegistrationStatus:
    """What a worker sees of the registration (``self.registration``)."""

    enabled: bool
    state: str
    instance_id: str | None
    registry: str | None
    check_status: str | None
    last_error: str | None


class Registration(DependencyProvider):
    """Keeps this service instance registered with Consul while it runs.

    States: ``disabled`` (no CONSUL_HTTP_ADDR), ``starting``, ``registered``, ``retrying``
    (Consul unreachable: the service keeps running, registration retries with backoff),
    ``deregistered`` (stopping). Shows in ``/health`` as the advisory check ``registry``.
    """

    hub = Hub()

    def __init__(self, tags=()):
        self.extra_tags = tuple(tags)
        self.state = "disabled"
        self.registry = None
        self.instance = None
        self.check = None
        self.check_status = None
        self.last_error = None
        self.registered_at = None
        self._stopping = False
        self._wake = self._lock = None  # eventlet primitives, made in setup()
        self._may_be_registered = False

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self):
        config = self.container.config
        self.address = str(cfg.setting(config, CONSUL_HTTP_ADDR_KEY, "") or "").strip()
        self._wake = eventlet.event.Event()
        self._lock = eventlet.semaphore.Semaphore()
        self._thread = None
        self.hub.add_info(self._describe)
        self.hub.add_stopping(lambda timeout: self.withdraw(timeout=timeout))
        if not self.address:
            self.state = "disabled"
            log.info("%s is empty: %s runs without a service registry (not registered with "
                     "Consul)", CONSUL_HTTP_ADDR_KEY, self.container.service_name)
            return
        self.hub.add_advisory(lambda: Check("registry", self._healthy(), 0.0, self._summary()))
        self._read_timings(config)
        try:
            self.registry = ConsulRegistry(self.address, timeout=self.request_timeout)
        except ValueError as exc:
            raise cfg.ConfigError(f"{CONSUL_HTTP_ADDR_KEY}: {exc}") from None
        self.tags = ["plinth", *_tags_setting(config), *self.extra_tags]
        self.state = "starting"

    def _read_timings(self, config):
        for name, key, default in (
                ("check_interval", CHECK_INTERVAL_KEY, DEFAULT_CHECK_INTERVAL),
                ("check_timeout", CHECK_TIMEOUT_KEY, DEFAULT_CHECK_TIMEOUT),
                ("deregister_after", DEREGISTER_AFTER_KEY, DEFAULT_DEREGISTER_AFTER),
                ("resync_interval", RESYNC_INTERVAL_KEY, DEFAULT_RESYNC_INTERVAL),
                ("retry_max", RETRY_MAX_KEY, DEFAULT_RETRY_MAX),
                ("request_timeout", REQUEST_TIMEOUT_KEY, DEFAULT_REQUEST_TIMEOUT)):
            setattr(self, name, _duration_setting(config, key, default))
        if self.deregister_after < CONSUL_MIN_DEREGISTER_AFTER:
            log.warning("%s=%s is below Consul's minimum of 1m; a real agent raises it to 1m",
                        DEREGISTER_AFTER_KEY, format_duration(self.deregister_after))

    def start(self):
        if self.registry is not None:
            self._thread = self.container.spawn_managed_thread(self._keep_registered,
                                                               identifier="registration")

    def stop(self):
        self.withdraw()

    def kill(self):
        self.withdraw(timeout=1.0)

    def get_dependency(self, worker_ctx):
        return RegistrationStatus(enabled=self.registry is not None, state=self.state,
                                  instance_id=self.instance.id if self.instance else None,
                                  registry=self.registry.address if self.registry else None,
                                  check_status=self.check_status, last_error=self.last_error)

    # -- what registers -------------------------------------------------------------------

    def _web_server(self):
        for extension in self.container.subextensions:
            if isinstance(extension, WebServer):
                return extension
        return None

    def _bound_address(self, server):
        """(host, port) the web server listens on, once it does (the port may be 0 in config)."""
        host, port = server.bind_addr
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._stopping:
            sock = getattr(server, "_sock", None)
            if sock is not None:
                return host, sock.getsockname()[1]
            eventlet.sleep(0.01)
        return host, port

    def build_instance(self):
        """The Instance and CheckSpec this process registers as."""
        server = self._web_server()
        if server is None:
            raise cfg.ConfigError("no web server: a registered service needs its health routes")
        host, port = self._bound_address(server)
        address = str(cfg.setting(self.container.config, SERVICE_ADDRESS_KEY, "") or "").strip()
        if not address:
            address = host if host not in ("", "0.0.0.0", "::") else _reachable_ip(
                self.registry.host)
        name = self.container.service_name
        hostname = socket.gethostname()
        instance = Instance(
            id=f"{name}-{hostname}-{port}", name=name, address=address, port=port,
            tags=tuple(self.tags),
            meta={"version": VERSION, "pid": str(os.getpid()), "host": hostname,
                  "started_at": datetime.now(UTC).isoformat(timespec="seconds")})
        url_host = f"[{address}]" if ":" in address else address
        check = CheckSpec(http=f"http://{url_host}:{port}{HEALTH_PATH}",
                          interval=self.check_interval, timeout=self.check_timeout,
                          deregister_after=self.deregister_after)
        return instance, check

    # -- the loop -------------------------------------------------------------------------

    def _keep_registered(self):
        """Register, then verify every resync interval; back off while Consul is away."""
        self.instance, self.check = self.build_instance()
        backoff = Backoff(initial=min(0.5, self.retry_max), maximum=self.retry_max)
        failing = False
        while not self._stopping:
            try:
                self._sync()
                if failing:
                    log.info("registry reachable again; %s registered", self.instance.id)
                failing = False
                backoff.reset()
                delay = self.resync_interval
            except RegistryError as exc:
                self.last_error = str(exc)
                self.state = "retrying"
                delay = backoff.next()
                if not failing:
                    log.warning("cannot register %s with Consul (%s); the service keeps "
                                "running and retries", self.instance.id, exc)
                failing = True
            except Exception:  # the loop must outlive a bug in one round
                log.exception("registration round failed")
                delay = backoff.next()
            self._wake.wait(delay)

    def _sync(self):
        with self._lock:
            if self._stopping:
                return
            health = self.registry.health(self.instance.id) \
                if self.state == "registered" else None
            if health is None:
                self._may_be_registered = True  # a timed-out request may still have landed
                # an instance Consul forgot (restarted) while it was passing comes back
                # passing, not critical until its next check: a registry restart must not
                # take healthy instances out of routing (the next check corrects it)
                check = replace(self.check, status="passing") \
                    if self.check_status == "passing" else self.check
                self.registry.register(self.instance, check)
                self.registered_at = time.time()
                log.info("registered %s with Consul at %s (check %s every %s)",
                         self.instance.id, self.registry.address, self.check.http,
                         format_duration(self.check.interval))
                self.check_status = None
            else:
                self.check_status = health.status
            self.state = "registered"
            self.last_error = None

    def withdraw(self, timeout=None):
        """Deregister now and stop re-registering (idempotent). Errors are logged only."""
        if self.registry is None or self._stopping or self._lock is None:
            self._stopping = True
            return
        self._stopping = True
        if not self._wake.ready():
            self._wake.send(None)
        wait = timeout if timeout is not None else self.registry.timeout + 1.0
        locked = self._lock.acquire(timeout=wait)
        try:
            if self._may_be_registered and self.instance is not None:
                self.registry.deregister(self.instance.id)
                self._may_be_registered = False
                log.info("deregistered %s from Consul", self.instance.id)
        except RegistryError as exc:
            log.warning("could not deregister %s (%s); Consul drops it once its check has "
                        "been critical for %s", self.instance.id, exc,
                        format_duration(self.deregister_after))
        finally:
            self.state = "deregistered"
            if locked:
                self._lock.release()

    # -- /health --------------------------------------------------------------------------

    def _healthy(self):
        return self.state in ("disabled", "starting", "registered", "deregistered")

    def _summary(self):
        if self.registry is None:
            return "disabled"
        ident = self.instance.id if self.instance else "?"
        if self.state == "retrying":
            return f"{ident} not registered: {self.last_error}"
        return f"{ident} {self.state} at {self.registry.address}"

    def _describe(self):
        return {"registry": {
            "enabled": self.registry is not None,
            "address": self.registry.address if self.registry else None,
            "state": self.state,
            "instance_id": self.instance.id if self.instance else None,
            "check_status": self.check_status,
            "last_error": self.last_error,
        }}


class DeregisterFirst(Entrypoint):
    """Deregisters the instance when nameko begins to stop the container.

    nameko stops entrypoints first, then waits for running workers, then stops dependencies;
    only an entrypoint can act before the drain, so this one never starts a worker and only
    withdraws the registration (and marks the instance as stopping, so readiness fails).
    """

    hub = Hub()

    def stop(self):
        self._withdraw()

    def kill(self):
        self._withdraw(timeout=1.0)

    def _withdraw(self, timeout=None):
        self.hub.stopping(timeout)


deregister_first = DeregisterFirst.decorator
