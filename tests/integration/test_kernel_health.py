"""Health endpoints: readiness follows the database, the broker and the migrations."""

import time

import pytest
import requests
import sqlalchemy as sa

from identity.service import IdentityService
from shared.db import make_engine


def _url(container, path):
    return f"http://{container.config['WEB_SERVER_ADDRESS']}{path}"


def _wait_status(url, status, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(url, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_health_reports_every_dependency_with_timings(start_service):
    container = start_service(IdentityService)
    assert requests.get(_url(container, "/health/live"), timeout=5).json()["status"] == "alive"
    ready = requests.get(_url(container, "/health/ready"), timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    detail = requests.get(_url(container, "/health"), timeout=5).json()
    assert detail["status"] == "healthy" and detail["service"] == "identity"
    assert set(detail["checks"]) == {"broker", "database", "migrations", "outbox"}
    assert all(c["response_ms"] >= 0 for c in detail["checks"].values())
    assert detail["version"] and detail["uptime_s"] >= 0 and detail["state"] == "running"


def test_readiness_fails_while_the_database_is_unreachable_and_recovers(start_service, pg_uri,
                                                                        fault_proxy):
    dbname = pg_uri.rsplit("/", 1)[1]
    proxy = fault_proxy(5432)
    container = start_service(IdentityService,
                              DB_URI=f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}")
    ready_url = _url(container, "/health/ready")
    assert requests.get(ready_url, timeout=5).status_code == 200
    proxy.cut()
    down = _wait_status(ready_url, 503)
    assert down.status_code == 503
    assert down.json()["checks"]["database"]["status"] == "down"
    assert down.json()["checks"]["broker"]["status"] == "up"
    detail = requests.get(_url(container, "/health"), timeout=5)
    assert detail.status_code == 503 and detail.json()["status"] == "unhealthy"
    assert requests.get(_url(container, "/health/live"), timeout=5).status_code == 200
    proxy.restore()
    assert _wait_status(ready_url, 200).status_code == 200


def test_readiness_fails_while_the_broker_is_unreachable_and_rpc_recovers(start_service, amqp_uri,
                                                                           fault_proxy, rpc):
    vhost = amqp_uri.rsplit("/", 1)[1]
    proxy = fault_proxy(5672)
    container = start_service(
        IdentityService, AMQP_URI=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
    ready_url = _url(container, "/health/ready")
    assert requests.get(ready_url, timeout=5).status_code == 200
    proxy.cut()
    down = _wait_status(ready_url, 503)
    assert down.json()["checks"]["broker"]["status"] == "down"
    proxy.restore()
    assert _wait_status(ready_url, 200).status_code == 200
    # the service's own consumer reconnects by itself and answers calls again
    deadline = time.monotonic() + 20
    while True:
        try:
            assert "items" in rpc.call("identity", "list_users", kwargs={"limit": 1}, timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_readiness_fails_when_migrations_are_behind(start_service, fresh_pg_uri):
    container = start_service(IdentityService, DB_URI=fresh_pg_uri)
    engine = make_engine(fresh_pg_uri, "identity")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM identity.alembic_version"))
    down = _wait_status(_url(container, "/health/ready"), 503)
    assert down.json()["checks"]["migrations"]["status"] == "down"
    engine.dispose()


def test_calls_during_a_database_outage_fail_as_unavailable_and_recover(start_service, pg_uri,
                                                                        fault_proxy, rpc):
    from shared.errors import Unavailable

    dbname = pg_uri.rsplit("/", 1)[1]
    proxy = fault_proxy(5432)
    start_service(IdentityService, DB_URI=f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}")
    assert "items" in rpc.call("identity", "list_users", kwargs={"limit": 1})
    proxy.cut()
    for _ in range(3):
        with pytest.raises(Unavailable):
            rpc.call("identity", "list_users", kwargs={"limit": 1}, timeout=15)
    proxy.restore()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert "items" in rpc.call("identity", "list_users", kwargs={"limit": 1})
            break
        except Unavailable:
            assert time.monotonic() < deadline, "did not recover without a restart"
            time.sleep(0.2)


def test_a_service_in_production_refuses_rabbitmqs_guest_account(start_service):
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="AMQP_URI uses RabbitMQ's guest account"):
        start_service(IdentityService, PLINTH_ENV="production")


def test_a_service_in_production_starts_with_credentials_of_its_own(production_amqp_uri,
                                                                    start_service):
    container = start_service(IdentityService, PLINTH_ENV="production",
                              AMQP_URI=production_amqp_uri)
    assert _wait_status(_url(container, "/health/ready"), 200).status_code == 200
