"""`make test`'s own set-up: what the tests talk to, ready before pytest starts.

The tests use the local PostgreSQL (``PLINTH_TEST_PG``, postgresql://postgres@127.0.0.1:5432/test
with trust auth), RabbitMQ with its management plugin (nameko's test fixtures make a vhost per
test through its API) and Redis on 127.0.0.1:6379 (``PLINTH_TEST_REDIS``). Each one that is
installed but stopped is started; one that is missing stops `make test` at once with one line
naming it and how to get it, instead of hundreds of failing tests. The dashboard's browser
test needs Debian's chromium and chromium-driver: installed with apt when run as root,
otherwise that test is skipped and this says so.

    python -m deploy.local.testenv postgresql rabbitmq redis chromium

The Makefile's test targets run it with what their tier needs. Nothing is ever stopped.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Need", "ensure", "browser_note", "needs", "main"]

PG_URI = os.environ.get("PLINTH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URI = os.environ.get("PLINTH_RABBIT_AMQP", "amqp://guest:guest@127.0.0.1:5672")
RABBIT_API = os.environ.get("PLINTH_RABBIT_API", "http://guest:guest@127.0.0.1:15672")
REDIS_URI = os.environ.get("PLINTH_TEST_REDIS", "redis://127.0.0.1:6379/0")
# daemons live in sbin, which a non-root PATH may lack
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BROWSER_SKIP = ("the dashboard's browser test will be skipped: it needs Debian's chromium and "
                "chromium-driver (apt-get install chromium chromium-driver)")


class StartFailed(Exception):
    """A start command failed; the message says which and why."""


@dataclass
class Need:
    """Something the tests need, how to tell it is up, and how to start (or create) it."""

    name: str
    up: Callable[[], bool]
    installed: Callable[[], bool]
    start: Callable[[], None]  # raises StartFailed
    install_hint: str
    wait: float = 60.0
    action: str = "start"


def ensure(need, say=print, sleep=time.sleep, clock=time.monotonic):
    """None when ``need`` is up (started if it had to be), else the one line saying why not."""
    if need.up():
        return None
    if not need.installed():
        return f"{need.name} is not running and not installed ({need.install_hint})"
    say(f"make test: {need.action.rstrip('e')}ing {need.name}")
    try:
        need.start()
    except StartFailed as exc:
        return f"{need.name} is not up and the {need.action} failed: {exc}"
    deadline = clock() + need.wait
    while not need.up():
        if clock() > deadline:
            return f"{need.name} did not answer within {need.wait:g} s of its {need.action}"
        sleep(0.5)
    say(f"make test: {need.name} is up")
    return None


# -- probes and commands ----------------------------------------------------------------------
def _which(program):
    return shutil.which(program, path=SEARCH_PATH)


def _listening(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(*command, timeout=120):
    program = _which(command[0])
    if program is None:
        raise StartFailed(f"{command[0]} not found")
    try:
        result = subprocess.run([program, *command[1:]], capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StartFailed(f"{' '.join(command)} took over {timeout} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        raise StartFailed(f"{' '.join(command)} exited with {result.returncode}"
                          + (f": {output[-1]}" if output else ""))


def _address(uri, default_port):
    parts = urlsplit(uri)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _pg_clusters():
    root = Path("/etc/postgresql")
    return sorted(p.name for p in root.iterdir() if (p / "main").is_dir()) \
        if root.is_dir() else []


def postgresql():
    host, port = _address(PG_URI, 5432)

    def start():
        clusters = _pg_clusters()
        if not clusters:
            raise StartFailed("no cluster under /etc/postgresql")
        _run("pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "start")

    return Need("PostgreSQL", lambda: _listening(host, port),
                lambda: bool(_which("pg_ctlcluster") and _pg_clusters()), start,
                "apt-get install postgresql", wait=30)


def postgresql_database():
    """The tests' database answers as PLINTH_TEST_PG says (created when it is only missing)."""
    problem = []

    def usable():
        import psycopg2

        try:
            psycopg2.connect(PG_URI, connect_timeout=3).close()
        except psycopg2.Error as exc:
            problem[:] = [str(exc).strip().splitlines()[0]]
            return False
        return True

    def create():
        import psycopg2

        name = urlsplit(PG_URI).path.lstrip("/")
        if not problem or "does not exist" not in problem[0] or not name.isidentifier():
            raise StartFailed(f"{PG_URI} does not work ({problem[0] if problem else '?'}); "
                              "the tests need that database with trust auth for postgres on "
                              "127.0.0.1 (or PLINTH_TEST_PG naming another)")
        conn = psycopg2.connect(PG_URI.rsplit("/", 1)[0] + "/postgres", connect_timeout=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()

    return Need(f"the test database ({PG_URI})", usable, lambda: True, create, "",
                wait=5, action="create")


def rabbitmq():
    host, port = _address(AMQP_URI, 5672)
    return Need("RabbitMQ", lambda: _listening(host, port),
                lambda: _which("rabbitmq-server") is not None,
                lambda: _run("rabbitmq-server", "-detached"),
                "apt-get install rabbitmq-server", wait=90)


def rabbitmq_management():
    def up():
        try:
            parts = urlsplit(RABBIT_API)
            request = urllib.request.Request(
                f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api/overview")
            manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            manager.add_password(None, request.full_url, parts.username or "guest",
                                 parts.password or "guest")
            opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
            with opener.open(request, timeout=3) as response:
                return response.status == 200
        except OSError:
            return False

    return Need("RabbitMQ's management plugin (nameko's test fixtures use its API)", up,
                lambda: _which("rabbitmq-plugins") is not None,
                lambda: _run("rabbitmq-plugins", "enable", "--quiet", "rabbitmq_management"),
                "it comes with rabbitmq-server", wait=60)


def redis():
    host, port = _address(REDIS_URI, 6379)

    def up():
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return Need("Redis", up, lambda: _which("redis-server") is not None,
                lambda: _run("redis-server", "--daemonize", "yes", "--bind", host,
                             "--port", str(port), "--save", "", "--appendonly", "no"),
                "apt-get install redis-server", wait=15)


NEEDS = {
    "postgresql": lambda: [postgresql(), postgresql_database()],
    "rabbitmq": lambda: [rabbitmq(), rabbitmq_management()],
    "redis": lambda: [redis()],
}


def needs(names):
    """The Need objects for ``names`` (postgresql, rabbitmq, redis), in that order."""
    unknown = set(names) - set(NEEDS) - {"chromium"}
    if unknown:
        raise ValueError(f"unknown: {', '.join(sorted(unknown))}")
    return [need for name in NEEDS if name in names for need in NEEDS[name]()]


def browser_note(which=_which, is_root=None, install=None, say=print):
    """None when chromium and chromedriver are there (installed when root), else the note."""
    def present():
        return bool(which("chromium") and which("chromedriver"))

    if present():
        return None
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    if not is_root or not which("apt-get"):
        return BROWSER_SKIP
    say("make test: installing chromium and chromium-driver (the dashboard's browser test)")
    try:
        (install or _apt_install)("chromium", "chromium-driver")
    except StartFailed as exc:
        return f"{BROWSER_SKIP}; apt-get failed: {exc}"
    return None if present() else BROWSER_SKIP


def _apt_install(*packages):
    _run("apt-get", "update", "-qq", timeout=600)
    _run("apt-get", "install", "-y", "-qq", *packages, timeout=900)


def main(argv=None):
    names = list(sys.argv[1:] if argv is None else argv)
    try:
        wanted = needs(names)
    except ValueError as exc:
        print(f"usage: python -m deploy.local.testenv [postgresql] [rabbitmq] [redis] "
              f"[chromium] ({exc})", file=sys.stderr)
        return 2
    for need in wanted:
        problem = ensure(need)
        if problem is not None:
            print(f"make test: {problem}", file=sys.stderr)
            return 2
    if "chromium" in names:
        note = browser_note()
        if note is not None:
            print(f"make test: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
