"""`make test`'s set-up (deploy/local/testenv.py) starting a real, stopped service: a Redis of
the test's own on a free port (the machine's shared Redis is never touched)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis(port, command):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(command)
        return sock.recv(64)


@pytest.fixture
def stopped_redis_port():
    port = _free_port()
    yield port
    try:
        _redis(port, b"SHUTDOWN NOSAVE\r\n")
    except OSError:
        pass  # it never started, or is already gone


def test_an_installed_but_stopped_redis_is_started_before_the_tests(stopped_redis_port):
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               PLINTH_TEST_REDIS=f"redis://127.0.0.1:{stopped_redis_port}/0")
    result = subprocess.run([sys.executable, "-m", "deploy.local.testenv", "redis"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["make test: starting Redis", "make test: Redis is up"]
    assert _redis(stopped_redis_port, b"PING\r\n").startswith(b"+PONG")
    # a second run finds it up and says nothing
    again = subprocess.run([sys.executable, "-m", "deploy.local.testenv", "redis"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_missing_test_database_is_created(pg_uri):
    import uuid

    import sqlalchemy as sa

    name = f"plinth_testenv_{uuid.uuid4().hex[:8]}"
    uri = pg_uri.rsplit("/", 1)[0] + "/" + name
    env = dict(os.environ, PYTHONPATH=str(ROOT), PLINTH_TEST_PG=uri)
    try:
        result = subprocess.run([sys.executable, "-m", "deploy.local.testenv", "postgresql"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"make test: creating the test database ({uri})" in result.stdout
    finally:
        admin = sa.create_engine(pg_uri.replace("postgresql://", "postgresql+psycopg2://", 1),
                                 isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
