import contextlib
import io

import eventlet
import pytest
import requests
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import sessionmaker

from authz import admin, assignments
from authz.bootstrap import BootstrapAdmin, bootstrap_admin, system_context
from authz.service import AuthzService
from identity.service import IdentityService
from shared import migrations
from shared.config import ConfigError
from shared.db import UnitOfWork, make_engine
from shared.errors import NotFound
from tests.helpers import STRONG_PASSWORD, new_email, new_user
from tests.support.authz_helpers import outbox_events, wait_until
from tests.support.events import EventTap


@pytest.fixture
def identity_tap(amqp_uri):
    tap = EventTap(amqp_uri, "identity", routing_key="user.created")
    yield tap
    tap.close()


@pytest.fixture
def authz_db(fresh_pg_uri):
    """authz's own database, fresh (the bootstrap happens once per installation), migrated."""
    engine = make_engine(fresh_pg_uri, "authz", pool_size=2)
    migrations.upgrade("authz", engine)
    yield engine
    engine.dispose()


def bootstrap_config(email, password=STRONG_PASSWORD, **extra):
    return {"BOOTSTRAP_ADMIN_EMAIL": email, "BOOTSTRAP_ADMIN_PASSWORD": password,
            "BOOTSTRAP_RETRY_MAX_DELAY": 0.3, "IDENTITY_RPC_TIMEOUT": 2, **extra}


@pytest.fixture
def start_authz(fresh_pg_uri, start_service):
    """Start authz on the fresh database, bootstrapping ``email``. (Tests ask for
    ``authz_db`` first: the database must outlive the containers.)"""

    def start(email, **config):
        return start_service(AuthzService, DB_URI=fresh_pg_uri,
                             **bootstrap_config(email, **config))

    return start


def health(container):
    address = container.config["WEB_SERVER_ADDRESS"]
    return requests.get(f"http://{address}/health", timeout=5).json()


def bootstrap_provider(container):
    return next(d for d in container.dependencies if isinstance(d, BootstrapAdmin))


def bootstrap_state(container):
    return bootstrap_provider(container).state


def settled(container, timeout=10):
    """The bootstrap's state once it is no longer pending."""
    wait_until(lambda: bootstrap_state(container) != "pending", timeout=timeout)
    return bootstrap_state(container)


def is_admin(rpc, user_id):
    roles = rpc.call("authz", "roles_of", [user_id])
    return ("admin", None) in {(r["role"], r["scope"]) for r in roles}


def admin_id(rpc, email):
    """The user's id once they exist and hold admin globally, else None."""
    try:
        user = rpc.call("identity", "get_user_by_email", kwargs={"email": email})
    except NotFound:  # not created yet
        return None
    return user["id"] if is_admin(rpc, user["id"]) else None


def admin_assignments(engine, user_id=None):
    return [e for e in outbox_events(engine, "role.assigned")
            if e["data"]["role"] == "admin" and user_id in (None, e["subject"])]


def recorded(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT status, user_id FROM authz.bootstrap")).one_or_none()


def created_users(tap, email):
    return [e for e in tap.wait_for(1, event_type="user.created")
            if e["data"]["email"] == email]


def test_bootstrap_creates_the_admin_and_running_it_again_changes_nothing(
        authz_db, start_service, start_authz, rpc, identity_tap):
    start_service(IdentityService)
    email = new_email("root")
    first = start_authz(email)
    user_id = wait_until(lambda: admin_id(rpc, email), timeout=10)
    assert user_id
    assert rpc.call("authz", "check", [user_id, "roles:write"]) is True
    assert wait_until(lambda: health(first)["bootstrap_admin"] == "done")
    assert recorded(authz_db) == ("done", user_id)
    # the new user also gets the self-service role from identity's user.created
    assert wait_until(lambda: {r["role"] for r in rpc.call("authz", "roles_of", [user_id])}
                      == {"admin", "user"})

    first.stop()
    second = start_authz(email)
    assert settled(second) == "done"
    assert len(admin_assignments(authz_db, user_id)) == 1
    assert len(created_users(identity_tap, email)) == 1
    [event] = admin_assignments(authz_db, user_id)
    assert event["actor"] == {"id": "authz-bootstrap", "type": "system"}
    assert STRONG_PASSWORD not in str(event)


def test_two_instances_bootstrapping_at_once_make_one_admin(
        authz_db, start_service, start_authz, rpc, identity_tap):
    start_service(IdentityService)
    email = new_email("root")
    pool = eventlet.GreenPool(3)
    containers = list(pool.imap(lambda _: start_authz(email), range(3)))
    assert [settled(c) for c in containers] == ["done"] * 3
    user_id = admin_id(rpc, email)
    assert user_id and recorded(authz_db) == ("done", user_id)
    assert len(created_users(identity_tap, email)) == 1
    assert [e["subject"] for e in admin_assignments(authz_db)] == [user_id]
    roles = rpc.call("authz", "roles_of", [user_id])
    assert [r["role"] for r in roles].count("admin") == 1


def test_bootstrap_waits_for_identity_to_come_up(authz_db, start_service, start_authz, rpc):
    email = new_email("root")
    authz = start_authz(email)
    # it keeps trying against the missing identity
    assert wait_until(lambda: bootstrap_provider(authz).attempts >= 2, timeout=5)
    assert bootstrap_state(authz) == "pending"
    assert health(authz)["bootstrap_admin"] == "pending"
    start_service(IdentityService)
    assert wait_until(lambda: admin_id(rpc, email), timeout=10)
    assert bootstrap_state(authz) == "done"


def test_an_email_a_stranger_registered_before_the_first_start_is_refused(
        authz_db, start_service, start_authz, rpc, caplog):
    start_service(IdentityService)
    email = new_email("root")
    stranger = rpc.call("identity", "create_user",
                        kwargs={"email": email, "password": STRONG_PASSWORD})
    authz = start_authz(email, BOOTSTRAP_ADMIN_PASSWORD="another-Secret-99-x")
    assert settled(authz) == "refused"
    report = health(authz)
    assert report["bootstrap_admin"] == "refused"
    assert "did not create" in report["bootstrap_admin_problem"]
    assert report["status"] == "healthy"  # the service itself keeps serving
    assert any(r.levelname == "ERROR" and "bootstrap admin refused" in r.getMessage()
               for r in caplog.records)
    # nothing changed: the stranger is no admin, keeps their password, no admin was assigned
    assert not is_admin(rpc, stranger["id"])
    assert rpc.call("authz", "global_admins") == []
    assert admin_assignments(authz_db) == []
    assert rpc.call("identity", "verify_credentials",
                    kwargs={"email": email, "password": STRONG_PASSWORD})["id"] == stranger["id"]
    # a later start refuses again, and still changes nothing
    authz.stop()
    assert settled(start_authz(email)) == "refused"
    assert not is_admin(rpc, stranger["id"])


@pytest.mark.parametrize("then", ["deleted", "demoted", "renamed"])
def test_what_happens_to_the_bootstrap_admin_later_never_promotes_anyone_at_restart(
        authz_db, start_service, start_authz, rpc, then):
    """The reproduced takeover: a second admin deletes the bootstrap admin (or demotes them,
    or they change their email), a stranger signs up with the freed email, authz restarts."""
    start_service(IdentityService)
    email = new_email("root")
    authz = start_authz(email)
    first = wait_until(lambda: admin_id(rpc, email), timeout=10)
    second = new_user(rpc)["id"]
    rpc.call("authz", "assign_role", [second, "admin"])
    if then == "deleted":
        rpc.call("identity", "delete_user", [first])
    elif then == "demoted":
        rpc.call("authz", "unassign_role", [first, "admin"])
    else:
        rpc.call("identity", "update_user", [first], kwargs={"changes": {
            "email": new_email("moved")}})
    stranger = None
    if then != "demoted":
        stranger = new_user(rpc, email=email)["id"]
    admins = [second] if then in ("deleted", "demoted") else sorted([first, second])
    assert wait_until(lambda: rpc.call("authz", "global_admins") == admins)
    authz.stop()
    again = start_authz(email)
    assert settled(again) == "done"
    eventlet.sleep(0.5)  # time for a (wrong) assignment to show
    assert rpc.call("authz", "global_admins") == admins
    if stranger:
        assert not is_admin(rpc, stranger)
    assert len(admin_assignments(authz_db, first)) == 1


def test_a_crash_between_creating_the_user_and_recording_it_recovers_at_the_next_start(
        authz_db, start_service, start_authz, rpc):
    start_service(IdentityService)
    email = new_email("root")

    class Crash(BaseException):
        pass

    def dies_after_creating(method, **kwargs):
        result = rpc.call("identity", method, kwargs=kwargs)
        if method == "create_user":
            raise Crash()  # identity committed the user; authz never heard back
        return result

    uow = UnitOfWork(sessionmaker(bind=authz_db, expire_on_commit=False), "authz",
                     system_context())
    with pytest.raises(Crash):
        bootstrap_admin(dies_after_creating, uow, email, STRONG_PASSWORD)
    uow.discard()
    created = rpc.call("identity", "get_user_by_email", kwargs={"email": email})["id"]
    assert recorded(authz_db) == ("pending", created)
    assert admin_assignments(authz_db) == []

    authz = start_authz(email)
    assert settled(authz) == "done"
    assert admin_id(rpc, email) == created
    assert recorded(authz_db) == ("done", created)
    assert rpc.call("authz", "global_admins") == [created]


def test_an_administrator_made_before_the_first_start_skips_the_bootstrap(
        authz_db, start_service, start_authz, rpc):
    start_service(IdentityService)
    operator = new_user(rpc)["id"]
    uow = UnitOfWork(sessionmaker(bind=authz_db, expire_on_commit=False), "authz",
                     system_context())
    assignments.assign(uow, operator, "admin")  # as make admin does
    uow.close()
    email = new_email("root")
    authz = start_authz(email)
    assert settled(authz) == "skipped"
    assert health(authz)["bootstrap_admin"] == "skipped"
    assert recorded(authz_db).status == "skipped"
    assert rpc.call("authz", "global_admins") == [operator]
    with pytest.raises(NotFound):
        rpc.call("identity", "get_user_by_email", kwargs={"email": email})


def test_a_password_identity_refuses_stops_the_bootstrap_and_shows_in_health(
        authz_db, start_service, start_authz, rpc):
    start_service(IdentityService)
    email = new_email("root")
    authz = start_authz(email, BOOTSTRAP_ADMIN_PASSWORD="short")
    assert settled(authz) == "failed"
    report = health(authz)
    assert report["bootstrap_admin"] == "failed"
    assert report["bootstrap_admin_problem"] == (
        "password does not meet the password policy (password: must be at least 10 "
        "characters)")
    assert "short" not in report["bootstrap_admin_problem"].replace("at least", "")
    assert report["status"] == "healthy"  # the service itself keeps serving
    assert admin_id(rpc, email) is None


def test_an_email_without_a_password_refuses_to_start(service_config, container_factory):
    config = service_config(BOOTSTRAP_ADMIN_EMAIL=new_email("root"))
    container = container_factory(AuthzService, config)
    with pytest.raises(ConfigError, match="BOOTSTRAP_ADMIN_PASSWORD must be set"):
        container.start()


def test_a_placeholder_password_refuses_to_start_in_production(production_amqp_uri,
                                                               service_config,
                                                               container_factory):
    config = service_config(PLINTH_ENV="production", AMQP_URI=production_amqp_uri,
                            **bootstrap_config(new_email("root"), password="changeme"))
    container = container_factory(AuthzService, config)
    with pytest.raises(ConfigError, match="BOOTSTRAP_ADMIN_PASSWORD must be set to a real"):
        container.start()


def test_without_bootstrap_settings_nothing_happens(start_service):
    authz = start_service(AuthzService)
    assert bootstrap_state(authz) == "disabled"
    assert health(authz)["bootstrap_admin"] == "disabled"


# -- make admin -------------------------------------------------------------------------------

@pytest.fixture
def cli_config(tmp_path, amqp_uri, pg_uri):
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump({"AMQP_URI": amqp_uri, "DB_URI": pg_uri}))
    return str(path)


def run_admin(cli_config, email, password_source, *extra):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = admin.main(["--email", email, "--config", cli_config, "--timeout", "3", *extra],
                          password_source=password_source, out=out)
    return code, out.getvalue(), err.getvalue()


def never_asked():
    raise AssertionError("the password must not be asked for an existing user")


def test_make_admin_creates_the_user_and_is_idempotent(start_service, rpc, cli_config,
                                                       pg_uri):
    start_service(IdentityService)
    authz = start_service(AuthzService)
    tap = EventTap(authz.config["AMQP_URI"], "authz", routing_key="role.assigned")
    email = new_email("cli")
    code, out, err = run_admin(cli_config, email, lambda: STRONG_PASSWORD,
                               "--display-name", "Root")
    assert code == 0, err
    user_id = admin_id(rpc, email)
    assert user_id and f"{email} ({user_id}): created and admin" in out
    assert rpc.call("identity", "get_user", [user_id])["display_name"] == "Root"
    # the running authz instance relays the CLI's event from the shared outbox
    events = wait_until(lambda: [e for e in tap.wait_for(1, event_type="role.assigned")
                                 if e["subject"] == user_id and e["data"]["role"] == "admin"])
    assert events[0]["actor"] == {"id": "authz-admin-cli", "type": "system"}
    tap.close()

    code, out, _ = run_admin(cli_config, email, never_asked)
    assert code == 0 and "admin (already was)" in out
    engine = make_engine(pg_uri, "authz", pool_size=1)
    assert len(admin_assignments(engine, user_id)) == 1
    engine.dispose()


def test_make_admin_reports_a_refused_password_and_assigns_nothing(start_service, rpc, cli_config):
    start_service(IdentityService)
    email = new_email("cli")
    code, out, err = run_admin(cli_config, email, lambda: "short")
    assert code == 1 and out == ""
    assert "password does not meet the password policy" in err and "password:" in err
    with pytest.raises(Exception, match="no user with that email"):
        rpc.call("identity", "get_user_by_email", kwargs={"email": email})


def test_make_admin_without_identity_says_so(cli_config):
    code, _, err = run_admin(cli_config, new_email("cli"), never_asked)
    assert code == 1 and "no instance of identity is running" in err


def test_make_admin_without_a_broker_says_so(tmp_path, pg_uri):
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump({"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/",
                                    "DB_URI": pg_uri}))
    code, _, err = run_admin(str(path), new_email("cli"), never_asked, "--timeout", "0.5")
    assert code == 1 and "broker is unreachable" in err
