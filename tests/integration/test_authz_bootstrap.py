import contextlib
import io

import eventlet
import pytest
import requests
import yaml

from authz import admin
from authz.bootstrap import BootstrapAdmin
from authz.service import AuthzService
from identity.service import IdentityService
from shared.config import ConfigError
from shared.db import make_engine
from tests.helpers import STRONG_PASSWORD, new_email
from tests.support.authz_helpers import outbox_events, wait_until
from tests.support.events import EventTap


@pytest.fixture
def identity_tap(amqp_uri):
    tap = EventTap(amqp_uri, "identity", routing_key="user.created")
    yield tap
    tap.close()


@pytest.fixture
def authz_db(pg_uri):
    engine = make_engine(pg_uri, "authz", pool_size=1)
    yield engine
    engine.dispose()


def bootstrap_config(email, password=STRONG_PASSWORD, **extra):
    return {"BOOTSTRAP_ADMIN_EMAIL": email, "BOOTSTRAP_ADMIN_PASSWORD": password,
            "BOOTSTRAP_RETRY_MAX_DELAY": 0.3, "IDENTITY_RPC_TIMEOUT": 2, **extra}


def health(container):
    address = container.config["WEB_SERVER_ADDRESS"]
    return requests.get(f"http://{address}/health", timeout=5).json()


def bootstrap_provider(container):
    return next(d for d in container.dependencies if isinstance(d, BootstrapAdmin))


def bootstrap_state(container):
    return bootstrap_provider(container).state


def admin_id(rpc, email):
    """The user's id once they exist and hold admin globally, else None."""
    try:
        user = rpc.call("identity", "get_user_by_email", kwargs={"email": email})
    except Exception:  # noqa: BLE001 - not created yet
        return None
    roles = rpc.call("authz", "roles_of", [user["id"]])
    return user["id"] if ("admin", None) in {(r["role"], r["scope"]) for r in roles} else None


def admin_assignments(engine, user_id):
    return [e for e in outbox_events(engine, "role.assigned")
            if e["subject"] == user_id and e["data"]["role"] == "admin"]


def created_users(tap, email):
    return [e for e in tap.wait_for(1, event_type="user.created")
            if e["data"]["email"] == email]


def test_bootstrap_creates_the_admin_and_running_it_again_changes_nothing(
        start_service, rpc, identity_tap, authz_db):
    start_service(IdentityService)
    email = new_email("root")
    config = bootstrap_config(email)
    first = start_service(AuthzService, **config)
    user_id = wait_until(lambda: admin_id(rpc, email), timeout=10)
    assert user_id
    assert rpc.call("authz", "check", [user_id, "roles:write"]) is True
    assert wait_until(lambda: health(first)["bootstrap_admin"] == "done")
    # the new user also gets the self-service role from identity's user.created
    assert wait_until(lambda: {r["role"] for r in rpc.call("authz", "roles_of", [user_id])}
                      == {"admin", "user"})

    first.stop()
    second = start_service(AuthzService, **config)
    assert wait_until(lambda: bootstrap_state(second) == "done", timeout=10)
    assert len(admin_assignments(authz_db, user_id)) == 1
    assert len(created_users(identity_tap, email)) == 1
    [event] = admin_assignments(authz_db, user_id)
    assert event["actor"] == {"id": "authz-bootstrap", "type": "system"}
    assert STRONG_PASSWORD not in str(event)


def test_two_instances_bootstrapping_at_once_make_one_admin(start_service, rpc, identity_tap,
                                                            authz_db):
    start_service(IdentityService)
    email = new_email("root")
    config = bootstrap_config(email)
    pool = eventlet.GreenPool(2)
    containers = list(pool.imap(lambda _: start_service(AuthzService, **config), range(2)))
    assert wait_until(lambda: all(bootstrap_state(c) == "done" for c in containers),
                      timeout=10)
    user_id = admin_id(rpc, email)
    assert user_id
    assert len(created_users(identity_tap, email)) == 1
    assert len(admin_assignments(authz_db, user_id)) == 1
    roles = rpc.call("authz", "roles_of", [user_id])
    assert [r["role"] for r in roles].count("admin") == 1


def test_bootstrap_waits_for_identity_to_come_up(start_service, rpc):
    email = new_email("root")
    authz = start_service(AuthzService, **bootstrap_config(email))
    # it keeps trying against the missing identity
    assert wait_until(lambda: bootstrap_provider(authz).attempts >= 2, timeout=5)
    assert bootstrap_state(authz) == "pending"
    assert health(authz)["bootstrap_admin"] == "pending"
    start_service(IdentityService)
    assert wait_until(lambda: admin_id(rpc, email), timeout=10)
    assert bootstrap_state(authz) == "done"


def test_bootstrap_for_an_existing_user_keeps_their_password(start_service, rpc):
    start_service(IdentityService)
    email = new_email("root")
    existing = rpc.call("identity", "create_user",
                        kwargs={"email": email, "password": STRONG_PASSWORD})
    start_service(AuthzService, **bootstrap_config(email, password="another-Secret-99-x"))
    assert wait_until(lambda: admin_id(rpc, email), timeout=10) == existing["id"]
    assert rpc.call("identity", "verify_credentials",
                    kwargs={"email": email, "password": STRONG_PASSWORD})["id"] == existing["id"]


def test_a_password_identity_refuses_stops_the_bootstrap_and_shows_in_health(start_service,
                                                                               rpc):
    start_service(IdentityService)
    email = new_email("root")
    authz = start_service(AuthzService, **bootstrap_config(email, password="short"))
    assert wait_until(lambda: bootstrap_state(authz) == "failed", timeout=10)
    assert health(authz)["bootstrap_admin"] == "failed"
    assert health(authz)["status"] == "healthy"  # the service itself keeps serving
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
                                                       authz_db):
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
    assert len(admin_assignments(authz_db, user_id)) == 1


def test_make_admin_reports_a_refused_password_and_assigns_nothing(start_service, rpc,
                                                                   cli_config):
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
