"""Narrow each service's runtime role to what it needs, after the migrations ran.

Run by the image's ``migrate`` role with the schema owners' URIs (``<SERVICE>_DB_URI``) and
the runtime role names (``<SERVICE>_APP_ROLE``, default ``<service>_app``). The runtime role
may read and write its own schema's tables and nothing else; audit's runtime role may only
INSERT and SELECT its entries (append-only; the table's trigger refuses the rest too).
"""

import os
import sys

import sqlalchemy as sa

from shared.config import db_uri
from shared.db import make_engine

SERVICES = ("identity", "auth", "authz", "audit")
APPEND_ONLY = {"audit": ("entries",)}


def statements(service, app_role, append_only=()):
    quoted = f'"{app_role}"'
    yield f'GRANT USAGE ON SCHEMA "{service}" TO {quoted}'
    yield f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{service}" TO {quoted}'
    yield f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{service}" TO {quoted}'
    for table in append_only:
        yield f'REVOKE UPDATE, DELETE, TRUNCATE ON "{service}"."{table}" FROM {quoted}'


def main(services=None):
    for service in services or os.environ.get("SERVICES", " ".join(SERVICES)).split():
        uri = db_uri(service)
        if uri.startswith("sqlite"):
            print(f"{service}: SQLite, no roles to narrow")
            continue
        app_role = os.environ.get(f"{service.upper()}_APP_ROLE", f"{service}_app")
        engine = make_engine(uri, service)
        with engine.begin() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                                  {"r": app_role}).scalar()
            if not exists:
                print(f"{service}: role {app_role} does not exist, skipped", file=sys.stderr)
                continue
            for statement in statements(service, app_role, APPEND_ONLY.get(service, ())):
                conn.execute(sa.text(statement))
        engine.dispose()
        print(f"{service}: granted {app_role}")


if __name__ == "__main__":
    main(sys.argv[1:])
