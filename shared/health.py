"""Liveness, readiness and detailed health of a service process."""

import logging
import os
import time
from dataclasses import dataclass

import eventlet
import sqlalchemy as sa
from kombu import Connection
from nameko.extensions import DependencyProvider

from shared import config as cfg
from shared import migrations
from shared.hub import Hub

__all__ = ["Health", "HealthReport", "check_database", "check_broker", "VERSION"]

log = logging.getLogger(__name__)
VERSION = os.environ.get("PLINTH_VERSION", "0.1.0")
CHECK_TIMEOUT = 2.0
CACHE_SECONDS = 1.0


@dataclass
class Check:
    name: str
    ok: bool
    ms: float
    detail: str = ""

    def to_dict(self):
        return {"status": "up" if self.ok else "down", "response_ms": round(self.ms, 2),
                "detail": self.detail}


def _timed(name, probe, timeout=CHECK_TIMEOUT):
    started = time.perf_counter()
    try:
        with eventlet.Timeout(timeout):
            detail = probe() or ""
        ok = True
    except eventlet.Timeout:
        ok, detail = False, f"timed out after {timeout:.0f}s"
    except Exception as exc:  # noqa: BLE001 - a failed probe is a result, not a crash
        ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return Check(name, ok, (time.perf_counter() - started) * 1000, detail)


def check_database(engine):
    def probe():
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    return probe


def check_migrations(database):
    def probe():
        current, heads = migrations.status(database.container.service_name, database.engine,
                                           database.migrations)
        if current != heads:
            raise RuntimeError(f"at {sorted(current)}, code needs {sorted(heads)}")
        return ",".join(sorted(current))
    return probe


def check_broker(amqp_uri):
    def probe():
        with Connection(amqp_uri, connect_timeout=CHECK_TIMEOUT,
                        ssl=cfg.amqp_ssl() or False) as conn:
            conn.ensure_connection(max_retries=1)
    return probe


class HealthReport:
    """Runs the checks (cached for a second: a check storm costs one probe)."""

    def __init__(self, provider):
        self.provider = provider

    def live(self):
        return {"status": "alive", "state": self.provider.state}

    def checks(self):
        return self.provider.run_checks()

    def ready(self):
        checks = self.checks()
        ready = self.provider.state == "running" and all(c.ok for c in checks)
        # the outbox backlog never fails readiness (parked rows are not this instance's
        # fault), but Consul keeps this body as the check's output, which /status shows
        return ready, {"status": "ready" if ready else "not ready", "state": self.provider.state,
                       "checks": {c.name: c.to_dict() for c in checks},
                       **self.provider.outbox_info(), **self.provider.hub.ready_info()}

    def detail(self):
        checks = self.checks()
        advisories = self.provider.hub.run_advisories() + self.provider.outbox_checks()
        failed = [c for c in checks if not c.ok]
        if not failed and self.provider.state == "running":
            status = "healthy" if all(a.ok for a in advisories) else "degraded"
        elif failed and any(c.name in ("database", "broker") for c in failed):
            status = "unhealthy"
        else:
            status = "degraded"
        provider = self.provider
        return status, {
            "status": status,
            "service": provider.container.service_name,
            "instance": provider.instance_id,
            "version": VERSION,
            "state": provider.state,
            "uptime_s": round(time.monotonic() - provider.started, 1),
            "pid": os.getpid(),
            "checks": {c.name: c.to_dict() for c in checks + advisories},
            **provider.outbox_info(),
            **provider.hub.info(),
            **provider.hub.ready_info(),
        }


class Health(DependencyProvider):
    """Tracks the lifecycle state and answers health checks for the service's web server.

    The other providers show themselves through the container's ``Hub``: ``add_info`` (a
    section of ``/health``), ``add_ready_info`` (also in the readiness body, which Consul keeps
    as the check's output for /status: stuck sagas) and ``add_advisory`` (a check shown in
    ``/health`` that makes it "degraded" but never fails readiness: a working instance must
    not leave service because Consul is away).
    """

    hub = Hub()

    def __init__(self):
        self.state = "starting"
        self.started = time.monotonic()
        self.instance_id = None
        self._cache = (0.0, [])

    def setup(self):
        self.started = time.monotonic()
        self.instance_id = f"{self.container.service_name}-{os.uname().nodename}-{os.getpid()}"
        self.amqp_uri = self.container.config[cfg.AMQP_URI_KEY]
        cfg.require_strong_credentials(self.container.config, {cfg.AMQP_URI_KEY: self.amqp_uri})
        self.hub.add_stopping(lambda timeout: self.begin_stopping(), first=True)

    def start(self):
        self.state = "running"

    def stop(self):
        self.state = "stopping"

    def kill(self):
        self.state = "stopping"

    def begin_stopping(self):
        """Fail readiness from the moment the container starts to stop (before the drain)."""
        self.state = "stopping"

    def outbox_info(self):
        backlogs = [db.relay.backlog() for db in self.hub.databases if db.relay is not None]
        return {"outbox": backlogs[0]} if backlogs else {}

    def outbox_checks(self):
        """Advisory: parked outbox rows make the service "degraded" (an operator must look)."""
        checks = []
        for backlog in self.outbox_info().values():
            parked = backlog["parked"] or 0
            checks.append(Check("outbox", parked == 0, 0.0,
                                f"{backlog['pending']} pending, {backlog['parked']} parked"))
        return checks

    def run_checks(self):
        stamp, checks = self._cache
        if time.monotonic() - stamp < CACHE_SECONDS and checks:
            return checks
        probes = [("broker", check_broker(self.amqp_uri))]
        for db in self.hub.databases:
            probes.append(("database", check_database(db.engine)))
            probes.append(("migrations", check_migrations(db)))
        pool = eventlet.GreenPool(len(probes))
        checks = list(pool.imap(lambda p: _timed(*p), probes))
        self._cache = (time.monotonic(), checks)
        return checks

    def get_dependency(self, worker_ctx):
        return HealthReport(self)
