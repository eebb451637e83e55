"""Each service's migrations build exactly the schema its models declare."""

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared import migrations
from shared.db import make_engine


@pytest.mark.parametrize("service", ["identity", "auth", "authz", "audit"])
def test_migrations_match_the_models(service, fresh_pg_uri):
    engine = make_engine(fresh_pg_uri, service)
    try:
        migrations.upgrade(service, engine)
        metadata = importlib.import_module(f"{service}.models").Base.metadata

        def ours(name, type_, parent_names):
            if type_ == "schema":
                return name == service
            return not (type_ == "table" and name == "alembic_version")

        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_schemas": True, "include_name": ours, "compare_type": True})
            drift = compare_metadata(context, metadata)
        assert drift == [], f"{service}: models and migrations differ (add a migration): {drift}"
    finally:
        engine.dispose()
