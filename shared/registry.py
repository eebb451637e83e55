"""Service registry: Consul client, and the provider that keeps each instance registered.

``ConsulRegistry`` is the ``ServiceRegistry`` on a Consul agent (py-consul); it works in plain
threads (the gateway) and in greenthreads (the services). ``Registration`` is the nameko
dependency every ``ServiceBase`` carries: on start it registers the instance with an HTTP check
on ``/health/ready`` and keeps it registered (retrying with backoff while Consul is unreachable,
re-registering when Consul forgets it); on stop it deregisters *before* in-flight work drains,
through the ``deregister_first`` entrypoint (nameko stops entrypoints before it waits for
workers, and dependencies only after). ``CONSUL_HTTP_ADDR`` empty disables registration.
"""

import abc
import logging
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import consul
import requests
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError

from shared import config as cfg

with warnings.catch_warnings():
    # eventlet announces its deprecation on import; the gateway imports this module for the
    # client only and never runs eventlet, so the notice would be noise in its log
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from nameko.extensions import DependencyProvider, Entrypoint

__all__ = [
    "CONSUL_HTTP_ADDR_KEY",
    "SERVICE_ADDRESS_KEY",
    "CHECK_INTERVAL_KEY",
    "CHECK_TIMEOUT_KEY",
    "DEREGISTER_AFTER_KEY",
    "TAGS_KEY",
    "RESYNC_INTERVAL_KEY",
    "RETRY_MAX_KEY",
    "REQUEST_TIMEOUT_KEY",
    "DEFAULT_REQUEST_TIMEOUT",
    "ServiceRegistry",
    "ConsulRegistry",
    "Instance",
    "InstanceHealth",
    "CheckSpec",
    "RegistryError",
    "RegistryUnavailable",
    "Registration",
    "deregister_first",
    "Backoff",
    "parse_address",
    "parse_duration",
    "format_duration",
    "worst_status",
]

log = logging.getLogger(__name__)

CONSUL_HTTP_ADDR_KEY = "CONSUL_HTTP_ADDR"
SERVICE_ADDRESS_KEY = "SERVICE_ADDRESS"
CHECK_INTERVAL_KEY = "CONSUL_CHECK_INTERVAL"
CHECK_TIMEOUT_KEY = "CONSUL_CHECK_TIMEOUT"
DEREGISTER_AFTER_KEY = "CONSUL_DEREGISTER_AFTER"
TAGS_KEY = "CONSUL_SERVICE_TAGS"
RESYNC_INTERVAL_KEY = "CONSUL_RESYNC_INTERVAL"
RETRY_MAX_KEY = "CONSUL_RETRY_MAX"
REQUEST_TIMEOUT_KEY = "CONSUL_TIMEOUT"

DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_CHECK_TIMEOUT = 3.0
DEFAULT_DEREGISTER_AFTER = 60.0
CONSUL_MIN_DEREGISTER_AFTER = 60.0  # Consul raises anything lower to this
DEFAULT_RESYNC_INTERVAL = 5.0
DEFAULT_RETRY_MAX = 30.0
DEFAULT_REQUEST_TIMEOUT = 3.0
HEALTH_PATH = "/health/ready"
STATUSES = ("passing", "warning", "critical")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


class RegistryError(Exception):
    """The registry refused a request (a bad registration, an unknown id...)."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or failed to answer: worth retrying later."""


def parse_duration(value):
    """Seconds in a Go duration ("10s", "1m30s", "250ms") or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (try '10s', '1m', '500ms')") \
                    from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def format_duration(seconds):
    """The Go duration Consul expects for ``seconds``: whole seconds, else milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def parse_address(address):
    """``(scheme, host, port)`` from CONSUL_HTTP_ADDR: "host:port", "http(s)://host[:port]"."""
    text = str(address or "").strip()
    if not text:
        raise ValueError("empty Consul address")
    split = urlsplit(text if "//" in text else f"//{text}")
    scheme = split.scheme or "http"
    if scheme not in ("http", "https") or not split.hostname or split.path not in ("", "/"):
        raise ValueError(f"not a Consul address: {address!r} (expected host:port or "
                         "http://host:port)")
    try:
        port = split.port or (443 if scheme == "https" else 8500)
    except ValueError:
        raise ValueError(f"not a Consul address: {address!r} (bad port)") from None
    return scheme, split.hostname, port


def worst_status(statuses):
    """Consul's aggregate: critical beats warning beats passing; no checks means passing."""
    worst = "passing"
    for status in statuses:
        if status not in STATUSES:
            return "critical"  # maintenance and anything unknown take the instance out
        if STATUSES.index(status) > STATUSES.index(worst):
            worst = status
    return worst


@dataclass(frozen=True)
class Instance:
    """One registered instance of a service, with its aggregated check status."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple = ()
    meta: dict = field(default_factory=dict, hash=False)
    status: str = "critical"
    output: str = ""

    @property
    def passing(self):
        return self.status == "passing"

    def to_dict(self):
        return {"id": self.id, "name": self.name, "address": self.address, "port": self.port,
                "tags": list(self.tags), "meta": dict(self.meta), "status": self.status,
                "output": self.output}

    @classmethod
    def from_health_entry(cls, entry):
        """Build from one element of Consul's ``/v1/health/service/:name`` answer."""
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        checks = entry.get("Checks") or []
        own = [c for c in checks if c.get("ServiceID") == service.get("ID")]
        return cls(
            id=service.get("ID", ""),
            name=service.get("Service", ""),
            # an empty service address means "the node's address" in Consul
            address=service.get("Address") or node.get("Address", ""),
            port=int(service.get("Port") or 0),
            tags=tuple(service.get("Tags") or ()),
            meta=dict(service.get("Meta") or {}),
            status=worst_status(c.get("Status") for c in checks),
            output="\n".join(c.get("Output", "") for c in own if c.get("Output")),
        )


@dataclass(frozen=True)
class InstanceHealth:
    """What the local agent knows of one instance's checks."""

    status: str
    output: str
    checks: tuple = ()


@dataclass(frozen=True)
class CheckSpec:
    """An HTTP check Consul runs against the instance."""

    http: str
    interval: float = DEFAULT_CHECK_INTERVAL
    timeout: float = DEFAULT_CHECK_TIMEOUT
    deregister_after: float | None = DEFAULT_DEREGISTER_AFTER
    # the check's status until it first runs (None: Consul's default, critical)
    status: str | None = None

    def to_consul(self):
        deregister = (format_duration(self.deregister_after)
                      if self.deregister_after is not None else None)
        check = consul.Check.http(self.http, format_duration(self.interval),
                                  timeout=format_duration(self.timeout), deregister=deregister)
        if self.status:
            check["Status"] = self.status
        return check


class ServiceRegistry(abc.ABC):
    """Where instances announce themselves and find each other."""

    @abc.abstractmethod
    def register(self, instance, check=None):
        """Register (or re-register) ``instance``; ``check`` decides its health."""

    @abc.abstractmethod
    def deregister(self, instance_id):
        """Remove an instance; False when the registry did not know it."""

    @abc.abstractmethod
    def instances(self, name, index=None, wait=None, passing=False):
        """``(index, [Instance])`` of a service; with ``index``, block until it changes."""

    @abc.abstractmethod
    def services(self, index=None, wait=None):
        """``(index, {name: [tags]})`` of every service the registry knows."""

    @abc.abstractmethod
    def health(self, instance_id):
        """The ``InstanceHealth`` of an instance registered here, or None if unknown."""

    def discover(self, name):
        """The instances of ``name`` whose checks all pass."""
        return self.instances(name, passing=True)[1]

    def watch(self, name, wait=30.0, stop=None, passing=False):
        """Yield the instances of ``name`` now and then after every change (blocking queries).

        Stops when ``stop`` (a threading.Event) is set; errors reach the caller, who decides
        how long to back off.
        """
        index, last = 0, None
        while stop is None or not stop.is_set():
            new_index, current = self.instances(name, index=index or None, wait=wait,
                                                passing=passing)
            # Consul's advice: an index that goes backwards (agent restarted) means start over
            index = 0 if new_index < index else new_index
            if current != last:
                last = current
                yield current


class ConsulRegistry(ServiceRegistry):
    """``ServiceRegistry`` on a Consul agent's HTTP API, through py-consul.

    One instance per thread: py-consul shares a requests session inside a client.
    """

    def __init__(self, address, timeout=DEFAULT_REQUEST_TIMEOUT, token=None):
        self.scheme, self.host, self.port = parse_address(address)
        self.address = f"{self.scheme}://{self.host}:{self.port}"
        self.timeout = timeout
        self.client = consul.Consul(host=self.host, port=self.port, scheme=self.scheme,
                                    token=token, connections_timeout=timeout)

    def __repr__(self):
        return f"ConsulRegistry({self.address!r})"

    def _call(self, what, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"Consul at {self.address} unreachable ({what}): "
                                      f"{_first_line(exc)}") from exc
        except (consul.ConsulException, ValueError) as exc:
            if isinstance(exc, ClientError | BadRequest | ACLDisabled | ACLPermissionDenied):
                raise RegistryError(f"Consul refused {what}: {_first_line(exc)}") from exc
            raise RegistryUnavailable(f"Consul at {self.address} failed ({what}): "
                                      f"{_first_line(exc)}") from exc

    def register(self, instance, check=None):
        self._call(f"register {instance.id}", self.client.agent.service.register,
                   instance.name, service_id=instance.id, address=instance.address,
                   port=instance.port, tags=list(instance.tags), meta=dict(instance.meta),
                   check=check.to_consul() if check else None)

    def deregister(self, instance_id):
        # py-consul answers False for a 404: Consul did not know the id
        return bool(self._call(f"deregister {instance_id}",
                               self.client.agent.service.deregister, instance_id))

    def instances(self, name, index=None, wait=None, passing=False):
        wait_text = format_duration(wait) if isinstance(wait, int | float) else wait
        index, entries = self._call(f"health of {name}", self.client.health.service, name,
                                    index=index or None, wait=wait_text, passing=passing)
        return int(index), [Instance.from_health_entry(e) for e in entries or ()]

    def services(self, index=None, wait=None):
        wait_text = format_duration(wait) if isinstance(wait, int | float) else wait
        index, names = self._call("catalog", self.client.catalog.services,
                                  index=index or None, wait=wait_text)
        return int(index), dict(names or {})

    def health(self, instance_id):
        checks = self._call("agent checks", self.client.agent.checks) or {}
        own = [c for c in checks.values() if c.get("ServiceID") == instance_id]
        if not own:
            return None
        return InstanceHealth(
            status=worst_status(c.get("Status") for c in own),
            output="\n".join(c.get("Output", "") for c in own if c.get("Output")),
            checks=tuple({"id": c.get("CheckID"), "status": c.get("Status"),
                          "output": c.get("Output", "")} for c in own))


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class Backoff:
    """Exponential backoff with jitter: each delay is in [½, 1] of min(maximum, initial·2ⁿ)."""

    def __init__(self, initial=0.5, maximum=DEFAULT_RETRY_MAX, rng=random.random):
        self.initial, self.maximum, self.rng = initial, max(initial, maximum), rng
        self.attempt = 0

    def next(self):
        ceiling = min(self.maximum, self.initial * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling * (0.5 + self.rng() / 2)

    def reset(self):
        self.attempt = 0


def _duration_setting(config, key, default):
    value = cfg.setting(config, key, default)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise cfg.ConfigError(f"{key}: {exc}") from None


def _tags_setting(config):
    value = cfg.setting(config, TAGS_KEY, "")
    if isinstance(value, list | tuple):
        return [str(t).strip() for t in value if str(t).strip()]
    return [t.strip() for t in str(value or "").split(",") if t.strip()]


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
        import eventlet.event
        import eventlet.semaphore

        config = self.container.config
        self.address = str(cfg.setting(config, CONSUL_HTTP_ADDR_KEY, "") or "").strip()
        self._wake = eventlet.event.Event()
        self._lock = eventlet.semaphore.Semaphore()
        self._thread = None
        self._attach_to_health(advisory=bool(self.address))
        if not self.address:
            self.state = "disabled"
            log.info("%s is empty: %s runs without a service registry (not registered with "
                     "Consul)", CONSUL_HTTP_ADDR_KEY, self.container.service_name)
            return
        self.check_interval = _duration_setting(config, CHECK_INTERVAL_KEY,
                                                DEFAULT_CHECK_INTERVAL)
        self.check_timeout = _duration_setting(config, CHECK_TIMEOUT_KEY, DEFAULT_CHECK_TIMEOUT)
        self.deregister_after = _duration_setting(config, DEREGISTER_AFTER_KEY,
                                                  DEFAULT_DEREGISTER_AFTER)
        self.resync_interval = _duration_setting(config, RESYNC_INTERVAL_KEY,
                                                 DEFAULT_RESYNC_INTERVAL)
        self.retry_max = _duration_setting(config, RETRY_MAX_KEY, DEFAULT_RETRY_MAX)
        request_timeout = _duration_setting(config, REQUEST_TIMEOUT_KEY, DEFAULT_REQUEST_TIMEOUT)
        if self.deregister_after < CONSUL_MIN_DEREGISTER_AFTER:
            log.warning("%s=%s is below Consul's minimum of 1m; a real agent raises it to 1m",
                        DEREGISTER_AFTER_KEY, format_duration(self.deregister_after))
        try:
            self.registry = ConsulRegistry(self.address, timeout=request_timeout)
        except ValueError as exc:
            raise cfg.ConfigError(f"{CONSUL_HTTP_ADDR_KEY}: {exc}") from None
        self.tags = ["plinth", *_tags_setting(config), *self.extra_tags]
        self.state = "starting"

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
        from nameko.web.server import WebServer

        for extension in self.container.subextensions:
            if isinstance(extension, WebServer):
                return extension
        return None

    def _bound_address(self, server):
        """(host, port) the web server listens on, once it does (the port may be 0 in config)."""
        import eventlet

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
        from shared.health import VERSION

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

    def _attach_to_health(self, advisory):
        from shared.health import Check, Health

        for dependency in self.container.dependencies:
            if isinstance(dependency, Health):
                dependency.extras.append(self._describe)
                if advisory:
                    dependency.soft_checks.append(
                        lambda: Check("registry", self._healthy(), 0.0, self._summary()))

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

    def stop(self):
        self._withdraw()

    def kill(self):
        self._withdraw(timeout=1.0)

    def _withdraw(self, timeout=None):
        from shared.health import Health

        for dependency in self.container.dependencies:
            if isinstance(dependency, Health):
                dependency.begin_stopping()
            if isinstance(dependency, Registration):
                dependency.withdraw(timeout=timeout)


deregister_first = DeregisterFirst.decorator
