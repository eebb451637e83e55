"""Broker identities: one RabbitMQ user per process, allowed only what its code needs.

Every service and the gateway connect as their own user (``<prefix><name>``, prefix
``BROKER_USER_PREFIX``, default ``plinth-``). What each may do is derived from the code, never
listed a second time:

- the RPC methods a service calls: its ``ServiceRpc(..., calls=...)`` dependencies, its sagas'
  ``RpcAction``s and any other dependency with ``rpc_calls`` (authz's bootstrap);
- the RPC methods the gateway calls: the targets of its route table (the core routes and
  ``GATEWAY_ROUTES_DIR``) and ``gateway.app.SYSTEM_CALLS``;
- the events a process consumes: the service's event handlers, audit's trail consumer (every
  service's events) and ``gateway.app.SUBSCRIPTIONS``.

From those come RabbitMQ's configure / write / read regexes (its own queues: ``rpc-<svc>``,
its reply queues, its ``evt-…--<svc>.<method>`` handler queues, ``<svc>.*``: tasks, delay and
dead-letter queues, its events and queues exchanges; never the default exchange, through which a
message reaches any queue) and topic permissions: on ``nameko-rpc`` it may
publish only ``<service>.<method>`` of the calls it declares (and replies), and bind only its
own request and reply keys; on an events exchange only the owner publishes, consumers bind
only the event types they handle.

``python -m deploy.broker_users`` (``make broker-users``) creates or updates the users, their
permissions and the shared exchanges through the management API; ``--check`` reports drift
and exits 1; ``--show`` prints what would be set. Passwords come from
``<NAME>_BROKER_PASSWORD`` (``IDENTITY_BROKER_PASSWORD``, ``GATEWAY_BROKER_PASSWORD``, ...)
or the password in ``<NAME>_AMQP_URI``: given, a user's password is set (created or rotated);
absent, an existing user keeps its own.
"""

import argparse
import base64
import importlib
import inspect
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from shared.task_catalogue import KNOWN_TASKS

ROOT = Path(__file__).resolve().parents[1]
RPC_EXCHANGE = "nameko-rpc"
GATEWAY = "gateway"
PREFIX_KEY = "BROKER_USER_PREFIX"
DEFAULT_PREFIX = "plinth-"
API_KEY = "BROKER_API"  # http://user:password@host:15672 of an administrator
VHOST_KEY = "BROKER_VHOST"
DEFAULT_API = "http://guest:guest@127.0.0.1:15672"
# a nameko reply queue's routing key is a bare UUID; other clients' reply keys are queue names
REPLY_KEY = r"[0-9a-f-]+"
NOTHING = "^$"

__all__ = ["Identity", "derive", "service_names", "user_name", "password_key", "password_of",
           "apply",
           "drift", "ManagementApi", "main"]


@dataclass(frozen=True)
class Identity:
    """One process's broker user and what RabbitMQ lets it do."""

    name: str  # the service (or "gateway")
    user: str
    configure: str
    write: str
    read: str
    topics: dict = field(default_factory=dict)  # exchange -> {"write": re, "read": re}

    def permissions(self):
        return {"configure": self.configure, "write": self.write, "read": self.read}


def user_name(name, prefix=None):
    """The broker user of process ``name`` (``BROKER_USER_PREFIX`` + name)."""
    return (os.environ.get(PREFIX_KEY, DEFAULT_PREFIX) if prefix is None else prefix) + name


def password_key(name):
    return f"{name.upper()}_BROKER_PASSWORD"


def password_of(name, environ=None):
    """``name``'s broker password from the environment: ``<NAME>_BROKER_PASSWORD``, else the
    password in ``<NAME>_AMQP_URI`` (the URI the process itself is given), else None."""
    environ = os.environ if environ is None else environ
    if environ.get(password_key(name)):
        return environ[password_key(name)]
    uri = environ.get(f"{name.upper()}_AMQP_URI", "").split(";", 1)[0].strip()
    password = urlsplit(uri).password if uri else None
    return unquote(password) if password else None


def service_names(root=ROOT):
    """The services of this tree: packages with a ``service.py`` and a ``config/<name>.yaml``."""
    return sorted(p.parent.name for p in Path(root).glob("*/service.py")
                  if (Path(root) / "config" / f"{p.parent.name}.yaml").exists())


def _alternatives(patterns):
    patterns = sorted(set(patterns))
    return f"^({'|'.join(patterns)})$" if patterns else NOTHING


def _service_class(name):
    module = importlib.import_module(f"{name}.service")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__ and getattr(cls, "name", None) == name:
            return cls
    raise LookupError(f"{name}.service has no service class named {name!r}")


def _needs(cls):
    """(calls {service: methods}, handlers [(source, event type, method)], every event?)."""
    from nameko.events import EventHandler

    calls, handlers, every_event = {}, [], False
    for attribute in dir(cls):
        value = getattr(cls, attribute, None)
        for target, methods in (getattr(value, "rpc_calls", None) or {}).items():
            calls.setdefault(target, set()).update(methods)
        every_event = every_event or bool(getattr(value, "reads_every_event", False))
        for entrypoint in getattr(value, "nameko_entrypoints", ()):
            if isinstance(entrypoint, EventHandler):
                handlers.append((entrypoint.source_service, entrypoint.event_type, attribute))
    return calls, handlers, every_event


def _call_keys(calls):
    return [re.escape(f"{service}.{method}") for service, methods in calls.items()
            for method in methods]


def _service_identity(name, services, prefix):
    calls, handlers, every_event = _needs(_service_class(name))
    own = [re.escape(f"rpc-{name}"), rf"rpc\.reply-(saga-)?{re.escape(name)}-.+",
           rf"{re.escape(name)}\..+"]
    # nameko's handler queue (a broadcast handler's carries a suffix)
    own += [re.escape(f"evt-{source}-{event}--{name}.{method}") + "(-.+)?"
            for source, event, method in handlers]
    consumed = {}
    for source, event, _ in handlers:
        consumed.setdefault(source, set()).add(re.escape(event))
    if every_event:  # audit: every service of the tree (AUDIT_SOURCES names them), running or not
        for source in sorted(set(services) | set(service_names())):
            consumed.setdefault(source, set()).add(re.escape("#"))
    sources = [re.escape(f"{source}.events") for source in consumed]
    rpc = re.escape(RPC_EXCHANGE)
    topics = {
        RPC_EXCHANGE: {"write": _alternatives(_call_keys(calls) + [REPLY_KEY, r"rpc\.reply-.+"]),
                       "read": _alternatives([re.escape(f"{name}.*"), REPLY_KEY,
                                              rf"rpc\.reply-(saga-)?{re.escape(name)}-.+"])},
        f"{name}.events": {"write": ".*", "read": ".*"},
        f"{name}.queues": {"write": ".*", "read": ".*"},
    }
    # the tasks of the catalogue other services accept: straight into their owner's task queue
    task_owners = sorted({task.split(".", 1)[0] for task in KNOWN_TASKS} - {name})
    for owner in task_owners:
        topics[f"{owner}.queues"] = {"write": _alternatives([re.escape(f"{owner}.tasks")]),
                                     "read": NOTHING}
    for source, events in consumed.items():
        if source != name:
            topics[f"{source}.events"] = {"write": NOTHING, "read": _alternatives(events)}
    return Identity(
        name, user_name(name, prefix),
        # nameko declares (not passively) nameko-rpc and the events exchanges it binds to
        configure=_alternatives(own + [rpc] + sources),
        # never amq.default: through it a message reaches any queue of the vhost
        write=_alternatives(own + [rpc] + [re.escape(f"{o}.queues") for o in task_owners]),
        read=_alternatives(own + [rpc] + sources),
        topics=topics)


def _gateway_identity(routes_dir, prefix):
    from gateway.app import SUBSCRIPTIONS, SYSTEM_CALLS
    from gateway.routes import load_routes

    calls = {service: set(methods) for service, methods in SYSTEM_CALLS.items()}
    for route in load_routes(routes_dir):
        if route.target:
            calls.setdefault(route.service, set()).add(route.rpc_method)
    own = [r"rpc\.reply-gateway-.+", r"gateway-.+"]
    sources = [re.escape(f"{source}.events") for source, _ in SUBSCRIPTIONS]
    topics = {RPC_EXCHANGE: {"write": _alternatives(_call_keys(calls)),
                             "read": _alternatives([r"rpc\.reply-gateway-.+"])}}
    for source, key in SUBSCRIPTIONS:
        topics[f"{source}.events"] = {"write": NOTHING, "read": _alternatives([re.escape(key)])}
    rpc = re.escape(RPC_EXCHANGE)
    # exchanges are declared passively (they exist: this tool declares them), so no configure
    return Identity(GATEWAY, user_name(GATEWAY, prefix), configure=_alternatives(own),
                    write=_alternatives(own + [rpc]), read=_alternatives(own + [rpc] + sources),
                    topics=topics)


def derive(services=None, routes_dir=None, prefix=None, gateway=True):
    """The identities of ``services`` (default: every service of the tree) and the gateway."""
    services = list(services or service_names())
    if routes_dir is None:
        routes_dir = os.environ.get("GATEWAY_ROUTES_DIR") or ROOT / "config" / "routes.d"
    identities = [_service_identity(name, services, prefix) for name in services]
    if gateway:
        identities.append(_gateway_identity(routes_dir, prefix))
    return identities


def exchanges(services):
    """The shared exchanges every identity binds to or publishes on, declared up front."""
    return [RPC_EXCHANGE] + [f"{name}.{kind}" for name in services
                             for kind in ("events", "queues")]


# -- the management API -----------------------------------------------------------------------

class ManagementApi:
    """The few calls of RabbitMQ's management HTTP API this tool makes."""

    def __init__(self, url, timeout=10.0):
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
        self.auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.timeout = timeout

    def request(self, method, path, body=None):
        """The decoded answer, or None for 404."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": self.auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:200]!r}") from None
        return json.loads(text) if text else {}


def _q(value):
    return quote(value, safe="")


def apply(api, vhost, identities, services, passwords=None):
    """Create or update the users, their permissions and the shared exchanges. ``passwords``:
    ``{name: password}``; a user without one keeps its password (a new user needs one)."""
    passwords = passwords or {}
    for exchange in exchanges(services):
        # as nameko declares them: a different declaration would be refused
        api.request("PUT", f"/exchanges/{_q(vhost)}/{_q(exchange)}",
                    {"type": "topic", "durable": True, "auto_delete": False})
    for identity in identities:
        password = passwords.get(identity.name)
        if password:
            api.request("PUT", f"/users/{_q(identity.user)}", {"password": password, "tags": ""})
        elif api.request("GET", f"/users/{_q(identity.user)}") is None:
            raise SystemExit(f"{identity.user} does not exist: set "
                             f"{password_key(identity.name)} to create it")
        where = f"{_q(vhost)}/{_q(identity.user)}"
        api.request("PUT", f"/permissions/{where}", identity.permissions())
        current = {t["exchange"] for t in api.request("GET", f"/topic-permissions/{where}") or []}
        if current - set(identity.topics):
            # the API removes a user's topic permissions all at once: then they are set again
            api.request("DELETE", f"/topic-permissions/{where}")
        for exchange, topic in identity.topics.items():
            api.request("PUT", f"/topic-permissions/{where}", {"exchange": exchange, **topic})


def drift(api, vhost, identities, services):
    """What differs between the broker and ``identities``: a list of sentences."""
    problems = []
    for exchange in exchanges(services):
        if api.request("GET", f"/exchanges/{_q(vhost)}/{_q(exchange)}") is None:
            problems.append(f"exchange {exchange} is missing")
    for identity in identities:
        where = f"{_q(vhost)}/{_q(identity.user)}"
        if api.request("GET", f"/users/{_q(identity.user)}") is None:
            problems.append(f"user {identity.user} is missing")
            continue
        found = api.request("GET", f"/permissions/{where}")
        if found is None:
            problems.append(f"{identity.user} has no permissions on vhost {vhost}")
        else:
            for kind, want in identity.permissions().items():
                if found.get(kind) != want:
                    problems.append(f"{identity.user}: {kind} is {found.get(kind)!r}, "
                                    f"should be {want!r}")
        topics = {t["exchange"]: t for t in api.request("GET", f"/topic-permissions/{where}")
                  or []}
        for exchange, want in identity.topics.items():
            have = topics.pop(exchange, None)
            if have is None:
                problems.append(f"{identity.user}: no topic permission on {exchange}")
                continue
            for kind in ("write", "read"):
                if have.get(kind) != want[kind]:
                    problems.append(f"{identity.user}: topic {kind} on {exchange} is "
                                    f"{have.get(kind)!r}, should be {want[kind]!r}")
        for exchange in topics:
            problems.append(f"{identity.user}: unexpected topic permission on {exchange}")
    return problems


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m deploy.broker_users", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift; exit 1 if any")
    parser.add_argument("--show", action="store_true", help="print the derived identities")
    parser.add_argument("--api", default=os.environ.get(API_KEY, DEFAULT_API),
                        help=f"management API URL with admin credentials (${API_KEY})")
    parser.add_argument("--vhost", default=os.environ.get(VHOST_KEY, "/"),
                        help=f"virtual host (${VHOST_KEY}, default /)")
    parser.add_argument("--prefix", default=None, help=f"user name prefix (${PREFIX_KEY})")
    parser.add_argument("--routes-dir", default=None, help="the gateway's route files")
    parser.add_argument("--services", default=None, help="comma-separated (default: all)")
    return parser.parse_args(argv)


def main(argv=None, out=sys.stdout):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    services = args.services.split(",") if args.services else service_names()
    identities = derive(services, args.routes_dir, args.prefix)
    if args.show:
        for identity in identities:
            print(json.dumps({"user": identity.user, **identity.permissions(),
                              "topics": identity.topics}, indent=2), file=out)
        return 0
    api = ManagementApi(args.api)
    if args.check:
        problems = drift(api, args.vhost, identities, services)
        for problem in problems:
            print(f"drift: {problem}", file=out)
        print(f"{len(identities)} identities checked, {len(problems)} problem(s)", file=out)
        return 1 if problems else 0
    passwords = {i.name: password_of(i.name) for i in identities if password_of(i.name)}
    apply(api, args.vhost, identities, services, passwords)
    print(f"{len(identities)} broker identities set on vhost {args.vhost}: "
          f"{', '.join(i.user for i in identities)}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
