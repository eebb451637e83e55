# nameko's pytest plugin stopped monkey-patching in 2.14; the services' code expects green
# sockets and threads, so this must run before anything imports socket or threading users.
import eventlet

eventlet.monkey_patch()

import gc  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402

import greenlet  # noqa: E402
import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from nameko.testing.utils import find_free_port  # noqa: E402

from shared.rpc_client import RpcClient  # noqa: E402


def _dump_greenlets(signum, frame):
    """`kill -USR1 <pid>` prints where every greenthread is waiting (to debug a hang)."""
    out = sys.__stderr__
    for ob in gc.get_objects():
        if isinstance(ob, greenlet.greenlet) and ob.gr_frame is not None:
            print(f"--- {ob!r}", file=out)
            traceback.print_stack(ob.gr_frame, file=out)
    out.flush()


signal.signal(signal.SIGUSR1, _dump_greenlets)

PG_ADMIN_URI = os.environ.get("PLINTH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CHEAP_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024, "ARGON2_PARALLELISM": 1}


def _admin_engine():
    from shared.db import make_engine

    return make_engine(PG_ADMIN_URI, "public").execution_options(isolation_level="AUTOCOMMIT")


def create_database(prefix="plinth_test"):
    """A fresh PostgreSQL database; returns its URI."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URI.rsplit("/", 1)[0] + "/" + name


def drop_database(uri):
    name = uri.rsplit("/", 1)[1]
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_uri():
    """One PostgreSQL database for the session; every service has its own schema in it."""
    uri = create_database()
    yield uri
    drop_database(uri)


@pytest.fixture
def fresh_pg_uri():
    """A PostgreSQL database of the test's own, for tests that need an empty one.

    Ask for it before ``start_service`` in a test's arguments: fixtures are torn down in
    reverse order, and the database must outlive the containers using it.
    """
    uri = create_database()
    yield uri
    drop_database(uri)


@pytest.fixture
def amqp_uri(rabbit_config):
    """A RabbitMQ vhost of the test's own (nameko's plugin creates and deletes it)."""
    return rabbit_config["AMQP_URI"]


@pytest.fixture
def production_amqp_uri(request, rabbit_config):
    """The test's vhost through a RabbitMQ user of its own with a strong password: production
    refuses the guest account. Ask for it before ``start_service`` (it must outlive them)."""
    import secrets
    from urllib.parse import quote, urlsplit

    import requests

    api = urlsplit(request.config.getoption("RABBIT_API_URI"))
    base = f"{api.scheme}://{api.hostname}:{api.port}/api"
    auth = (api.username, api.password)
    vhost = urlsplit(rabbit_config["AMQP_URI"]).path.lstrip("/")
    user, password = f"plinth_test_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(24)
    requests.put(f"{base}/users/{user}", json={"password": password, "tags": ""}, auth=auth,
                 timeout=10).raise_for_status()
    requests.put(f"{base}/permissions/{quote(vhost, safe='')}/{user}", auth=auth, timeout=10,
                 json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    amqp = urlsplit(rabbit_config["AMQP_URI"])
    yield f"{amqp.scheme}://{user}:{password}@{amqp.hostname}:{amqp.port or 5672}/{vhost}"
    requests.delete(f"{base}/users/{user}", auth=auth, timeout=10)


@pytest.fixture
def service_config(amqp_uri, pg_uri):
    """Build a nameko config for a service under test: real broker and PostgreSQL.

    Proven actors (shared.actors) are off unless a test turns them on (``ACTOR_PROOF=
    "enforce"``): this tier tests each service's own behaviour, with callers that hold no
    tokens; tests/integration/test_actors.py and the security and e2e tiers (real processes,
    proofs on) test the proofs.
    """

    def make(db_uri=None, **overrides):
        config = {
            "AMQP_URI": amqp_uri,
            "DB_URI": db_uri or pg_uri,
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{find_free_port()}",
            "OUTBOX_POLL_INTERVAL": 0.05,
            "max_workers": 10,
            "ACTOR_PROOF": "off",
            **CHEAP_ARGON2,
        }
        config.update(overrides)
        return config

    return make


@pytest.fixture
def rpc(amqp_uri):
    """The platform's thread-safe RPC client on the test's vhost."""
    client = RpcClient(amqp_uri, timeout=10)
    client.start()
    assert client.wait_connected(10), client.last_error
    yield client
    client.close()


@pytest.fixture
def fault_proxy():
    """Make FaultProxy instances that outlive the test's containers (see start_service)."""
    from tests.support.faultproxy import FaultProxy

    proxies = []

    def make(target_port, target_host="127.0.0.1"):
        proxy = FaultProxy((target_host, target_port))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def forget_pending_events(uri):
    """Mark every outbox row left pending in ``uri`` as sent.

    The session's database outlives each test's vhost: the outbox keeps an event nobody was
    bound to pending until a queue appears (shared.outbox), so without this a later test's
    consumers would receive earlier tests' events.
    """
    engine = sa.create_engine(uri.replace("postgresql://", "postgresql+psycopg2://", 1),
                              poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        schemas = conn.execute(sa.text("SELECT table_schema FROM information_schema.tables "
                                       "WHERE table_name = 'outbox'")).scalars().all()
        for schema in schemas:
            conn.execute(sa.text(f'UPDATE "{schema}".outbox SET sent_at = now() '
                                 "WHERE sent_at IS NULL"))
    engine.dispose()


@pytest.fixture
def start_service(amqp_uri, service_config, fault_proxy, container_factory, pg_uri):
    """Start a service container on the test's vhost and database.

    It is killed before the vhost and any fault proxy go (it depends on both, so it is torn
    down first): nameko cannot kill a container whose broker has vanished. Events earlier
    tests left pending in the session's database are forgotten first.
    """
    forget_pending_events(pg_uri)

    def start(service_cls, **overrides):
        container = container_factory(service_cls, service_config(**overrides))
        container.start()
        return container

    return start
