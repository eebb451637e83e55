"""`make run`'s launcher (deploy/local/run.py) driven as a user would: start, use, Ctrl-C."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from nameko.testing.utils import find_free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("identity", "auth", "authz", "audit")


def _children(pid):
    """Every descendant pid of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def start_launcher(amqp_uri, tmp_path):
    """Start `make run`'s launcher with ``extra`` environment; (process, env, output up to
    its banner)."""
    started = []

    def start(**extra):
        ports = {f"{s.upper()}_PORT": str(find_free_port()) for s in SERVICES}
        env = dict(os.environ, PLINTH_VAR_DIR=str(tmp_path), AMQP_URI=amqp_uri,
                   GATEWAY_PORT=str(find_free_port()), CONSUL_PORT=str(find_free_port()),
                   ARGON2_MEMORY_KIB="1024", ARGON2_TIME_COST="1", PYTHONPATH=str(ROOT),
                   **ports, **extra)
        proc = subprocess.Popen([sys.executable, "-m", "deploy.local.run"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        output = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        return proc, env, "".join(output)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            for pid in _children(proc.pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launcher(start_launcher):
    return start_launcher()


def test_make_run_starts_everything_serves_and_stops_cleanly_on_ctrl_c(launcher, tmp_path):
    proc, env, output = launcher
    assert "Plinth is running." in output, output
    for name in (*SERVICES, "gateway", "consul"):
        assert f"{name:<9} ready" in output
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    for url in (f"{gateway}/api/v1", f"{gateway}/docs", f"{gateway}/status"):
        assert url in output
    assert "admin@plinth.local" in output

    # the bootstrap administrator can log in through the gateway, as the banner says
    password = (tmp_path / "bootstrap-admin-password").read_text().strip()
    assert password not in output, "the banner must not print the password itself"
    deadline = time.monotonic() + 20
    while True:
        try:
            status, tokens = _post(f"{gateway}/api/v1/auth/login",
                                   {"email": "admin@plinth.local", "password": password})
            break
        except urllib.error.HTTPError:  # the bootstrap may still be finishing
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert status == 200 and tokens["token_type"] == "Bearer"

    # every service registered with the (stand-in) Consul and passes its check
    consul = f"http://127.0.0.1:{env['CONSUL_PORT']}"
    for service in SERVICES:
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(f"{consul}/v1/health/service/{service}?passing",
                                        timeout=5) as response:
                if json.loads(response.read()):
                    break
            assert time.monotonic() < deadline, f"{service} never passed its check"
            time.sleep(0.5)

    children = _children(proc.pid)
    assert len(children) >= 6
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "plinth: stopped" in rest
    assert not [pid for pid in children if _alive(pid)], "processes left running"
    for service in SERVICES:
        log = (tmp_path / "run" / f"{service}.log").read_text()
        assert "deregistered" in log, f"{service} did not deregister on the way out"


def test_make_run_says_plainly_when_the_bootstrap_password_is_refused(start_launcher):
    proc, env, output = start_launcher(BOOTSTRAP_ADMIN_PASSWORD="tooshort")
    assert "Plinth is running." in output, output
    lines = [line for line in output.splitlines() if "NO ADMINISTRATOR" in line]
    # said when authz refused it, and again in the banner, with the reason and what to do
    assert len(lines) == 2, output
    assert lines[0] == ("plinth: NO ADMINISTRATOR: authz did not create admin@plinth.local: "
                        "password does not meet the password policy (password: must be at "
                        "least 10 characters).")
    assert "make admin EMAIL=" in output and "Log in with" not in output
    assert "tooshort" not in output
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest


def test_make_run_names_a_service_that_fails_to_start(launcher_env_broken):
    proc, output = launcher_env_broken
    assert proc.returncode == 1
    assert "auth failed to start" in output
    assert "Last lines of" in output and "AUTH_KEY_ENCRYPTION_SECRET" in output


@pytest.fixture
def launcher_env_broken(production_amqp_uri, tmp_path):
    env = dict(os.environ, PLINTH_VAR_DIR=str(tmp_path), AMQP_URI=production_amqp_uri,
               GATEWAY_PORT=str(find_free_port()), CONSUL_PORT=str(find_free_port()),
               PYTHONPATH=str(ROOT), PLINTH_READY_TIMEOUT="30",
               # auth refuses a short key-encryption secret in production: it fails at start
               PLINTH_ENV="production", AUTH_KEY_ENCRYPTION_SECRET="too-short",
               **{f"{s.upper()}_PORT": str(find_free_port()) for s in SERVICES},
               # the other services' production credentials are real: only auth's secret fails
               **{f"{s.upper()}_SERVICE_CREDENTIAL": secrets.token_urlsafe(32)
                  for s in SERVICES})
    result = subprocess.run([sys.executable, "-m", "deploy.local.run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, result.stdout + result.stderr
