"""Builders for the auth tests: starting the services, logging in, forging tokens."""

import os
import time
import uuid

import jwt
from sqlalchemy.orm import sessionmaker

from auth import keys
from auth.dependencies import SECRET_KEY
from shared.db import make_engine
from tests.helpers import STRONG_PASSWORD, new_user

# Every test on the session's database uses this secret: the signing keys stored there are
# encrypted with it. Tests of other secrets use a database of their own (fresh_pg_uri).
AUTH_SECRET = "test-only-auth-key-encryption-secret-5f1c0e9a"
ISSUER, AUDIENCE = "plinth", "plinth-api"


def start_auth(start_service, **overrides):
    from auth.service import AuthService

    return start_service(AuthService, **{SECRET_KEY: AUTH_SECRET, **overrides})


def start_platform(start_service, **auth_overrides):
    """identity, authz and auth: a login needs identity and auth, and identity asks authz who
    the administrators are before it disables or deletes a user."""
    from authz.service import AuthzService
    from identity.service import IdentityService

    start_service(IdentityService)
    start_service(AuthzService)
    return start_auth(start_service, **auth_overrides)


def a_client(ip=None, user_agent="pytest/auth"):
    """A client with an address of its own: throttling counters outlive a test in the shared
    database, so tests that share an address would throttle each other."""
    if ip is None:
        ip = "10." + ".".join(str(b) for b in os.urandom(3))
    return {"ip": ip, "user_agent": user_agent}


def user_and_login(rpc, client=None, **fields):
    user = new_user(rpc, **fields)
    pair = rpc.call("auth", "login", kwargs={"email": user["email"], "password": STRONG_PASSWORD,
                                             "client": client or a_client()})
    return user, pair


def login(rpc, email, password=STRONG_PASSWORD, client=None):
    return rpc.call("auth", "login", kwargs={"email": email, "password": password,
                                             "client": client or a_client()})


def keyring_for(db_uri, secret=AUTH_SECRET):
    """A keyring reading the service's keys from its database, as a second instance would."""
    engine = make_engine(db_uri, "auth", pool_size=2)
    return keys.Keyring(sessionmaker(bind=engine, expire_on_commit=False),
                        keys.KeyCipher(secret), cache_seconds=0.0, miss_interval=0.0), engine


def claims(sub=None, **overrides):
    now = int(time.time())
    values = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()) if sub is None else sub,
              "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex,
              "sid": str(uuid.uuid4()), "typ": "at+jwt"}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def forge(signer, payload, **header):
    """A token signed with ``signer`` (the real key), with whatever claims a test needs."""
    headers = {"kid": signer.kid, "typ": "at+jwt", **header}
    return jwt.encode(payload, signer.private_key, algorithm=signer.alg, headers=headers)


def unauthorized_reason(excinfo):
    return excinfo.value.details.get("reason")


def sqlite_database(directory):
    """The auth schema, migrated, in a SQLite file: the embedded default, for unit tests."""
    from shared import migrations

    engine = make_engine(f"sqlite:///{directory}/auth.db", "auth")
    migrations.upgrade("auth", engine)
    return engine, sessionmaker(bind=engine, expire_on_commit=False)


def unit_of_work(session_factory, context=None):
    from shared.db import UnitOfWork

    return UnitOfWork(session_factory, "auth", context or {"request_id": "req-unit"})


def outbox_events(session_factory, event_type=None):
    """Envelopes the unit of work committed to the outbox, oldest first."""
    import sqlalchemy as sa

    from auth.models import Base

    table = Base.metadata.tables["auth.outbox"]
    with session_factory() as session:
        rows = session.execute(sa.select(table.c.payload).order_by(table.c.id)).scalars().all()
    return [r for r in rows if event_type in (None, r["event_type"])]
