"""`make run`: the whole platform on this machine, for development.

Migrates every service, starts RabbitMQ if it is installed but stopped, a Consul agent (the real
`consul agent -dev` when a `consul` binary is on PATH, else the development stand-in in
deploy/local/consul_standin.py), the four services (`nameko run`, one process each) and the
gateway (gunicorn), waits until each answers /health/ready, then prints where everything is.
Ctrl-C (or SIGTERM) stops everything it started, services first so they deregister, and leaves
nothing running. Logs go to var/run/<process>.log.

Every port and address can be changed through the environment (see ``Settings``); state lives
in SQLite files under var/ unless ``<SERVICE>_DB_URI`` points elsewhere.
"""

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
CORE = ("identity", "auth", "authz", "audit")


def discover_services(root=ROOT):
    """Every service in the tree: a config/<name>.yaml beside a <name>/service.py, with the
    port its config defaults to. Core services first; feature services (make service) after."""
    found = {}
    for config in sorted((root / "config").glob("*.yaml")):
        name = config.stem
        if not (root / name / "service.py").exists():
            continue
        match = re.search(r"_WEB_ADDRESS:[\d.]+:(\d+)\}", config.read_text())
        found[name] = int(match.group(1)) if match else None
    return {name: found[name] for name in [*CORE, *sorted(set(found) - set(CORE))]
            if name in found}


DEFAULT_PORTS = discover_services()
SERVICES = tuple(DEFAULT_PORTS)
READY_TIMEOUT = float(os.environ.get("PLINTH_READY_TIMEOUT", "90"))
BOOTSTRAP_TIMEOUT = float(os.environ.get("PLINTH_BOOTSTRAP_TIMEOUT", "30"))
STOP_TIMEOUT = 20.0


def say(message):
    print(f"plinth: {message}", flush=True)


@dataclass
class Settings:
    var: Path = field(default_factory=lambda: Path(os.environ.get("PLINTH_VAR_DIR",
                                                                  ROOT / "var")))
    host: str = os.environ.get("PLINTH_HOST", "127.0.0.1")
    gateway_port: int = int(os.environ.get("GATEWAY_PORT", "8000"))
    consul_port: int = int(os.environ.get("CONSUL_PORT", "8500"))
    amqp_uri: str = os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    admin_email: str = os.environ.get("BOOTSTRAP_ADMIN_EMAIL", "admin@plinth.local")

    def port(self, service):
        return int(os.environ.get(f"{service.upper()}_PORT", DEFAULT_PORTS[service]))


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path
    ready_url: str | None

    def tail(self, lines=20):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Platform:
    def __init__(self, settings):
        self.settings = settings
        self.processes = []
        self.started_rabbitmq = False
        self.bootstrap = {}
        self.broker_uris = {}  # process name -> its own AMQP URI (create_broker_users)
        self.logs = settings.var / "run"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- helpers -----------------------------------------------------------------------------
    def base_env(self):
        s = self.settings
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            PLINTH_VAR_DIR=str(s.var),
            AMQP_URI=s.amqp_uri,
            CONSUL_HTTP_ADDR=f"{s.host}:{s.consul_port}",
            # a development machine checks often, so the dashboard follows quickly
            CONSUL_CHECK_INTERVAL=env.get("CONSUL_CHECK_INTERVAL", "2s"),
        )
        return env

    def spawn(self, name, argv, env, ready_url=None):
        log = self.logs / f"{name}.log"
        handle = open(log, "w")  # the child owns it
        # own session: the terminal's Ctrl-C reaches only this launcher, which stops the
        # children in order (services deregister from Consul on SIGTERM)
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        process = Process(name, popen, log, ready_url)
        self.processes.append(process)
        return process

    def wait_ready(self, processes):
        pending = list(processes)
        deadline = time.monotonic() + READY_TIMEOUT
        while pending:
            for process in list(pending):
                if process.popen.poll() is not None:
                    raise StartError(process, f"exited with status {process.popen.returncode}")
                if _ok(process.ready_url):
                    say(f"  {process.name:<9} ready   {process.ready_url}")
                    pending.remove(process)
            if pending and time.monotonic() > deadline:
                raise StartError(pending[0], f"not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.25)

    # -- steps -------------------------------------------------------------------------------
    def check_ports(self):
        s = self.settings
        wanted = {"gateway": s.gateway_port, **{svc: s.port(svc) for svc in SERVICES}}
        if not shutil.which("consul"):
            wanted["consul"] = s.consul_port
        busy = [f"{name} ({port})" for name, port in wanted.items() if _listening(s.host, port)]
        if busy:
            raise SystemExit(f"plinth: ports already in use: {', '.join(busy)} — is the platform "
                             "already running? Set <NAME>_PORT to move one.")

    def ensure_rabbitmq(self):
        host, port = _amqp_address(self.settings.amqp_uri)
        if _listening(host, port):
            say(f"RabbitMQ is up on {host}:{port}")
            return
        if host not in ("127.0.0.1", "localhost") or not shutil.which("rabbitmq-server"):
            raise SystemExit(f"plinth: RabbitMQ is not reachable on {host}:{port}; start it (or "
                             "install rabbitmq-server) and run `make run` again")
        say("starting RabbitMQ (rabbitmq-server -detached)")
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        self.started_rabbitmq = True
        deadline = time.monotonic() + 60
        while not _listening(host, port):
            if time.monotonic() > deadline:
                raise SystemExit("plinth: RabbitMQ did not start within 60s")
            time.sleep(0.5)

    def create_broker_users(self):
        """Each process's own RabbitMQ user (deploy/broker_users.py), passwords kept in
        var/broker-passwords.json; without the management API every process shares
        ``AMQP_URI``'s credential, as before, with a warning."""
        from deploy import broker_users

        s = self.settings
        uri = urlsplit(s.amqp_uri)
        api_url = os.environ.get(broker_users.API_KEY) or \
            f"http://{uri.username or 'guest'}:{uri.password or 'guest'}@{uri.hostname}:15672"
        vhost = unquote(uri.path[1:]) if uri.path not in ("", "/") else "/"
        path = s.var / "broker-passwords.json"
        passwords = json.loads(path.read_text()) if path.exists() else {}
        names = [*SERVICES, broker_users.GATEWAY]
        for name in names:
            passwords.setdefault(name, secrets.token_urlsafe(18))
        path.write_text(json.dumps(passwords))
        path.chmod(0o600)
        try:
            identities = broker_users.derive(SERVICES)
            broker_users.apply(broker_users.ManagementApi(api_url), vhost, identities, SERVICES,
                               passwords)
        except (OSError, RuntimeError) as exc:
            say(f"WARNING: could not create the broker users ({exc}); every process uses "
                "AMQP_URI's credential")
            return
        host = uri.netloc.rsplit("@", 1)[-1]
        for identity in identities:
            password = passwords[identity.name]
            credentials = f"{quote(identity.user, safe='')}:{quote(password, safe='')}"
            self.broker_uris[identity.name] = uri._replace(netloc=f"{credentials}@{host}").geturl()
        say(f"broker users: {', '.join(i.user for i in identities)}")

    def env_of(self, name):
        from deploy import broker_users

        env = self.base_env()
        if name in self.broker_uris:
            env["AMQP_URI"] = self.broker_uris[name]
            env.setdefault("BROKER_USER_PREFIX", broker_users.user_name(""))
        return env

    def migrate(self):
        say("applying migrations")
        result = subprocess.run([sys.executable, "-m", "shared.migrations", *SERVICES], cwd=ROOT,
                                env=self.base_env(), capture_output=True, text=True)
        for line in result.stdout.splitlines():
            say(f"  {line}")
        if result.returncode:
            raise SystemExit(f"plinth: migrations failed:\n{result.stderr[-3000:]}")

    def start_consul(self):
        s = self.settings
        if shutil.which("consul"):
            say("starting Consul (consul agent -dev)")
            argv = ["consul", "agent", "-dev", "-bind", "127.0.0.1",
                    "-http-port", str(s.consul_port)]
        else:
            say("starting the Consul stand-in (no consul binary on PATH; development only)")
            argv = [sys.executable, "-m", "deploy.local.consul_standin", "--host", s.host,
                    "--port", str(s.consul_port)]
        process = self.spawn("consul", argv, self.base_env(),
                             f"http://{s.host}:{s.consul_port}/v1/catalog/services")
        self.wait_ready([process])

    def admin_password(self):
        if os.environ.get("BOOTSTRAP_ADMIN_PASSWORD"):
            return os.environ["BOOTSTRAP_ADMIN_PASSWORD"], None
        path = self.settings.var / "bootstrap-admin-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(18) + "\n")
            path.chmod(0o600)
        return path.read_text().strip(), path

    def start_services(self):
        s = self.settings
        password, _ = self.admin_password()
        started = []
        for service in SERVICES:
            env = self.env_of(service)
            env[f"{service.upper()}_WEB_ADDRESS"] = f"{s.host}:{s.port(service)}"
            if service == "authz":
                env["BOOTSTRAP_ADMIN_EMAIL"] = s.admin_email
                env["BOOTSTRAP_ADMIN_PASSWORD"] = password
            argv = [sys.executable, "-m", "nameko", "run", "--config", f"config/{service}.yaml",
                    f"{service}.service"]
            started.append(self.spawn(service, argv, env,
                                      f"http://{s.host}:{s.port(service)}/health/ready"))
        say(f"starting {', '.join(SERVICES)} (nameko run)")
        self.wait_ready(started)

    def check_bootstrap(self):
        """Wait for authz's bootstrap of the administrator to settle and say plainly when it
        made nobody admin (a refused password or email is otherwise one line in a log)."""
        s = self.settings
        url = f"http://{s.host}:{s.port('authz')}/health"
        deadline = time.monotonic() + BOOTSTRAP_TIMEOUT
        report = _json(url) or {}
        while report.get("bootstrap_admin", "pending") == "pending" \
                and time.monotonic() < deadline:
            time.sleep(0.25)
            report = _json(url) or report
        self.bootstrap = report
        state = report.get("bootstrap_admin", "pending")
        if state in ("failed", "refused"):
            for line in self.no_admin_lines():
                say(line)
        elif state == "pending":
            say(f"the administrator is not created yet: authz is still trying (see "
                f"{self.logs / 'authz.log'})")
        elif state == "skipped":
            say("an administrator existed already: the bootstrap administrator was not created")

    def no_admin_lines(self):
        s = self.settings
        why = self.bootstrap.get("bootstrap_admin_problem") or "see the authz log"
        return [
            f"NO ADMINISTRATOR: authz did not create {s.admin_email}: {why}.",
            "  Fix BOOTSTRAP_ADMIN_PASSWORD / BOOTSTRAP_ADMIN_EMAIL and run `make run` again, or "
            "make one with `make admin EMAIL=you@example.com`.",
        ]

    def start_gateway(self):
        s = self.settings
        env = self.env_of("gateway")
        env["GATEWAY_BIND"] = f"{s.host}:{s.gateway_port}"
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(s.var / "prometheus-gateway"))
        say("starting the gateway (gunicorn)")
        process = self.spawn("gateway", [sys.executable, "-m", "gunicorn", "-c",
                                         "deploy/gunicorn.conf.py", "gateway.wsgi:app"], env,
                             f"http://{s.host}:{s.gateway_port}/health/ready")
        self.wait_ready([process])

    def banner(self):
        s = self.settings
        base = f"http://{s.host}:{s.gateway_port}"
        _, password_file = self.admin_password()
        where = (f"the password is in {password_file}" if password_file
                 else "the password is BOOTSTRAP_ADMIN_PASSWORD")
        login = ("curl -s -X POST " + base + "/api/v1/auth/login -H 'Content-Type: "
                 f"application/json' -d \"{{\\\"email\\\": \\\"{s.admin_email}\\\", "
                 "\\\"password\\\": \\\"$(cat " + str(password_file or "…") + ")\\\"}\"")
        state = self.bootstrap.get("bootstrap_admin")
        if state in ("failed", "refused"):
            admin = [*(f"plinth: {line}" for line in self.no_admin_lines())]
        elif state == "skipped":
            admin = ["Administrator: one existed already (the bootstrap created nobody)."]
        else:
            admin = [f"Administrator: {s.admin_email} ({where}). Log in with:", f"  {login}"]
        lines = [
            "",
            "Plinth is running.",
            f"  gateway     {base}/api/v1",
            f"  API docs    {base}/docs",
            f"  dashboard   {base}/status",
            f"  metrics     {base}/metrics",
            f"  consul      http://{s.host}:{s.consul_port}/v1/catalog/services",
            *(f"  {svc:<11} http://{s.host}:{s.port(svc)}/health" for svc in SERVICES),
            f"  logs        {self.logs}/",
            "",
            *admin,
            "",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)

    def stop(self):
        # gateway first, then services (they deregister from Consul), Consul last
        rank = {"gateway": 0, "consul": 2}
        for group in (0, 1, 2):
            batch = [p for p in self.processes
                     if rank.get(p.name, 1) == group and p.popen.poll() is None]
            for process in batch:
                process.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in batch:
                try:
                    process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{process.name} did not stop in {STOP_TIMEOUT:.0f}s; killing it")
                    os.killpg(process.popen.pid, signal.SIGKILL)
                    process.popen.wait()
        if self.started_rabbitmq:
            say("stopping the RabbitMQ this run started")
            subprocess.run(["rabbitmqctl", "stop"], check=False, capture_output=True)
        say("stopped")

    def watch(self):
        while True:
            for process in self.processes:
                if process.popen.poll() is not None:
                    say(f"{process.name} exited with status {process.popen.returncode}; "
                        f"last lines of {process.log}:\n{process.tail()}")
                    return 1
            time.sleep(0.5)


class StartError(Exception):
    def __init__(self, process, why):
        super().__init__(f"{process.name} {why}")
        self.process = process
        self.why = why


def _ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # not answering, or not ready yet
        return False


def _json(url):
    """The JSON body at ``url`` (a service's /health answers 503 with one too), or None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return json.loads(error.read())
        except ValueError:
            return None
    except (OSError, http.client.HTTPException, ValueError):  # not answering (well) yet
        return None


def _listening(host, port):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _amqp_address(uri):
    from urllib.parse import urlparse

    url = urlparse(uri)
    return url.hostname or "127.0.0.1", url.port or 5672


def main():
    platform = Platform(Settings())
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        platform.check_ports()
        platform.ensure_rabbitmq()
        platform.create_broker_users()
        platform.migrate()
        platform.start_consul()
        platform.start_services()
        platform.check_bootstrap()
        platform.start_gateway()
        platform.banner()
        code = platform.watch()
    except StartError as exc:
        say(f"{exc.process.name} failed to start: {exc.why}. Last lines of {exc.process.log}:")
        print(exc.process.tail(30), flush=True)
        code = 1
    except KeyboardInterrupt:
        say("stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        platform.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
