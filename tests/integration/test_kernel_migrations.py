"""Migrations at start: exactly once under concurrency; unknown revisions refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.service import IdentityService
from shared import migrations
from shared.db import make_engine

ROOT = Path(__file__).resolve().parents[2]


def _migrate_processes(uri, count):
    env = dict(os.environ, IDENTITY_DB_URI=uri, PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING")
    procs = [subprocess.Popen([sys.executable, "-m", "shared.migrations", "identity"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(count)]
    return [(p.wait(timeout=60), *p.communicate()) for p in procs]


def test_several_processes_migrating_at_once_migrate_exactly_once(fresh_pg_uri):
    results = _migrate_processes(fresh_pg_uri, 4)
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    outputs = [out for _, out, _ in results]
    assert sum("migrated to" in out for out in outputs) == 1, outputs
    assert sum("already at" in out for out in outputs) == 3, outputs
    engine = make_engine(fresh_pg_uri, "identity")
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM identity.alembic_version")).all()
        tables = set(sa.inspect(conn).get_table_names(schema="identity"))
    assert len(versions) == 1
    assert {"users", "outbox", "processed_events", "alembic_version"} <= tables
    engine.dispose()


def test_a_database_at_an_unknown_revision_is_refused_with_what_to_do(fresh_pg_uri,
                                                                      service_config,
                                                                      container_factory):
    engine = make_engine(fresh_pg_uri, "identity")
    migrations.upgrade("identity", engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE identity.alembic_version SET version_num = 'f00dfeedbeef'"))
    with pytest.raises(migrations.SchemaMismatch) as info:
        migrations.upgrade("identity", engine)
    assert "f00dfeedbeef" in str(info.value) and "does not know" in str(info.value)
    container = container_factory(IdentityService, service_config(db_uri=fresh_pg_uri))
    with pytest.raises(migrations.SchemaMismatch):
        container.start()
    engine.dispose()


def test_without_auto_migration_a_behind_database_is_refused(fresh_pg_uri):
    engine = make_engine(fresh_pg_uri, "identity")
    with pytest.raises(migrations.SchemaMismatch) as info:
        migrations.ensure_current("identity", engine)
    assert "make migrate" in str(info.value)
    migrations.upgrade("identity", engine)
    migrations.ensure_current("identity", engine)
    engine.dispose()


def test_sqlite_databases_migrate_without_schemas(tmp_path):
    uri = f"sqlite:///{tmp_path}/identity.db"
    engine = make_engine(uri, "identity")
    assert migrations.upgrade("identity", engine) is True
    assert migrations.upgrade("identity", engine) is False
    current, heads = migrations.status("identity", engine)
    assert current == heads
    with engine.connect() as conn:
        assert {"users", "outbox", "alembic_version"} <= set(sa.inspect(conn).get_table_names())
    engine.dispose()
