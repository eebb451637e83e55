"""Helpers of the fault and security tiers (tests/fault, tests/security).

- ``Load``: steady traffic through the gateway from a few client threads for the length of a
  test, every request recorded (kind, start, end, status), with the figures the tests assert
  and docs/reliability.md reports (time to the first 503, recovery time, counts).
- ``Database``: plain SQL reads of the platform's PostgreSQL database (each service's schema),
  to count what was committed against what the audit trail holds.
- ``signing_key`` / ``mint``: auth's real signing key, decrypted from its table with the
  platform's secret, so a test can sign tokens that are valid in every way but one.
- ``add_instance``: a second ``nameko run`` of a service under the platform harness.
- ``proxied_amqp`` / ``proxied_pg``: a platform URI rewritten to go through a ``FaultProxy``.
- ``record``: measured figures written to var/reliability/<name>.json;
  ``python -m tests.support.fault_helpers`` renders them into docs/reliability.md.
"""

import base64
import json
import os
import platform as host
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests
import sqlalchemy as sa

from tests.support.platform import API, AUTH_SECRET, Process, free_port

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "var" / "reliability"
REPORT = ROOT / "docs" / "reliability.md"
PASSWORD = "violet-Lantern-42-orbit"

__all__ = ["Load", "Sample", "Database", "signing_key", "mint", "b64url", "add_instance",
           "proxied_amqp", "proxied_pg", "record", "sign_up", "new_email", "PASSWORD",
           "until"]


# -- polling ----------------------------------------------------------------------------------
def until(predicate, timeout, interval=0.05, what="the condition"):
    """(value, seconds waited) once ``predicate()`` is truthy; AssertionError at the deadline."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def new_email(prefix="load"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.test"


def sign_up(http, base_url, email, password=PASSWORD, timeout=15):
    return http.post(f"{base_url}{API}/users", timeout=timeout,
                     json={"email": email, "password": password, "display_name": "Load"})


# -- steady load ------------------------------------------------------------------------------
@dataclass
class Sample:
    kind: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection refused, reset, client timeout)
    error: str = ""
    note: dict = field(default_factory=dict)

    @property
    def seconds(self):
        return self.ended - self.started


class Load:
    """``threads`` clients, each calling its step function in a loop until ``stop()``.

    A step is ``step(http, base_url) -> (kind, response, note)``; its response's status is
    recorded (an exception is recorded as status None). ``pause`` seconds between steps keep
    the load steady rather than saturating 2 cores.
    """

    def __init__(self, base_url, steps, pause=0.02, timeout=20.0):
        self.base_url = base_url
        self.steps = list(steps)
        self.pause = pause
        self.timeout = timeout
        self.samples = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._current = {}  # thread -> (kind, started) of the request it is waiting on

    def outstanding(self, older_than=0.0):
        """Kinds of the requests sent more than ``older_than`` seconds ago and not answered
        yet (a step function names its kind with a ``kind`` attribute)."""
        now = time.monotonic()
        return [kind for kind, started in list(self._current.values())
                if now - started >= older_than]

    def start(self):
        for index, step in enumerate(self.steps):
            thread = threading.Thread(target=self._run, args=(step,), daemon=True,
                                      name=f"load-{index}")
            self._threads.append(thread)
            thread.start()
        return self

    def _run(self, step):
        http = requests.Session()
        me = threading.current_thread()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                kind, status, error, note = "?", None, "", {}
                self._current[me] = (getattr(step, "kind", "?"), started)
                try:
                    kind, response, note = step(http, self.base_url)
                    status = response.status_code
                except requests.RequestException as exc:
                    kind = getattr(exc, "plinth_kind", kind)
                    error = type(exc).__name__
                    http.close()
                    http = requests.Session()
                self._current.pop(me, None)
                with self._lock:
                    self.samples.append(Sample(kind, started, time.monotonic(), status, error,
                                               note or {}))
                self._stop.wait(self.pause)
        finally:
            http.close()

    def stop(self, timeout=30.0):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- figures ---------------------------------------------------------------------------
    def between(self, start=None, end=None, kind=None):
        """Samples that *started* in [start, end)."""
        with self._lock:
            samples = list(self.samples)
        return [s for s in samples
                if (start is None or s.started >= start) and (end is None or s.started < end)
                and (kind is None or s.kind == kind)]

    def count(self, start=None, end=None):
        return len(self.between(start, end))

    def wait_samples(self, count, since, timeout=10.0):
        until(lambda: len(self.between(since)) >= count, timeout,
              what=f"{count} requests of the load")

    def statuses(self, start=None, end=None, kind=None):
        counts = {}
        for sample in self.between(start, end, kind):
            key = str(sample.status) if sample.status is not None else sample.error or "none"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def timeline(self, since, step=1.0):
        """Answers per kind per second since ``since`` (for failure messages)."""
        rows = {}
        for sample in self.between(since):
            second = int((sample.started - since) // step)
            key = str(sample.status) if sample.status is not None else sample.error or "none"
            rows.setdefault(second, {}).setdefault(sample.kind, {}).setdefault(key, 0)
            rows[second][sample.kind][key] += 1
        return "; ".join(f"+{s}s {rows[s]}" for s in sorted(rows))

    def first(self, predicate, after):
        """The first sample (by end time) ending after ``after`` that satisfies ``predicate``."""
        with self._lock:
            samples = sorted((s for s in self.samples if s.ended >= after),
                             key=lambda s: s.ended)
        return next((s for s in samples if predicate(s)), None)

    def recovered_at(self, after, kinds, streak=3):
        """When every kind had ``streak`` consecutive 2xx answers among requests started after
        ``after`` (the end of the streak's first request), or None."""
        moments = []
        for kind in kinds:
            run, began = 0, None
            for sample in sorted(self.between(after, kind=kind), key=lambda s: s.started):
                if sample.status is not None and 200 <= sample.status < 300:
                    run, began = run + 1, began if run else sample.ended
                    if run >= streak:
                        break
                else:
                    run, began = 0, None
            if run < streak:
                return None
            moments.append(began)
        return max(moments)


# -- the platform's database ------------------------------------------------------------------
class Database:
    """Read-only SQL on the platform's database (``platform.db_uri``)."""

    def __init__(self, uri):
        self.engine = sa.create_engine(
            uri.replace("postgresql://", "postgresql+psycopg2://", 1),
            poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})

    def rows(self, sql, **params):
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def scalar(self, sql, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def dispose(self):
        self.engine.dispose()


# -- tokens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: object
    public_jwk: dict
    encrypted: str


def signing_key(db, secret=AUTH_SECRET):
    """auth's active signing key, decrypted as auth itself does (auth.keys.KeyCipher)."""
    from auth.keys import KeyCipher

    row = db.rows("SELECT kid, alg, public_jwk, private_key_encrypted FROM auth.signing_keys "
                  "WHERE active_slot = 1")[0]
    jwk = row["public_jwk"] if isinstance(row["public_jwk"], dict) \
        else json.loads(row["public_jwk"])
    private = KeyCipher(secret).decrypt(row["kid"], row["private_key_encrypted"])
    return SigningKey(row["kid"], row["alg"], private, jwk, row["private_key_encrypted"])


def b64url(data):
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(user_id, session_id=None, now=None, **overrides):
    """The claims auth puts in an access token (auth.tokens.issue_access_token)."""
    now = int(time.time() if now is None else now)
    claims = {"iss": "plinth", "aud": "plinth-api", "sub": user_id, "iat": now, "nbf": now,
              "exp": now + 900, "jti": uuid.uuid4().hex,
              "sid": session_id or str(uuid.uuid4()), "typ": "at+jwt"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def mint(key, claims, **header):
    """A JWS of ``claims`` signed with ``key`` (a SigningKey); ``header`` overrides the
    header (kid, typ, alg...; a None value drops the field)."""
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    alg = headers.pop("alg", key.alg)
    headers = {k: v for k, v in headers.items() if v is not None}
    return jwt.encode(claims, key.private_key, algorithm=alg, headers=headers)


# -- platform plumbing ------------------------------------------------------------------------
def add_instance(platform, name, of):
    """Define ``name``: another instance of service ``of`` (same config, database and vhost;
    its own web port and log file). Start it with ``platform.start_process(name)``."""
    original = platform.processes[of]
    port = free_port()
    env = dict(original.env)
    env[f"{of.upper()}_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    process = Process(name, list(original.command), env, port,
                      platform.run_dir / f"{name}.log")
    platform.processes[name] = process
    platform.instance_of[name] = of  # same broker identity as its service
    return process


def _through(uri, proxy):
    parts = urlsplit(uri)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{proxy.address}" if userinfo else proxy.address
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def proxied_amqp(platform, proxy):
    """The platform's AMQP URI (its vhost) through ``proxy``."""
    return _through(platform.amqp_uri, proxy)


def proxied_pg(platform, proxy):
    return _through(platform.db_uri, proxy)


# -- measured figures -------------------------------------------------------------------------
def machine():
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu or host.processor() or 'unknown CPU'}, " \
           f"{host.system()} {host.release()}, Python {sys.version.split()[0]}"


def record(name, figures):
    """Keep a test's measured figures (var/reliability/<name>.json) for docs/reliability.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "figures": figures}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"reliability figures {name}: {json.dumps(figures, default=str)}")
    return body


BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"


def _render_value(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_render_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_render_value(v) for v in value) or "-"
    return str(value)


def render(results_dir=RESULTS_DIR):
    """The measured figures of the last run of each fault test, as Markdown."""
    parts = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        parts.append(f"### {data['name']}\n\nMeasured {data['measured_at']} on "
                     f"{data['machine']}.\n\n| figure | value |\n| --- | --- |")
        parts.extend(f"| {key} | {_render_value(value)} |"
                     for key, value in data["figures"].items())
        parts.append("")
    return "\n".join(parts)


def update_report(report=REPORT, results_dir=RESULTS_DIR):
    """Replace the measured section of docs/reliability.md with the latest figures."""
    text = report.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{report} has no {BEGIN} ... {END} section")
    report.write_text(f"{head}{BEGIN}\n{render(results_dir)}\n{END}{tail}")


if __name__ == "__main__":
    update_report()
    print(f"updated {REPORT.relative_to(ROOT)} from {RESULTS_DIR.relative_to(ROOT)}")
