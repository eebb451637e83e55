"""Engines: one per service schema, on PostgreSQL or (for development) SQLite."""

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = ["make_engine", "is_sqlite"]


def _green_psycopg():
    """Make psycopg2 yield to eventlet's hub while it waits on the network, if eventlet is on."""
    try:
        from eventlet import patcher
    except ImportError:  # pragma: no cover - eventlet is a dependency
        return
    if patcher.is_monkey_patched("socket"):
        from psycogreen.eventlet import patch_psycopg

        patch_psycopg()


def is_sqlite(engine_or_url):
    url = getattr(engine_or_url, "url", engine_or_url)
    return make_url(str(url) if not hasattr(url, "get_backend_name") else url) \
        .get_backend_name() == "sqlite"


def _normalise(uri):
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://"):]
    if uri.startswith("postgresql://"):
        uri = "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def make_engine(uri, schema, pool_size=10, application_name=None):
    """An engine whose tables live in ``schema``.

    On PostgreSQL tables are created in that schema. SQLite has no schemas, so the schema is
    translated away and the tables live in the service's own database file. Statement
    parameters never appear in errors (``hide_parameters``).
    """
    url = make_url(_normalise(uri))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, schema)
    _green_psycopg()
    return sa.create_engine(
        url,
        # a failed statement's error (logged with the worker's traceback) must not carry its
        # values: they include password hashes, token hashes and personal data
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        # no pre-ping (a round trip per checkout): a connection found dead raises once and
        # SQLAlchemy then replaces the whole pool, so the service recovers without a restart
        pool_pre_ping=False,
        pool_recycle=1800,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 3,
            "application_name": application_name or f"plinth-{schema}",
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        },
    )


def _sqlite_engine(url, schema):
    """SQLite for development: one file per service, the schema translated away."""
    on_disk = bool(url.database) and url.database != ":memory:"
    if on_disk:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, hide_parameters=True,
                              connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if on_disk:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return engine.execution_options(schema_translate_map={schema: None})
