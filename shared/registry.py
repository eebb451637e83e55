"""Service registry client: instances, checks and the Consul agent's HTTP API (no nameko).

``ConsulRegistry`` is the ``ServiceRegistry`` on a Consul agent (py-consul); it works in plain
threads (the gateway) and in greenthreads (the services, through ``shared.registration``).
"""

import abc
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import consul
import requests
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError

__all__ = [
    "CONSUL_HTTP_ADDR_KEY",
    "CHECK_INTERVAL_KEY",
    "CHECK_TIMEOUT_KEY",
    "DEREGISTER_AFTER_KEY",
    "REQUEST_TIMEOUT_KEY",
    "DEFAULT_REQUEST_TIMEOUT",
    "ServiceRegistry",
    "ConsulRegistry",
    "Instance",
    "InstanceHealth",
    "CheckSpec",
    "RegistryError",
    "RegistryUnavailable",
    "parse_address",
    "parse_duration",
    "format_duration",
    "worst_status",
]

CONSUL_HTTP_ADDR_KEY = "CONSUL_HTTP_ADDR"
CHECK_INTERVAL_KEY = "CONSUL_CHECK_INTERVAL"
CHECK_TIMEOUT_KEY = "CONSUL_CHECK_TIMEOUT"
DEREGISTER_AFTER_KEY = "CONSUL_DEREGISTER_AFTER"
REQUEST_TIMEOUT_KEY = "CONSUL_TIMEOUT"

DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_CHECK_TIMEOUT = 3.0
DEFAULT_DEREGISTER_AFTER = 60.0
CONSUL_MIN_DEREGISTER_AFTER = 60.0  # Consul raises anything lower to this
DEFAULT_REQUEST_TIMEOUT = 3.0
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
