"""Every service's /metrics (shared.metrics): the outbox backlog, and its health output."""

import time

import requests
import sqlalchemy as sa

from identity.models import Base as IdentityBase
from identity.service import IdentityService
from shared import outbox
from shared.db import make_engine


def _get(container, path):
    return requests.get(f"http://{container.config['WEB_SERVER_ADDRESS']}{path}", timeout=5)


def _samples(text):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_readiness_and_health_show_the_outbox_backlog(start_service, fresh_pg_uri):
    container = start_service(IdentityService, DB_URI=fresh_pg_uri, OUTBOX_MAX_ATTEMPTS=1,
                              OUTBOX_MAX_EVENT_BYTES=400)  # the retention task fits
    engine = make_engine(fresh_pg_uri, "identity")
    table = IdentityBase.metadata.tables["identity.outbox"]
    with engine.begin() as conn:  # an event too large to publish: parked after one attempt
        env = outbox.envelope("identity", "thing.huge", "s", {"blob": "x" * 600}, {})
        conn.execute(table.insert().values(event_id=env["event_id"], event_type="thing.huge",
                                           payload=env, created_at=outbox.utcnow(), attempts=0))
    deadline = time.monotonic() + 10
    while True:
        metrics = _samples(_get(container, "/metrics").text)
        if metrics.get("plinth_outbox_parked") == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert metrics["plinth_outbox_parked"] == 1 and metrics["plinth_outbox_pending"] == 1
    ready = _get(container, "/health/ready")
    assert ready.status_code == 200, "parked rows must not take the instance out of service"
    assert ready.json()["outbox"] == {"pending": 1, "parked": 1}
    detail = _get(container, "/health").json()
    assert detail["status"] == "degraded"
    assert detail["checks"]["outbox"]["detail"] == "1 pending, 1 parked"
    with engine.connect() as conn:
        assert "OUTBOX_MAX_EVENT_BYTES" in conn.execute(
            sa.select(table.c.last_error)).scalar()
    engine.dispose()
