"""Per-service Alembic migrations: applied at start under a lock, refused when unknown.

Each service keeps its own Alembic environment in ``<service>/migrations`` whose ``env.py``
calls ``run_env``. ``python -m shared.migrations [service ...]`` (``make migrate``) applies
them by hand.
"""

import contextlib
import fcntl
import importlib
import logging
import sys
import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from shared import config as cfg
from shared.engine import make_engine
from shared.logs import configure

__all__ = ["upgrade", "ensure_current", "status", "run_env", "SchemaMismatch", "alembic_config"]

log = logging.getLogger(__name__)


class SchemaMismatch(RuntimeError):
    """The database is at a revision this code does not know, or behind with no auto-upgrade."""


def migrations_dir(service, migrations=None):
    if migrations:
        return Path(migrations)
    package = importlib.import_module(service)
    return Path(package.__file__).parent / "migrations"


def alembic_config(service, migrations=None, connection=None):
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service, migrations)))
    config.attributes["schema"] = service
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _version_schema(connection, service):
    return None if connection.dialect.name == "sqlite" else service


def _current(connection, service):
    context = MigrationContext.configure(
        connection, opts={"version_table_schema": _version_schema(connection, service)})
    return set(context.get_current_heads())


def status(service, engine, migrations=None):
    """(current heads, code heads) of ``service``'s schema."""
    script = ScriptDirectory.from_config(alembic_config(service, migrations))
    with engine.connect() as conn:
        return _current(conn, service), set(script.get_heads())


def _check_known(service, current, script, where):
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:
            raise SchemaMismatch(
                f"{service}: the database ({where}) is at migration {revision}, which this "
                f"release of {service} does not know - it was migrated by a newer release. "
                f"Run the release that created {revision}, or restore a backup made before "
                f"it; this process will not start against it."
            ) from None


def _redacted(engine):
    return engine.url.render_as_string(hide_password=True)


@contextlib.contextmanager
def _migration_lock(engine, service):
    """Serialise migrations of one schema across processes (several instances start at once)."""
    if engine.dialect.name == "postgresql":
        key = zlib.crc32(f"plinth:migrate:{service}".encode())
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        db_file = engine.url.database or service
        lock_path = Path(f"{db_file}.migrate.lock") if db_file != ":memory:" else None
        handle = open(lock_path, "w") if lock_path else None
        try:
            if handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
            with engine.connect() as conn:
                yield conn
        finally:
            if handle:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()


def upgrade(service, engine, migrations=None, revision="head"):
    """Bring ``service``'s schema to ``revision``, exactly once however many processes try."""
    script = ScriptDirectory.from_config(alembic_config(service, migrations))
    with _migration_lock(engine, service) as conn:
        current = _current(conn, service)
        _check_known(service, current, script, _redacted(engine))
        if current == set(script.get_heads()) and revision == "head":
            return False
        log.info("migrating %s from %s to %s", service, sorted(current) or "empty", revision)
        command.upgrade(alembic_config(service, migrations, connection=conn), revision)
        conn.commit()
        return True


def ensure_current(service, engine, migrations=None):
    current, heads = status(service, engine, migrations)
    script = ScriptDirectory.from_config(alembic_config(service, migrations))
    _check_known(service, current, script, _redacted(engine))
    if current != heads:
        raise SchemaMismatch(
            f"{service}: the database is at {sorted(current) or 'no revision'} but this release "
            f"needs {sorted(heads)}; run `make migrate` (or start with MIGRATE_ON_START=true)."
        )


def run_env(metadata):
    """The body of every service's ``migrations/env.py``."""
    from alembic import context  # alembic fills it in only while it runs an env.py

    config = context.config
    service = config.attributes.get("schema") or metadata.schema
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(cfg.db_uri(service), service)
        with engine.connect() as conn:
            _run_migrations(context, conn, metadata, service)
            conn.commit()
    else:
        _run_migrations(context, connection, metadata, service)


def _run_migrations(context, connection, metadata, service):
    sqlite = connection.dialect.name == "sqlite"
    if not sqlite:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{service}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=None if sqlite else service,
        include_schemas=not sqlite,
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _services_here():
    """Packages in the working directory that have their own migrations."""
    return sorted(p.parent.parent.name for p in Path.cwd().glob("*/migrations/env.py")
                  if (p.parent.parent / "service.py").exists())


def main(argv=None):
    """``python -m shared.migrations [service ...]``: migrate the named (or all core) services."""
    configure()
    services = (argv if argv is not None else sys.argv[1:]) or _services_here()
    for service in services:
        try:
            importlib.import_module(service)
        except ImportError:
            print(f"{service}: no such service package, skipped", file=sys.stderr)
            continue
        engine = make_engine(cfg.db_uri(service), service)
        changed = upgrade(service, engine)
        current, _ = status(service, engine)
        print(f"{service}: {'migrated to' if changed else 'already at'} {', '.join(current)} "
              f"({_redacted(engine)})")
        engine.dispose()


if __name__ == "__main__":
    main()
