"""Append-only: the database itself refuses to change or drop entries (PostgreSQL and SQLite)."""

import ast
import sqlite3
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

import audit
from audit.service import AuditService
from tests.support.audit_helpers import (
    EventPublisher,
    Trail,
    envelope,
    record_many,
    wait_for_entries,
)


@pytest.fixture
def trail(fresh_pg_uri, start_service, rpc):
    start_service(AuditService, DB_URI=fresh_pg_uri)
    made = Trail(fresh_pg_uri)
    made.entries = record_many(rpc, 3)
    yield made
    made.close()


@pytest.mark.parametrize("statement", [
    "UPDATE audit.entries SET data = '{}' WHERE seq = 2",
    "UPDATE audit.entries SET outcome = 'failure'",
    "DELETE FROM audit.entries WHERE seq = 3",
    "DELETE FROM audit.entries",
    "TRUNCATE audit.entries",
    "DELETE FROM audit.chain_head",
    "UPDATE audit.chain_head SET seq = 1",
    "TRUNCATE audit.chain_head",
])
def test_postgres_refuses_to_change_or_remove_entries(trail, rpc, statement):
    with pytest.raises(sa.exc.DBAPIError) as caught:
        trail.execute(statement)
    assert "refused" in str(caught.value.orig)
    assert trail.count() == 3
    assert rpc.call("audit", "verify")["ok"] is True


def test_the_migration_documents_the_grants_a_deployment_gives_audit():
    [migration] = (Path(audit.__file__).parent / "migrations" / "versions").glob("0001_*.py")
    doc = ast.get_docstring(ast.parse(migration.read_text()))
    assert "GRANT SELECT, INSERT ON audit.entries TO audit_app" in doc
    assert "never UPDATE, DELETE" in doc


def test_audit_code_has_no_path_that_updates_or_deletes_entries():
    for module in Path(audit.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("update", "delete") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("ENTRIES", "Entry"):
                pytest.fail(f"{module.name}:{node.lineno} changes entries")
            if isinstance(node, ast.Attribute) and node.attr == "delete" and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "session":
                pytest.fail(f"{module.name}:{node.lineno} deletes through the session")


def test_on_sqlite_the_trail_works_and_refuses_changes_too(start_service, rpc, amqp_uri,
                                                          tmp_path):
    db_file = tmp_path / "audit.db"
    container = start_service(AuditService, DB_URI=f"sqlite:///{db_file}",
                              AUDIT_BATCH_WAIT_MS=20)
    made = record_many(rpc, 4)
    publisher = EventPublisher(amqp_uri)
    event = publisher.publish(envelope("user.created", data={"password": "p"}))
    publisher.close()
    [consumed] = wait_for_entries(rpc, 1, request_id=event["request_id"])
    assert consumed["seq"] == 5 and consumed["prev_hash"] == made[-1]["hash"]
    assert consumed["data"] == {"password": "[REDACTED]"}
    assert rpc.call("audit", "verify")["ok"] is True

    with sqlite3.connect(db_file) as conn:
        for statement in ("UPDATE entries SET outcome = 'failure' WHERE seq = 2",
                          "DELETE FROM entries WHERE seq = 2", "DELETE FROM chain_head"):
            with pytest.raises(sqlite3.IntegrityError, match="refused"):
                conn.execute(statement)
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET outcome = 'failure' WHERE seq = 2")
    report = rpc.call("audit", "verify")
    assert (report["problem"], report["first_bad"]["seq"]) == ("altered", 2)

    address = container.config["WEB_SERVER_ADDRESS"]
    health = requests.get(f"http://{address}/health", timeout=5).json()
    assert health["status"] == "healthy"
    assert health["consumer"]["connected"] is True
    assert health["consumer"]["written"] == 1
