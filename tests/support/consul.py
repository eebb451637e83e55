"""A Consul agent for tests -- the real ``consul agent -dev`` when a ``consul`` binary is on PATH,
else the stand-in (deploy/local/consul_standin.py) in test mode -- plus helpers around it.

A test module gets the fixtures by importing them (they register under the short names)::

    from tests.support.consul import check_target_fixture, consul_agent_fixture  # noqa: F401

``consul_agent`` is a started ``ConsulAgent`` (stopped after the test); ``.stop()``,
``.kill()`` and ``.start()`` (same port) let a test take Consul away and bring it back.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from nameko.testing.utils import find_free_port

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ConsulAgent", "CheckTarget", "wait_until", "consul_agent_fixture",
           "check_target_fixture"]


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns something truthy; return that, or fail the test."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


class ConsulAgent:
    """One Consul agent process on free ports, which a test may stop and start again."""

    def __init__(self, log_dir, test_mode=True):
        self.binary = shutil.which("consul")
        self.real = self.binary is not None
        self.test_mode = test_mode
        self.port = find_free_port()
        self.log_path = Path(log_dir) / f"consul-{self.port}.log"
        self.proc = None
        if self.real:
            self._ports = {flag: find_free_port() for flag in (
                "-serf-lan-port", "-serf-wan-port", "-server-port", "-grpc-port")}
        # what this agent honours, so tests can size their deadlines
        self.min_deregister = 0.0 if (test_mode and not self.real) else 60.0
        self.reap_interval = 0.5 if (test_mode and not self.real) else 30.0

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.address}"

    def command(self):
        if self.real:
            command = [self.binary, "agent", "-dev", "-bind", "127.0.0.1",
                       "-client", "127.0.0.1", "-http-port", str(self.port), "-dns-port", "-1",
                       "-node", f"test-{self.port}"]
            for flag, port in self._ports.items():
                command += [flag, str(port)]
            return command
        command = [sys.executable, "-m", "deploy.local.consul_standin", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        return command + (["--test-mode"] if self.test_mode else [])

    def start(self, timeout=20.0):
        log = open(self.log_path, "a")  # the process owns it until it exits
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._has_leader, timeout=timeout, message=f"Consul on {self.address} up")
        return self

    def _has_leader(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"Consul exited with {self.proc.returncode}: {self.log()[-2000:]}")
        response = requests.get(f"{self.url}/v1/status/leader", timeout=1)
        return response.ok and response.json() not in ("", None)

    def stop(self):
        """Stop the agent as an operator would (SIGTERM); it forgets every registration."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self):
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    # -- the HTTP API, raw, for assertions --------------------------------------------------

    def get(self, path, **params):
        return requests.get(f"{self.url}{path}", params=params, timeout=15)

    def put(self, path, body=None, **params):
        data = json.dumps(body) if body is not None else None
        return requests.put(f"{self.url}{path}", data=data, params=params, timeout=15)

    def checks(self):
        return self.get("/v1/agent/checks").json()

    def services(self):
        return self.get("/v1/agent/services").json()

    def health(self, name, passing=False):
        params = {"passing": "1"} if passing else {}
        return self.get(f"/v1/health/service/{name}", **params).json()

    def check_status(self, service_id):
        """The status of the service's own check(s) on the agent, or None if unregistered."""
        own = [c["Status"] for c in self.checks().values() if c["ServiceID"] == service_id]
        return own[0] if len(own) == 1 else (None if not own else own)

    def register_http(self, service_id, name, url, interval="1s", timeout="1s",
                      deregister_after=None, **fields):
        check = {"HTTP": url, "Interval": interval, "Timeout": timeout}
        if deregister_after:
            check["DeregisterCriticalServiceAfter"] = deregister_after
        body = {"ID": service_id, "Name": name, "Address": "127.0.0.1", "Port": 1,
                "Check": check, **fields}
        response = self.put("/v1/agent/service/register", body)
        assert response.status_code == 200, response.text
        return response


class CheckTarget:
    """An HTTP endpoint whose answer a test sets: what a service's /health/ready would say."""

    def __init__(self):
        self.status, self.body, self.delay = 200, "ok", 0.0
        self.hits = 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # the stdlib's naming
                target.hits += 1
                if target.delay:
                    time.sleep(target.delay)
                data = target.body.encode()
                try:
                    self.send_response(target.status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the checker gave up (timeout)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/health/ready"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, status, body="", delay=0.0):
        self.status, self.body, self.delay = status, body, delay

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="consul_agent")
def consul_agent_fixture(tmp_path):
    agent = ConsulAgent(tmp_path).start()
    yield agent
    agent.stop()
    print(agent.log()[-4000:])  # shown when the test failed


@pytest.fixture(name="check_target")
def check_target_fixture():
    target = CheckTarget()
    yield target
    target.close()
