"""The real platform as processes, for end-to-end, fault and security tests.

``Platform`` starts, on a fresh PostgreSQL database and a fresh RabbitMQ vhost, each service
with ``nameko run --config config/<svc>.yaml <svc>.service`` on a free web port, then the
gateway under gunicorn with deploy/gunicorn.conf.py on a free port; it waits for every
``/health/ready``, and stops everything with SIGTERM (SIGKILL after a grace period). Each
process writes its output to ``var/e2e/<run>/<name>.log``, kept after the run for assertions
and debugging (the newest runs are kept, older ones pruned).

Use it through a fixture made at the top of a test module (one platform per module; startup
takes a few seconds)::

    from tests.support.platform import bearer, platform_fixture

    platform = platform_fixture(gateway_env={"GATEWAY_RPC_TIMEOUT": "2"})

    def test_something(platform):
        user, pair = platform.new_user()
        me = platform.http.get(platform.url("/api/v1/users/me"),
                               headers=bearer(pair["access_token"]))
        assert me.json()["id"] == user["id"]
        assert any(r.get("status") == 200 for r in platform.log_records("gateway"))

Options: ``services`` (which of identity, auth, authz, audit; default all), ``gateway``
(start it; default True), ``env`` (extra environment for every process), ``service_env``
(``{"auth": {...}}`` per service), ``gateway_env``, ``broker`` (a
``tests.support.rabbit_cluster.RabbitCluster``, or anything with ``amqp_uri(vhost)``,
``add_vhost`` and ``delete_vhost``: the platform's vhost is made there and every process
gets its multi-node ``AMQP_URI``; default the local node), ``workers`` / ``threads`` (gunicorn),
``admin_email`` / ``admin_password`` (the bootstrap admin authz creates), ``routes`` (route
files of feature services the test starts itself: the gateway serves the core routes and
these only, never the repository's config/routes.d, whose services a platform does not start
— a tree where `make service` was run must pass the suite too), ``broker_identities`` (default
True: each process connects as its own RabbitMQ user with the permissions
deploy/broker_users.py derives, on the platform's vhost; users are named
``<broker_prefix><name>`` and removed at stop; an ``AMQP_URI`` a test gives with guest's
credentials, e.g. through a fault proxy, gets the process's own credentials at start;
``extra_services`` and ``tree``: services of another tree (a copy where `make service` ran)
the test starts itself, whose identities are derived there too).

Process control, by name ("identity", ..., "gateway"): ``stop_process(name)`` (SIGTERM, then
SIGKILL), ``kill_process(name)`` (SIGKILL: a crash), ``start_process(name)`` (same port,
same log file, appended), ``restart_process(name)``, ``wait_ready(name)``, ``running(name)``,
``pid(name)``; ``processes[name].env`` may be changed before a (re)start, e.g. to point a
service at a ``FaultProxy``. ``wait_for(predicate)`` polls with a deadline.
Addresses: ``base_url``, ``url(path)``, ``service_url(name, path)``, ``amqp_uri``,
``db_uri``, ``vhost``. Logs: ``log(name)`` (text), ``log_records(name)`` (parsed JSON
lines), ``tail(name)``, ``run_dir``. Conveniences: ``http`` (a requests session),
``rpc_client()`` (a ``shared.rpc_client.RpcClient`` on the vhost), ``admin_token()``,
``new_user(...)`` (signs up and logs in through the gateway).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = ROOT / "var" / "e2e"
SERVICES = ("identity", "auth", "authz", "audit")
GATEWAY = "gateway"
KEEP_RUNS = 30
RABBIT_API = os.environ.get("PLINTH_RABBIT_API", "http://guest:guest@127.0.0.1:15672")
RABBIT_AMQP = os.environ.get("PLINTH_RABBIT_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_ADMIN_URI = os.environ.get("PLINTH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_EMAIL = "root-operator@e2e.example.test"
ADMIN_PASSWORD = "Quartz-Meadow-Signal-8812"
AUTH_SECRET = "e2e-only-auth-key-encryption-secret-0b7d3c51a9"
API = "/api/v1"

# what every service process gets, so a platform starts fast and runs cheap
SERVICE_DEFAULTS = {
    "ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024", "ARGON2_PARALLELISM": "1",
    "OUTBOX_POLL_INTERVAL": "0.05", "AUTH_KEY_ENCRYPTION_SECRET": AUTH_SECRET,
    "AUDIT_BATCH_WAIT_MS": "20", "CONSUL_HTTP_ADDR": "", "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}
# every test client is 127.0.0.1: the production sign-up/login limit (20/minute per IP) would
# throttle a test module; tests of rate limiting set their own
GATEWAY_DEFAULTS = {"GATEWAY_GRACEFUL_TIMEOUT": "3", "LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1", "GATEWAY_RATE_LIMIT_AUTH_IP": "1000/minute"}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Each process is started through this launcher: it asks the kernel to SIGTERM it when the
# test process dies (prctl PR_SET_PDEATHSIG survives exec), so a crashed or killed test run
# leaves no platform behind. (A preexec_fn would do the same from the parent, but it makes
# subprocess fork the eventlet-patched test process, which eventlet warns against.)
LAUNCHER = ("import ctypes, os, signal, sys; "
            "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM); "
            "os.execv(sys.argv[1], sys.argv[1:])")


@dataclass
class Process:
    name: str
    command: list
    env: dict
    port: int
    log_path: Path
    popen: subprocess.Popen | None = None
    starts: int = 0

    @property
    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"


class PlatformError(RuntimeError):
    pass


class Platform:
    def __init__(self, services=SERVICES, gateway=True, env=None, service_env=None,
                 gateway_env=None, workers=2, threads=4, admin_email=ADMIN_EMAIL,
                 admin_password=ADMIN_PASSWORD, startup_timeout=60.0, name="platform",
                 routes=(), broker_identities=True, extra_services=(), tree=None, broker=None):
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}")
        self.services = tuple(services)
        self.with_gateway = gateway
        self.env = dict(env or {})
        self.service_env = {k: dict(v) for k, v in (service_env or {}).items()}
        self.gateway_env = dict(gateway_env or {})
        self.routes = [Path(path) for path in routes]
        self.workers, self.threads = workers, threads
        self.admin_email, self.admin_password = admin_email, admin_password
        self.startup_timeout = startup_timeout
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{name}-{uuid.uuid4().hex[:6]}"
        self.run_dir = E2E_DIR / self.run_id
        self.vhost = f"plinth_e2e_{uuid.uuid4().hex[:10]}"
        self.broker = broker
        self.amqp_uri = (broker.amqp_uri(self.vhost) if broker is not None
                         else f"{RABBIT_AMQP}/{quote(self.vhost, safe='')}")
        self.db_uri = None
        # a cluster of the test's own (tests/support/rabbit_cluster.py) has no management API
        # to make per-process users with: its platform runs as the cluster's one user
        self.broker_identities = broker_identities and broker is None
        self.broker_prefix = f"e2e{uuid.uuid4().hex[:8]}-"
        self.extra_services, self.tree = tuple(extra_services), tree
        self.broker_passwords = {name: uuid.uuid4().hex
                                 for name in (*self.services, *self.extra_services, GATEWAY)}
        self.processes = {}
        self.instance_of = {}  # extra instance's process name -> its service (add_instance)
        self.http = requests.Session()
        self._admin_token = None
        self._clients = []

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        _prune_runs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.broker is not None:
                self.broker.add_vhost(self.vhost)
            else:
                _create_vhost(self.vhost)
            self._copy_routes()
            if self.broker_identities:
                self._create_identities()
            self.db_uri = _create_database()
            for name in self.services:
                self._define_service(name)
                self.start_process(name, wait=False)
            for name in self.services:
                self.wait_ready(name)
            if self.with_gateway:
                self._define_gateway()
                self.start_process(GATEWAY)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout=10.0):
        """Stop every process (gateway first), then drop the vhost and database."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        names = [GATEWAY] if GATEWAY in self.processes else []
        names += [n for n in self.processes if n != GATEWAY]
        for name in names:
            if self.running(name):
                self.processes[name].popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in names:
            self._reap(name, max(0.1, deadline - time.monotonic()))
        self.http.close()
        if self.broker is not None:
            self.broker.delete_vhost(self.vhost)
        else:
            try:
                requests.delete(_vhost_api(self.vhost), timeout=10)
                if self.broker_identities:
                    for name in self.broker_passwords:
                        requests.delete(
                            f"{RABBIT_API}/api/users/{quote(self.broker_user(name))}",
                            timeout=10)
            except requests.RequestException:
                pass
        if self.db_uri:
            _drop_database(self.db_uri)
            self.db_uri = None

    # -- broker identities --------------------------------------------------------------------
    def broker_user(self, name):
        return self.broker_prefix + name

    def amqp_uri_of(self, name, uri=None):
        """``uri`` (default: the platform's) with the credentials of ``name``'s broker user."""
        parts = urlsplit(uri or self.amqp_uri)
        host = parts.netloc.rsplit("@", 1)[-1]
        credentials = f"{quote(self.broker_user(name), safe='')}:" \
                      f"{quote(self.broker_passwords[name], safe='')}"
        return parts._replace(netloc=f"{credentials}@{host}").geturl()

    def _create_identities(self):
        from deploy import broker_users

        if self.tree is not None:  # derived in that tree, by its own copy of the tool
            env = {**os.environ, "PYTHONPATH": str(self.tree), **{
                broker_users.password_key(n): p for n, p in self.broker_passwords.items()}}
            subprocess.run([sys.executable, "-m", "deploy.broker_users", "--api", RABBIT_API,
                            "--vhost", self.vhost, "--prefix", self.broker_prefix,
                            "--routes-dir", str(self.run_dir / "routes.d"), "--services",
                            ",".join((*self.services, *self.extra_services))],
                           cwd=self.tree, env=env, check=True, capture_output=True, timeout=120)
            return
        identities = broker_users.derive(self.services, self.run_dir / "routes.d",
                                         self.broker_prefix)
        api = broker_users.ManagementApi(RABBIT_API)
        broker_users.apply(api, self.vhost, identities, self.services, self.broker_passwords)

    def _identity_env(self, name, env):
        """At a process's start: its own broker credentials on whatever broker URI it has."""
        name = self.instance_of.get(name, name)  # a second instance runs as its service
        if not self.broker_identities or name not in self.broker_passwords:
            return env
        uri = env.get("AMQP_URI") or self.amqp_uri
        if unquote(urlsplit(uri).username or "guest") == "guest":
            env = {**env, "AMQP_URI": self.amqp_uri_of(name, uri)}
        return {**env, "BROKER_USER_PREFIX": self.broker_prefix}

    def _copy_routes(self):
        routes_dir = self.run_dir / "routes.d"
        routes_dir.mkdir(exist_ok=True)
        for path in self.routes:
            shutil.copy(path, routes_dir / path.name)

    # -- definitions --------------------------------------------------------------------------
    def _base_env(self):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update({"AMQP_URI": self.amqp_uri, "PYTHONPATH": str(ROOT),
                    "PLINTH_VAR_DIR": str(self.run_dir / "var"), "PLINTH_ENV": "development"})
        return env

    def _define_service(self, name):
        port = free_port()
        env = self._base_env()
        env.update(SERVICE_DEFAULTS)
        env.update({f"{name.upper()}_DB_URI": self.db_uri,
                    f"{name.upper()}_WEB_ADDRESS": f"127.0.0.1:{port}"})
        if name == "authz" and self.admin_email:
            env.update({"BOOTSTRAP_ADMIN_EMAIL": self.admin_email,
                        "BOOTSTRAP_ADMIN_PASSWORD": self.admin_password})
        env.update({k: str(v) for k, v in self.env.items()})
        env.update({k: str(v) for k, v in self.service_env.get(name, {}).items()})
        command = [sys.executable, "-m", "nameko", "run", "--config", f"config/{name}.yaml",
                   f"{name}.service"]
        self.processes[name] = Process(name, command, env, port, self.run_dir / f"{name}.log")

    def _define_gateway(self):
        port = free_port()
        env = self._base_env()
        env.update(GATEWAY_DEFAULTS)
        routes_dir = self.run_dir / "routes.d"
        env.update({"GATEWAY_ROUTES_DIR": str(routes_dir),
                    "GATEWAY_BIND": f"127.0.0.1:{port}", "GATEWAY_WORKERS": str(self.workers),
                    "GATEWAY_THREADS": str(self.threads),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "prometheus")})
        env.update({k: str(v) for k, v in self.env.items()})
        env.update({k: str(v) for k, v in self.gateway_env.items()})
        command = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py",
                   "gateway.wsgi:app"]
        self.processes[GATEWAY] = Process(GATEWAY, command, env, port,
                                          self.run_dir / f"{GATEWAY}.log")

    # -- process control ----------------------------------------------------------------------
    def _process(self, name):
        try:
            return self.processes[name]
        except KeyError:
            raise PlatformError(f"no process named {name}; have {sorted(self.processes)}") \
                from None

    def start_process(self, name, wait=True):
        process = self._process(name)
        if process.running:
            raise PlatformError(f"{name} is already running (pid {process.popen.pid})")
        process.starts += 1
        with open(process.log_path, "ab") as log:
            log.write(f"--- start {process.starts} at {time.strftime('%H:%M:%S')}: "
                      f"{' '.join(process.command)}\n".encode())
            log.flush()
            process.popen = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, *process.command], cwd=ROOT,
                env=self._identity_env(name, process.env),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        if wait:
            self.wait_ready(name)
        return process

    def stop_process(self, name, timeout=10.0):
        """SIGTERM, then SIGKILL to the whole process group after ``timeout``; the exit code."""
        process = self._process(name)
        if process.running:
            process.popen.send_signal(signal.SIGTERM)
        return self._reap(name, timeout)

    def kill_process(self, name, group=True):
        """SIGKILL, as a crash would (``group``: its children too, e.g. gunicorn workers)."""
        process = self._process(name)
        if process.running:
            if group:
                _killpg(process.popen.pid, signal.SIGKILL)
            else:
                process.popen.kill()
        return process.popen.wait(10) if process.popen else None

    def restart_process(self, name, timeout=10.0):
        self.stop_process(name, timeout)
        return self.start_process(name)

    def _reap(self, name, timeout):
        process = self.processes[name]
        if process.popen is None:
            return None
        try:
            code = process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(process.popen.pid, signal.SIGKILL)
            code = process.popen.wait(10)
        # a group leader may be gone while children (gunicorn workers) linger
        _killpg(process.popen.pid, signal.SIGKILL)
        return code

    def running(self, name):
        return name in self.processes and self.processes[name].running

    def pid(self, name):
        process = self._process(name)
        return process.popen.pid if process.running else None

    def wait_ready(self, name, timeout=None):
        process = self._process(name)
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last = None
        while time.monotonic() < deadline:
            if not process.running:
                raise PlatformError(f"{name} exited with {process.popen.returncode} before it "
                                    f"was ready; see {process.log_path}:\n{self.tail(name)}")
            try:
                response = requests.get(process.url("/health/ready"), timeout=2)
                if response.status_code == 200 and self._workers_ready(name):
                    return process
                last = f"{response.status_code} {response.text[:300]}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise PlatformError(f"{name} was not ready within {timeout or self.startup_timeout:g}s "
                            f"(last: {last}); see {process.log_path}:\n{self.tail(name)}")

    def _workers_ready(self, name):
        """The gateway's probe reaches one worker; every worker logs when it has warmed up."""
        if name != GATEWAY:
            return True
        since_start = self.log(name).rsplit("\n--- start ", 1)[-1]
        pids = {rec.get("pid") for rec in _json_lines(since_start)
                if rec.get("event") == "worker_ready"}
        return len(pids) >= self.workers

    # -- addresses and logs -------------------------------------------------------------------
    @property
    def base_url(self):
        return self._process(GATEWAY).url()

    def url(self, path):
        return self.base_url + path

    def service_url(self, name, path=""):
        return self._process(name).url(path)

    def log(self, name):
        path = self._process(name).log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name, lines=40):
        return "\n".join(self.log(name).splitlines()[-lines:])

    def log_records(self, name):
        """The JSON log lines of ``name`` (others, such as tracebacks, are skipped)."""
        return _json_lines(self.log(name))

    # -- conveniences -------------------------------------------------------------------------
    def rpc_client(self, timeout=10.0):
        from shared.rpc_client import RpcClient

        client = RpcClient(self.amqp_uri, timeout=timeout)
        client.start()
        if not client.wait_connected(10):
            raise PlatformError(f"cannot reach the broker: {client.last_error}")
        self._clients.append(client)
        return client

    def login(self, email, password, expect=200):
        response = self.http.post(self.url(f"{API}/auth/login"),
                                  json={"email": email, "password": password}, timeout=10)
        if expect is not None and response.status_code != expect:
            raise PlatformError(f"login of {email}: {response.status_code} {response.text}")
        return response.json()

    def admin_token(self, timeout=30.0):
        """An access token of the bootstrap admin, once authz has made them admin (watched
        over RPC, so waiting costs no failed logins: those are throttled)."""
        from shared.errors import PlinthError

        if self._admin_token:
            return self._admin_token
        client = self.rpc_client()

        def is_admin():
            try:
                user = client.call("identity", "get_user_by_email",
                                   kwargs={"email": self.admin_email}, timeout=5)
                roles = client.call("authz", "roles_of", kwargs={"user_id": user["id"]},
                                    timeout=5)
            except PlinthError:  # not there yet (or identity, authz not answering yet)
                return False
            return any(r["role"] == "admin" for r in roles)

        wait_for(is_admin, timeout=timeout, interval=0.1, what="the bootstrap admin")
        self._admin_token = self.login(self.admin_email, self.admin_password)["access_token"]
        return self._admin_token

    def new_user(self, password="violet-Lantern-42-orbit", wait_role=True, **fields):
        """Sign up and log in through the gateway: (user, token pair). With ``wait_role``,
        wait until authz has given the new user the ``user`` role (it does so on
        user.created, asynchronously)."""
        email = fields.pop("email", None) or f"e2e-{uuid.uuid4().hex[:10]}@example.test"
        response = self.http.post(self.url(f"{API}/users"), timeout=10, json={
            "email": email, "password": password, "display_name": "E2E User", **fields})
        if response.status_code != 201:
            raise PlatformError(f"sign-up: {response.status_code} {response.text}")
        user = response.json()
        pair = self.login(email, password)
        if wait_role:
            wait_for(lambda: self.http.get(self.url(f"{API}/users/me"), timeout=10,
                                           headers=bearer(pair["access_token"])).status_code
                     == 200, timeout=10, what="the new user's self-service role")
        return user, pair


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate, timeout=5.0, interval=0.02, what="the condition"):
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def platform_fixture(scope="module", **options):
    """A pytest fixture starting one ``Platform(**options)`` for the scope (module)."""

    @pytest.fixture(scope=scope)
    def _platform():
        platform = Platform(**options)
        platform.start()
        try:
            yield platform
        finally:
            platform.stop()

    return _platform


# -- infrastructure ---------------------------------------------------------------------------
def _json_lines(text):
    """The JSON log lines in ``text`` (others, such as tracebacks, are skipped)."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _prune_runs():
    if not E2E_DIR.exists():
        return
    runs = sorted((p for p in E2E_DIR.iterdir() if p.is_dir()), key=lambda p: p.name)
    for old in runs[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)


def _admin_engine():
    return sa.create_engine(PG_ADMIN_URI.replace("postgresql://", "postgresql+psycopg2://", 1),
                            isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _create_database():
    name = f"plinth_e2e_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URI.rsplit("/", 1)[0] + "/" + name


def _drop_database(uri):
    name = uri.rsplit("/", 1)[1]
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _vhost_api(vhost):
    return f"{RABBIT_API}/api/vhosts/{quote(vhost, safe='')}"


def _create_vhost(vhost):
    requests.put(_vhost_api(vhost), timeout=10).raise_for_status()
    requests.put(f"{RABBIT_API}/api/permissions/{quote(vhost, safe='')}/guest",
                 json={"configure": ".*", "write": ".*", "read": ".*"},
                 timeout=10).raise_for_status()

