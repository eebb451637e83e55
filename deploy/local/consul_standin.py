"""A stand-in for a Consul agent's HTTP API -- a development and test double, NOT Consul.

The build machines have no ``consul`` binary, so the test suite and ``make run`` use this when
none is on PATH. It speaks the subset of the agent API the platform uses, with Consul's
documented semantics:

- ``PUT /v1/agent/service/register`` (ID, Name, Address, Port, Tags, Meta, Check or Checks with
  HTTP, Interval, Timeout, DeregisterCriticalServiceAfter, Status; keys in any case, like
  Consul) and ``PUT /v1/agent/service/deregister/:id`` (404 for an unknown id);
- ``GET /v1/agent/checks``, ``GET /v1/agent/services``, ``GET /v1/agent/service/:id``;
- ``GET /v1/health/service/:name`` (``?passing``, ``?tag``) and ``GET /v1/catalog/services``,
  both blocking queries: ``?index=N&wait=5s`` holds the request until the index passes N or
  the wait (capped at 10m, plus up to wait/16 of jitter) elapses; ``X-Consul-Index`` on
  every answer;
- ``GET /v1/status/leader``.

It runs the HTTP checks itself: the first after a random stagger within the interval, then
one interval after each finishes; 2xx is passing, 429 warning, anything else (an error
status, a timeout, a refused connection) critical; checks start critical unless the
definition gives a Status. The index moves on every registration, deregistration and check
status change. A reaper deregisters a service whose check has been critical for longer than
its DeregisterCriticalServiceAfter -- with Consul's floor of 1 minute and a reaper every 30 s,
unless started with ``--test-mode``, which lowers both so tests can watch it happen (and says
so). Only HTTP checks are supported.

Run: ``python -m deploy.local.consul_standin --port 8500``. Nothing in the production code
path imports this module.
"""

import argparse
import http.client
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Agent", "StandinServer", "parse_duration", "main"]

BANNER = ("consul stand-in: a development and test double for the Consul agent HTTP API. "
          "It is NOT Consul and must not be used in production.")
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MIN_INTERVAL = 1.0
MIN_DEREGISTER = 60.0
REAP_INTERVAL = 30.0
DEFAULT_CHECK_TIMEOUT = 10.0
OUTPUT_LIMIT = 4096
STATUSES = ("passing", "warning", "critical")
LEADER = "127.0.0.1:8300"

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BadRequest(Exception):
    """The request is malformed: answered 400 with this text, as Consul does."""


def parse_duration(text):
    """Seconds in a Go duration string ("10s", "1m30s", "250ms"); a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d*)?", text):
        return float(text)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"time: invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _fmt(seconds):
    return f"{seconds:g}s"


def _lower_keys(obj):
    """Consul decodes JSON keys case-insensitively (and accepts snake_case): normalise."""
    if not isinstance(obj, dict):
        return {}
    return {str(k).lower().replace("_", ""): v for k, v in obj.items()}


def _log(message):
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} consul-standin: {message}", file=sys.stderr, flush=True)


class Check:
    """One HTTP check and its current state (guarded by the agent's lock)."""

    def __init__(self, check_id, name, service_id, service_name, http, method, header,
                 interval, timeout, deregister_after, status, created_index):
        self.id, self.name = check_id, name
        self.service_id, self.service_name = service_id, service_name
        self.http, self.method, self.header = http, method, header
        self.interval, self.timeout = interval, timeout
        self.deregister_after = deregister_after
        self.status = status
        self.output = ""
        self.critical_since = time.monotonic() if status == "critical" else None
        self.create_index = self.modify_index = created_index
        self.stop = threading.Event()

    def same_definition(self, other):
        return (self.http, self.method, self.interval, self.timeout) == \
            (other.http, other.method, other.interval, other.timeout)

    def to_dict(self, node, tags):
        return {
            "Node": node, "CheckID": self.id, "Name": self.name, "Status": self.status,
            "Notes": "", "Output": self.output, "ServiceID": self.service_id,
            "ServiceName": self.service_name, "ServiceTags": list(tags), "Type": "http",
            "Interval": _fmt(self.interval), "Timeout": _fmt(self.timeout), "ExposedPort": 0,
            "Definition": {"HTTP": self.http, "Method": self.method,
                           "Interval": _fmt(self.interval), "Timeout": _fmt(self.timeout),
                           "DeregisterCriticalServiceAfter":
                               _fmt(self.deregister_after) if self.deregister_after else "0s"},
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }


def run_http_check(url, method="GET", header=None, timeout=DEFAULT_CHECK_TIMEOUT):
    """Probe ``url`` like Consul's HTTP check: ``(status, output)``."""
    request = urllib.request.Request(url, method=method, headers={
        "User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"})
    for name, values in (header or {}).items():
        for value in values if isinstance(values, list) else [values]:
            request.add_header(name, str(value))
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            code, reason, body = response.status, response.reason, response.read(OUTPUT_LIMIT)
    except urllib.error.HTTPError as exc:
        code, reason = exc.code, exc.reason
        try:
            body = exc.read(OUTPUT_LIMIT)
        except (OSError, http.client.HTTPException):
            body = b""
        exc.close()
    except TimeoutError:
        return "critical", (f'{method.title()} "{url}": context deadline exceeded '
                            "(Client.Timeout exceeded while awaiting headers)")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return "critical", (f'{method.title()} "{url}": context deadline exceeded '
                                "(Client.Timeout exceeded while awaiting headers)")
        return "critical", f'{method.title()} "{url}": {reason}'
    if 200 <= code < 300:
        status = "passing"
    elif code == 429:
        status = "warning"
    else:
        status = "critical"
    text = body.decode("utf-8", "replace")
    return status, f"HTTP {method} {url}: {code} {reason} Output: {text}"


class Agent:
    """The registrations, their checks and the index, shared by the HTTP handler threads."""

    def __init__(self, node=None, min_deregister=MIN_DEREGISTER, reap_interval=REAP_INTERVAL,
                 min_interval=MIN_INTERVAL):
        self.node = node or socket.gethostname()
        self.node_id = str(uuid.uuid4())
        self.min_deregister = min_deregister
        self.reap_interval = reap_interval
        self.min_interval = min_interval
        self.index = 1
        self.services = {}
        self.checks = {}
        self.changed = threading.Condition()
        self.stopped = threading.Event()

    # -- changes (call with self.changed held) -------------------------------------------

    def _bump(self):
        self.index += 1
        self.changed.notify_all()
        return self.index

    def register(self, body, replace_existing_checks=False):
        definition = _lower_keys(body)
        name = definition.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("Missing service name")
        service_id = definition.get("id") or name
        if not isinstance(service_id, str):
            raise BadRequest("Request decode failed: ID must be a string")
        port = definition.get("port") or 0
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise BadRequest("Request decode failed: Port must be an integer 0-65535")
        tags = definition.get("tags") or []
        meta = definition.get("meta") or {}
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadRequest("Request decode failed: Tags must be a list of strings")
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise BadRequest("Request decode failed: Meta values must be strings")
        raw_checks = []
        if definition.get("check"):
            raw_checks.append(definition["check"])
        raw_checks.extend(definition.get("checks") or [])
        with self.changed:
            index = self.index + 1
            checks = [self._check_from(raw, service_id, name, i, len(raw_checks), index)
                      for i, raw in enumerate(raw_checks, 1)]
            previous = self.services.get(service_id)
            self.services[service_id] = {
                "ID": service_id, "Service": name, "Tags": tags, "Meta": meta, "Port": port,
                "Address": definition.get("address") or "",
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
                "Datacenter": "dc1",
                "CreateIndex": previous["CreateIndex"] if previous else index,
                "ModifyIndex": index,
            }
            old = {cid: c for cid, c in self.checks.items() if c.service_id == service_id}
            for check in checks:
                existing = old.pop(check.id, None)
                if existing is not None and existing.same_definition(check):
                    # an idempotent re-registration keeps what the check already knows
                    check.status, check.output = existing.status, existing.output
                    check.critical_since = existing.critical_since
                if existing is not None:
                    existing.stop.set()
                self.checks[check.id] = check
            if replace_existing_checks:
                # otherwise, like Consul, checks left out of the new definition stay
                for stale in old.values():
                    stale.stop.set()
                    del self.checks[stale.id]
            self._bump()
        for check in checks:
            threading.Thread(target=self._run_check, args=(check,), daemon=True,
                             name=f"check {check.id}").start()
        summary = ", ".join(f"{c.http} every {_fmt(c.interval)}" for c in checks) or "no check"
        _log(f"registered {service_id} ({name} at {definition.get('address') or '-'}:{port}); "
             f"{summary}")
        return service_id

    def _check_from(self, raw, service_id, service_name, position, count, index):
        check = _lower_keys(raw)
        for unsupported in ("ttl", "tcp", "args", "script", "grpc", "h2ping", "dockercontainerid",
                            "aliasservice", "aliasnode", "udp", "osservice"):
            if check.get(unsupported):
                raise BadRequest(f"the consul stand-in runs HTTP checks only, not {unsupported}")
        url = check.get("http")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadRequest("Invalid check: HTTP must be an http:// or https:// URL")
        try:
            interval = parse_duration(check.get("interval") or "")
            timeout = parse_duration(check.get("timeout") or DEFAULT_CHECK_TIMEOUT)
            after = check.get("deregistercriticalserviceafter")
            deregister_after = parse_duration(after) if after else None
        except ValueError as exc:
            raise BadRequest(f"Invalid check: {exc}") from None
        if interval <= 0:
            raise BadRequest("Invalid check: Interval must be > 0 for an HTTP check")
        if interval < self.min_interval:
            _log(f"check interval {_fmt(interval)} below minimum; using {_fmt(self.min_interval)}")
            interval = self.min_interval
        if deregister_after is not None and deregister_after < self.min_deregister:
            _log(f"DeregisterCriticalServiceAfter {_fmt(deregister_after)} below minimum; "
                 f"using {_fmt(self.min_deregister)}")
            deregister_after = self.min_deregister
        status = str(check.get("status") or "critical")
        if status not in STATUSES:
            raise BadRequest(f"Invalid check: Status must be one of {', '.join(STATUSES)}")
        default_id = f"service:{service_id}" if count == 1 else f"service:{service_id}:{position}"
        return Check(
            check_id=check.get("checkid") or check.get("id") or default_id,
            name=check.get("name") or f"Service '{service_name}' check",
            service_id=service_id, service_name=service_name, http=url,
            method=str(check.get("method") or "GET").upper(), header=check.get("header") or {},
            interval=interval, timeout=timeout, deregister_after=deregister_after,
            status=status, created_index=index)

    def deregister(self, service_id, reason="deregistered"):
        with self.changed:
            if service_id not in self.services:
                return False
            del self.services[service_id]
            for check_id in [cid for cid, c in self.checks.items() if c.service_id == service_id]:
                self.checks.pop(check_id).stop.set()
            self._bump()
        _log(f"{reason} {service_id}")
        return True

    def _record(self, check, status, output):
        with self.changed:
            if self.checks.get(check.id) is not check:
                return  # replaced or deregistered while it ran
            check.output = output[:OUTPUT_LIMIT + 200]
            if status == check.status:
                return  # Consul syncs output-only changes lazily: no index change
            previous, check.status = check.status, status
            check.critical_since = time.monotonic() if status == "critical" else None
            check.modify_index = self._bump()
        _log(f"check {check.id}: {previous} -> {status}")

    def _run_check(self, check):
        if check.stop.wait(random.uniform(0, check.interval)):
            return
        while not self.stopped.is_set():
            status, output = run_http_check(check.http, check.method, check.header,
                                            check.timeout)
            self._record(check, status, output)
            if check.stop.wait(check.interval):
                return

    def reap_forever(self):
        while not self.stopped.wait(self.reap_interval):
            self.reap()

    def reap(self):
        """Deregister services critical for longer than their DeregisterCriticalServiceAfter."""
        now = time.monotonic()
        with self.changed:
            doomed = {c.service_id: now - c.critical_since for c in self.checks.values()
                      if c.deregister_after is not None and c.critical_since is not None
                      and now - c.critical_since > c.deregister_after}
        for service_id, critical_for in doomed.items():
            self.deregister(service_id,
                            reason=f"reaped (critical for {critical_for:.1f}s)")

    # -- reads ----------------------------------------------------------------------------

    def wait_for(self, index, wait):
        """Block until the index passes ``index`` or ``wait`` seconds elapse; the index."""
        deadline = time.monotonic() + wait
        with self.changed:
            while self.index <= index and not self.stopped.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return self.index

    def _node(self):
        return {"ID": self.node_id, "Node": self.node, "Address": "127.0.0.1",
                "Datacenter": "dc1", "TaggedAddresses": {"lan": "127.0.0.1"}, "Meta": {},
                "CreateIndex": 1, "ModifyIndex": 1}

    def _node_check(self):
        return {"Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "CreateIndex": 1, "ModifyIndex": 1}

    def health_service(self, name, passing=False, tag=None):
        with self.changed:
            entries = []
            for service in self.services.values():
                if service["Service"] != name or (tag and tag not in service["Tags"]):
                    continue
                checks = [self._node_check()] + [
                    c.to_dict(self.node, service["Tags"]) for c in self.checks.values()
                    if c.service_id == service["ID"]]
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                body = {k: v for k, v in service.items() if k != "Datacenter"}
                entries.append({"Node": self._node(), "Service": body, "Checks": checks})
            return sorted(entries, key=lambda e: e["Service"]["ID"])

    def catalog_services(self):
        with self.changed:
            names = {"consul": []}
            for service in self.services.values():
                tags = names.setdefault(service["Service"], [])
                tags.extend(t for t in service["Tags"] if t not in tags)
            return names

    def agent_checks(self):
        with self.changed:
            return {c.id: c.to_dict(self.node, self.services[c.service_id]["Tags"])
                    for c in self.checks.values() if c.service_id in self.services}

    def agent_services(self):
        with self.changed:
            return {sid: {k: v for k, v in s.items() if k not in ("CreateIndex", "ModifyIndex")}
                    for sid, s in self.services.items()}


class Handler(BaseHTTPRequestHandler):
    server_version = "consul-standin"
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY a kept-alive client's delayed
    # ACK holds the body back ~40 ms (Consul itself answers in one)
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # the stdlib's signature
        pass  # the agent logs what matters; one line per request would drown it

    @property
    def agent(self):
        return self.server.agent

    def _send(self, status, body, index=None, content_type="application/json"):
        data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status, text):
        self._send(status, text, content_type="text/plain; charset=utf-8")

    def _query(self):
        split = urlsplit(self.path)
        return unquote(split.path), parse_qs(split.query, keep_blank_values=True)

    def _block(self, query):
        """Apply a blocking query's ``index``/``wait``; the index to answer with."""
        raw = query.get("index", ["0"])[0] or "0"
        try:
            index = int(raw)
            if index < 0:
                raise ValueError
        except ValueError:
            raise BadRequest("Invalid index") from None
        if index == 0:
            return self.agent.index
        try:
            wait = parse_duration(query["wait"][0]) if "wait" in query else DEFAULT_WAIT
        except ValueError:
            raise BadRequest("Invalid wait time") from None
        wait = min(wait, MAX_WAIT)
        wait += random.uniform(0, wait / 16)
        return self.agent.wait_for(index, wait)

    @staticmethod
    def _flag(query, name):
        if name not in query:
            return False
        return query[name][0].lower() not in ("false", "0")

    def _route(self, method):
        path, query = self._query()
        get, put = method == "GET", method == "PUT"
        if path == "/v1/status/leader":
            return self._send(200, LEADER) if get else self._not_allowed(method)
        if path == "/v1/agent/service/register":
            if not put:
                return self._not_allowed(method)
            try:
                body = json.loads(self.body or b"null")
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise BadRequest(f"Request decode failed: {exc}") from None
            if not isinstance(body, dict):
                raise BadRequest("Request decode failed: expected a JSON object")
            self.agent.register(body, self._flag(query, "replace-existing-checks"))
            return self._text(200, "")
        if path.startswith("/v1/agent/service/deregister/"):
            if not put:
                return self._not_allowed(method)
            service_id = path[len("/v1/agent/service/deregister/"):]
            if not self.agent.deregister(service_id):
                return self._text(404, f'Unknown service ID "{service_id}". Ensure that the '
                                       "service ID is passed, not the service name.")
            return self._text(200, "")
        if not get:
            return self._not_allowed(method) if path.startswith("/v1/") else self._text(404, "")
        if path == "/v1/agent/checks":
            return self._send(200, self.agent.agent_checks())
        if path == "/v1/agent/services":
            return self._send(200, self.agent.agent_services())
        if path.startswith("/v1/agent/service/"):
            service = self.agent.agent_services().get(path[len("/v1/agent/service/"):])
            if service is None:
                return self._text(404, "unknown service ID")
            return self._send(200, service)
        if path.startswith("/v1/health/service/"):
            index = self._block(query)
            name = path[len("/v1/health/service/"):]
            body = self.agent.health_service(name, passing=self._flag(query, "passing"),
                                             tag=query.get("tag", [None])[0])
            return self._send(200, body, index=index)
        if path == "/v1/catalog/services":
            index = self._block(query)
            return self._send(200, self.agent.catalog_services(), index=index)
        return self._text(404, "")

    def _not_allowed(self, method):
        self._text(405, f"method {method} not allowed")

    def _handle(self, method):
        try:
            # read the whole body first, so a kept-alive connection stays in step
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length > 0 else b""
            self._route(method)
        except BadRequest as exc:
            self._text(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a watcher stopping mid-query)

    def do_GET(self):  # the stdlib's naming
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, agent):
        self.agent = agent
        super().__init__(address, Handler)

    def close(self):
        self.agent.stopped.set()
        with self.agent.changed:
            self.agent.changed.notify_all()
        self.shutdown()
        self.server_close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.consul_standin",
        description="A development/test stand-in for the Consul agent HTTP API (not Consul).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--node", default=None, help="node name (default: the hostname)")
    parser.add_argument("--test-mode", action="store_true",
                        help="allow DeregisterCriticalServiceAfter below Consul's 1m floor and "
                             "reap critical services often (tests only)")
    parser.add_argument("--reap-interval", default=None,
                        help="how often the reaper runs (default 30s; 0.5s in --test-mode)")
    parser.add_argument("--min-deregister", default=None,
                        help="floor for DeregisterCriticalServiceAfter (default 1m; 0s in "
                             "--test-mode)")
    args = parser.parse_args(argv)
    if not args.test_mode and (args.reap_interval or args.min_deregister):
        parser.error("--reap-interval and --min-deregister need --test-mode")
    reap = parse_duration(args.reap_interval or ("0.5s" if args.test_mode else REAP_INTERVAL))
    floor = parse_duration(args.min_deregister or ("0s" if args.test_mode else MIN_DEREGISTER))
    agent = Agent(node=args.node, min_deregister=floor, reap_interval=reap)
    server = StandinServer((args.host, args.port), agent)
    _log(BANNER)
    if args.test_mode:
        _log(f"TEST MODE: DeregisterCriticalServiceAfter floor {_fmt(floor)} and reaper every "
             f"{_fmt(reap)} (real Consul: 1m and 30s)")
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)

    def shut(signum, frame):
        threading.Thread(target=server.close, daemon=True).start()

    signal.signal(signal.SIGTERM, shut)
    signal.signal(signal.SIGINT, shut)
    threading.Thread(target=agent.reap_forever, daemon=True, name="reaper").start()
    server.serve_forever()
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
