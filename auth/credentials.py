"""Service credentials: issued, checked and retired (plain functions over a session), and the
operator's command line.

    python -m auth.credentials add <service>     # prints a new credential once
    python -m auth.credentials register <service>...  # from <SERVICE>_SERVICE_CREDENTIAL
    python -m auth.credentials list [<service>]
    python -m auth.credentials retire <id>

A credential is 256 random bits shown once and stored as its SHA-256. Adding one keeps the
service's newest two valid and retires the rest, so rotating is: add, deploy the new value
(``<SERVICE>_SERVICE_CREDENTIAL``), add again (or retire the old one) when every instance
runs with it. ``register`` is the deployments' way (compose's and Kubernetes' migration job):
each service's credential comes from the same secret the service reads, and a changed value
is registered beside the previous one, which stays valid until the next change.

Outside production a service without a configured credential uses the one derived from its
name (``shared.proof.development_service_secret``), which auth accepts only
outside production.
"""

import argparse
import hmac
import os
import secrets
import sys

import sqlalchemy as sa

from auth.models import ServiceCredential
from auth.sessions import now_utc
from shared.errors import Invalid, NotFound
from shared.ids import uuid7
from shared.proof import development_service_secret, hash_service_secret, is_service_name

__all__ = ["add", "register", "valid", "retire", "listing", "VALID_AT_ONCE"]

VALID_AT_ONCE = 2


def _check_service(service):
    if not is_service_name(service):
        raise Invalid("not a service name", {"service": ["a lower-case service name"]})


def add(session, service, now=None, secret=None):
    """(row, secret): a new credential for ``service`` (random unless ``secret`` is given);
    only the newest two stay valid."""
    _check_service(service)
    now = now or now_utc()
    secret = secret or secrets.token_urlsafe(32)
    row = ServiceCredential(id=uuid7(), service=service, secret_hash=hash_service_secret(secret),
                            created_at=now)
    session.add(row)
    session.flush()
    live = session.scalars(sa.select(ServiceCredential).where(
        ServiceCredential.service == service, ServiceCredential.retired_at.is_(None))
        .order_by(ServiceCredential.created_at.desc(), ServiceCredential.id.desc())).all()
    for old in live[VALID_AT_ONCE:]:
        old.retired_at = now
    return row, secret


def valid(session, service, secret, development=False):
    """Is ``secret`` a valid credential of ``service`` now?"""
    if not is_service_name(service) or not isinstance(secret, str) or not secret:
        return False
    if development and hmac.compare_digest(secret, development_service_secret(service)):
        return True
    digest = hash_service_secret(secret)
    found = session.scalar(sa.select(ServiceCredential.secret_hash).where(
        ServiceCredential.service == service, ServiceCredential.retired_at.is_(None),
        ServiceCredential.secret_hash == digest))
    return found is not None and hmac.compare_digest(found, digest)


def register(session, service, secret, now=None):
    """Make ``secret`` a credential of ``service`` unless it is one already: True if added."""
    _check_service(service)
    known = session.scalar(sa.select(ServiceCredential.id).where(
        ServiceCredential.service == service,
        ServiceCredential.secret_hash == hash_service_secret(secret)))
    if known is not None:
        return False
    add(session, service, now=now, secret=secret)
    return True


def retire(session, credential_id, now=None):
    row = session.get(ServiceCredential, credential_id)
    if row is None:
        raise NotFound("no such credential", {"id": credential_id})
    if row.retired_at is None:
        row.retired_at = now or now_utc()
    return row


def listing(session, service=None):
    query = sa.select(ServiceCredential).order_by(ServiceCredential.service,
                                                  ServiceCredential.created_at)
    if service is not None:
        query = query.where(ServiceCredential.service == service)
    return [{"id": r.id, "service": r.service, "created_at": r.created_at.isoformat(),
             "retired_at": r.retired_at.isoformat() if r.retired_at else None}
            for r in session.scalars(query)]


def main(argv=None):
    from sqlalchemy.orm import sessionmaker

    from shared import migrations
    from shared.config import db_uri
    from shared.db import make_engine

    parser = argparse.ArgumentParser(prog="python -m auth.credentials")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add").add_argument("service")
    sub.add_parser("register").add_argument("services", nargs="+")
    sub.add_parser("list").add_argument("service", nargs="?")
    sub.add_parser("retire").add_argument("id")
    args = parser.parse_args(argv)
    engine = make_engine(db_uri("auth"), "auth", pool_size=1)
    migrations.upgrade("auth", engine)
    with sessionmaker(bind=engine)() as session:
        if args.command == "add":
            row, secret = add(session, args.service)
            session.commit()
            print(f"credential {row.id} for {row.service} (set {row.service.upper()}"
                  f"_SERVICE_CREDENTIAL; shown once):\n{secret}")
        elif args.command == "register":
            for service in args.services:
                secret = os.environ.get(f"{service.upper()}_SERVICE_CREDENTIAL", "").strip()
                if not secret:
                    print(f"{service}: no {service.upper()}_SERVICE_CREDENTIAL; skipped")
                elif register(session, service, secret):
                    print(f"{service}: credential registered")
            session.commit()
        elif args.command == "retire":
            retire(session, args.id)
            session.commit()
        else:
            for item in listing(session, args.service):
                print(item)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
