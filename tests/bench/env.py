"""What a benchmark runs against: a fresh broker vhost and PostgreSQL database, and helpers
to start services as real `nameko run` processes."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
RABBIT_API = os.environ.get("PLINTH_RABBIT_API", "http://guest:guest@127.0.0.1:15672")
# one key-encryption secret for every benchmark: they share a database, so auth's stored keys
# must decrypt whichever benchmark starts auth
AUTH_SECRET = "bench-only-auth-key-encryption-secret-0123456789"


class BenchEnv:
    def __init__(self):
        self.vhost = f"plinth_bench_{uuid.uuid4().hex[:8]}"
        requests.put(f"{RABBIT_API}/api/vhosts/{self.vhost}", timeout=10).raise_for_status()
        requests.put(f"{RABBIT_API}/api/permissions/{self.vhost}/guest",
                     json={"configure": ".*", "write": ".*", "read": ".*"},
                     timeout=10).raise_for_status()
        self.amqp_uri = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        self.db_uri = create_database("plinth_bench")
        self.processes = []
        self.var = ROOT / "var" / "bench"
        self.var.mkdir(parents=True, exist_ok=True)

    def service_env(self, service, **extra):
        env = dict(os.environ)
        env.update({
            "AMQP_URI": self.amqp_uri,
            f"{service.upper()}_DB_URI": self.db_uri,
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        })
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start_service(self, service, port, **extra):
        """Start ``nameko run`` for ``service`` and wait until it is ready."""
        env = self.service_env(service, **{f"{service.upper()}_WEB_ADDRESS": f"127.0.0.1:{port}"},
                               **extra)
        log = open(self.var / f"{service}-{port}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nameko", "run", "--config", f"config/{service}.yaml",
             f"{service}.service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).ok:
                    return proc
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{service} did not become ready; see {log.name}")

    def close(self):
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        requests.delete(f"{RABBIT_API}/api/vhosts/{self.vhost}", timeout=10)
        drop_database(self.db_uri)
