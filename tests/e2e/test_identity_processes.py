"""identity as users run it: `nameko run` (two instances on one database) and `nameko shell`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from kombu import Connection
from nameko.testing.utils import find_free_port

from tests.helpers import STRONG_PASSWORD, new_email

ROOT = Path(__file__).resolve().parents[2]


def _env(amqp_uri, db_uri, port):
    return dict(os.environ, AMQP_URI=amqp_uri, IDENTITY_DB_URI=db_uri, PYTHONPATH=str(ROOT),
                IDENTITY_WEB_ADDRESS=f"127.0.0.1:{port}", ARGON2_MEMORY_KIB="1024",
                ARGON2_TIME_COST="1")


@pytest.fixture
def instances(amqp_uri, fresh_pg_uri, tmp_path):
    procs = []
    for n in range(2):
        port = find_free_port()
        log = open(tmp_path / f"identity-{n}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nameko", "run", "--config", "config/identity.yaml",
             "identity.service"], cwd=ROOT, env=_env(amqp_uri, fresh_pg_uri, port),
            stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, port, log.name))
    deadline = time.monotonic() + 60
    for proc, port, log in procs:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, open(log).read()[-3000:]
            assert time.monotonic() < deadline, open(log).read()[-3000:]
            time.sleep(0.2)
    yield procs
    for proc, _, _ in procs:
        proc.send_signal(signal.SIGTERM)
    for proc, _, _ in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_instances_serve_one_database_side_by_side(instances, rpc):
    emails = [new_email("pair") for _ in range(20)]
    for email in emails:
        rpc.call("identity", "create_user", kwargs={"email": email, "password": STRONG_PASSWORD})
    found = rpc.call("identity", "list_users", kwargs={"q": "pair-", "limit": 100})["items"]
    assert sorted(u["email"] for u in found) == sorted(emails)
    for _, port, _ in instances:
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["status"] == "healthy"
    # both instances consume the one RPC queue, so RabbitMQ spreads the calls between them
    with Connection(rpc.amqp_uri) as conn:
        _, _, consumers = conn.channel().queue_declare("rpc-identity", passive=True)
    assert consumers == 2


def test_nameko_shell_with_piped_commands_calls_the_service(instances, amqp_uri, fresh_pg_uri):
    email = new_email("shell")
    script = (f"user = n.rpc.identity.create_user(email={email!r}, "
              f"password={STRONG_PASSWORD!r})\n"
              "print('created', user['email'], user['status'])\n")
    result = subprocess.run(
        [sys.executable, "-m", "nameko", "shell", "--config", "config/identity.yaml"],
        input=script, cwd=ROOT, env=_env(amqp_uri, fresh_pg_uri, find_free_port()),
        capture_output=True, text=True, timeout=60)
    assert f"created {email} active" in result.stdout, result.stdout + result.stderr


def test_sigterm_stops_an_instance_cleanly(instances):
    proc, port, log = instances[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, open(log).read()[-3000:]
