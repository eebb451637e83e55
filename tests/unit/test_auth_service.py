"""The service's methods through nameko's worker_factory, with real dependencies (SQLite, a
real keyring) and a stand-in for the identity service."""

import eventlet
import pytest
import sqlalchemy as sa
from nameko.exceptions import UnknownService
from nameko.testing.services import worker_factory

from auth import keys, throttle
from auth.dependencies import (
    DEVELOPMENT_SECRET,
    LoginGuard,
    Tokens,
    encryption_secrets,
    rsa_bits,
    throttle_policy,
    token_settings,
)
from auth.models import LoginThrottle, Session, SigningKey
from auth.service import AuthService
from auth.tokens import TokenSettings
from shared.config import ConfigError
from shared.errors import Invalid, NotFound, TooManyRequests, Unauthorized, Unavailable
from shared.rpc import call_service
from tests.support.auth_helpers import outbox_events, sqlite_database, unit_of_work

SECRET = "unit-test-key-encryption-secret-0123456789"
USER_ID = "01a20000-0000-7000-8000-0000000000aa"
EMAIL, PASSWORD = "ann@example.test", "correct horse battery"
CLIENT = {"ip": "198.51.100.1", "user_agent": "pytest"}
POLICY = throttle.Policy(pair_threshold=3, client_threshold=10, account_threshold=20)


class Identity:
    """Stands in for the identity service: one user, and a switchable outage."""

    def __init__(self):
        self.calls = 0
        self.status = "active"
        self.error = None

    def verify_credentials(self, email, password):
        self.calls += 1
        if self.error:
            raise self.error
        if email.lower() == EMAIL and password == PASSWORD and self.status == "active":
            return {"id": USER_ID, "email": EMAIL, "type": "user", "status": "active"}
        raise Unauthorized("invalid email or password")

    def get_user(self, user_id):
        if self.error:
            raise self.error
        if self.status == "deleted":
            raise NotFound("no such user")
        return {"id": user_id, "status": self.status}


@pytest.fixture
def db(tmp_path):
    engine, factory = sqlite_database(tmp_path)
    yield factory
    engine.dispose()


@pytest.fixture
def ring(db):
    return keys.Keyring(db, keys.KeyCipher(SECRET))


@pytest.fixture
def identity():
    return Identity()


@pytest.fixture
def service(db, ring, identity):
    def make():
        return worker_factory(
            AuthService, db=unit_of_work(db), tokens=Tokens(ring, TokenSettings(), 90),
            guard=LoginGuard(POLICY, b"h" * 32, identity_timeout=0.5), identity_rpc=identity)
    return make


def rows(db, model):
    with db() as s:
        return s.scalars(sa.select(model)).all()


def test_login_returns_a_bearer_pair_and_announces_the_session(service, db, ring):
    pair = service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    assert list(pair) == ["access_token", "refresh_token", "token_type", "expires_in"]
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    claims = service().verify_token(access_token=pair["access_token"])
    [session] = rows(db, Session)
    assert claims["sub"] == USER_ID and claims["sid"] == session.id
    [event] = outbox_events(db, "user.authed")
    assert event["subject"] == USER_ID and event["actor"] == {"id": USER_ID, "type": "user"}
    assert event["data"] == {"user_id": USER_ID, "session_id": session.id, "client": CLIENT}
    assert pair["access_token"] not in str(event) and pair["refresh_token"] not in str(event)


def test_login_without_a_client_counts_it_as_anonymous(service, db):
    service().login(email=EMAIL, password=PASSWORD)
    assert rows(db, Session)[0].client == {}


def test_login_accepts_a_client_named_by_a_string(service, db):
    service().login(email=EMAIL, password=PASSWORD, client="nameko-shell")
    assert rows(db, Session)[0].client == {"id": "nameko-shell"}


def test_failed_login_is_generic_and_announced_without_the_email_or_password(service, db):
    with pytest.raises(Unauthorized) as excinfo:
        service().login(email=EMAIL, password="wrong password", client=CLIENT)
    assert excinfo.value.message == "invalid email or password"
    [event] = outbox_events(db, "user.login_failed")
    assert event["data"]["reason"] == "invalid_credentials"
    assert event["data"]["client"] == CLIENT and event["data"]["throttled_for"] is None
    assert EMAIL not in str(event) and "wrong password" not in str(event)
    assert event["subject"] == event["data"]["account"]
    assert rows(db, Session) == []


def test_throttled_login_is_refused_before_identity_checks_the_password(service, identity):
    for _ in range(3):
        with pytest.raises(Unauthorized):
            service().login(email=EMAIL, password="wrong", client=CLIENT)
    calls = identity.calls
    with pytest.raises(TooManyRequests) as excinfo:
        service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    assert excinfo.value.details["retry_after"] >= 1
    assert identity.calls == calls


def test_failure_that_starts_a_block_says_so_in_its_event(service, db):
    for _ in range(3):
        with pytest.raises(Unauthorized):
            service().login(email=EMAIL, password="wrong", client=CLIENT)
    assert [e["data"]["throttled_for"] for e in outbox_events(db, "user.login_failed")] == \
        [None, None, 1]


def test_correct_login_from_another_client_works_while_one_is_throttled(service):
    for _ in range(4):
        with pytest.raises((Unauthorized, TooManyRequests)):
            service().login(email=EMAIL, password="wrong", client=CLIENT)
    other = {"ip": "203.0.113.5", "user_agent": "phone"}
    assert service().login(email=EMAIL, password=PASSWORD, client=other)["access_token"]


def test_correct_login_clears_the_pressure_of_its_account_and_client_pair(service, db):
    for _ in range(2):
        with pytest.raises(Unauthorized):
            service().login(email=EMAIL, password="wrong", client=CLIENT)
    service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    assert {r.scope for r in rows(db, LoginThrottle)} == {"client", "account"}
    for _ in range(2):  # so the user's own typos start from zero again
        with pytest.raises(Unauthorized):
            service().login(email=EMAIL, password="wrong", client=CLIENT)
    assert service().login(email=EMAIL, password=PASSWORD, client=CLIENT)["access_token"]


@pytest.mark.parametrize("kwargs,field", [
    ({"password": PASSWORD, "client": CLIENT}, "email"),
    ({"email": EMAIL, "client": CLIENT}, "password"),
    ({"email": EMAIL, "password": "", "client": CLIENT}, "password"),
    ({"email": "x" * 321, "password": PASSWORD}, "email"),
    ({"email": EMAIL, "password": "p" * 257}, "password"),
    ({"email": 42, "password": PASSWORD}, "email"),
    ({"email": EMAIL, "password": PASSWORD, "client": {"ip": "999.1.1.1"}}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": {"ip": "1.2.3.4", "os": "x"}}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": {"user_agent": "u" * 513}}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": 42}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": ["1.2.3.4"]}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": ""}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": 0}, "client"),
    ({"email": EMAIL, "password": PASSWORD, "client": []}, "client"),
])
def test_login_with_bad_input_names_the_field_and_changes_nothing(service, db, identity,
                                                                  kwargs, field):
    with pytest.raises(Invalid) as excinfo:
        service().login(**kwargs)
    assert field in excinfo.value.details
    assert identity.calls == 0
    assert rows(db, LoginThrottle) == [] and outbox_events(db) == []


def test_identity_outage_is_unavailable_and_not_a_failed_attempt(service, db, identity):
    identity.error = Unavailable("identity is down")
    with pytest.raises(Unavailable):
        service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    assert rows(db, LoginThrottle) == [] and outbox_events(db) == []


def test_rpc_to_a_silent_service_times_out_as_unavailable():
    def silent(**kwargs):
        eventlet.sleep(5)

    with pytest.raises(Unavailable, match="did not answer"):
        call_service("identity", silent, timeout=0.05, email="x")


def test_rpc_to_a_service_that_is_not_running_is_unavailable():
    def absent(**kwargs):
        raise UnknownService("identity")

    with pytest.raises(Unavailable, match="not running"):
        call_service("identity", absent, timeout=1.0)


def test_refresh_of_a_disabled_or_deleted_user_is_refused(service, identity):
    for status in ("disabled", "deleted"):
        identity.status = "active"
        pair = service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
        identity.status = status
        with pytest.raises(Unauthorized) as excinfo:
            service().refresh(refresh_token=pair["refresh_token"])
        assert excinfo.value.details["reason"] == "revoked"


def test_refresh_goes_ahead_when_identity_cannot_answer(service, identity):
    pair = service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    identity.error = Unavailable("identity is down")
    assert service().refresh(refresh_token=pair["refresh_token"])["refresh_token"]


@pytest.mark.parametrize("method,kwargs,field", [
    ("refresh", {}, "refresh_token"),
    ("refresh", {"refresh_token": 7}, "refresh_token"),
    ("logout", {"refresh_token": None}, "refresh_token"),
    ("verify_token", {}, "access_token"),
    ("verify_token", {"access_token": ["x"]}, "access_token"),
    ("logout_all", {"user_id": "nope"}, "user_id"),
    ("sessions_of", {}, "user_id"),
    ("end_session", {"session_id": "1"}, "session_id"),
    ("end_session", {"session_id": USER_ID, "user_id": "x"}, "user_id"),
])
def test_bad_input_to_other_methods_names_the_field(service, method, kwargs, field):
    with pytest.raises(Invalid) as excinfo:
        getattr(service(), method)(**kwargs)
    assert field in excinfo.value.details


def test_garbage_access_token_is_unauthorized_not_invalid(service):
    with pytest.raises(Unauthorized):
        service().verify_token(access_token="garbage")


def test_logout_all_and_sessions_of(service):
    for _ in range(2):
        service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    assert len(service().sessions_of(user_id=USER_ID)) == 2
    assert service().logout_all(user_id=USER_ID) == {"revoked": 2}
    assert service().sessions_of(user_id=USER_ID) == []


def test_end_session_revokes_the_session_named_in_an_access_token(service):
    pair = service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    sid = service().verify_token(access_token=pair["access_token"])["sid"]
    assert service().end_session(session_id=sid, user_id=USER_ID) == {"revoked": True}
    with pytest.raises(Unauthorized):
        service().refresh(refresh_token=pair["refresh_token"])


def test_rotate_keys_announces_the_new_kid_and_nothing_secret(service, db, ring):
    old = ring.signer().kid
    result = service().rotate_keys()
    assert result["previous_kid"] == old and result["alg"] == "RS256"
    assert ring.signer().kid == result["kid"]  # this process sees its own rotation at once
    [event] = outbox_events(db, "signing_key.rotated")
    assert event["data"] == {"kid": result["kid"], "alg": "RS256", "previous_kid": old,
                             "reason": "manual"}
    assert "PRIVATE" not in str(event) and '"d"' not in str(event)


def identity_event(event_type, subject, event_id="e-1"):
    return {"event_id": event_id, "event_type": event_type, "source": "identity",
            "subject": subject, "data": {}, "actor": {"id": None, "type": "system"}}


@pytest.mark.parametrize("handler,event_type,reason", [
    ("on_password_changed", "user.password_changed", "password_changed"),
    ("on_user_disabled", "user.disabled", "user_disabled"),
    ("on_user_deleted", "user.deleted", "user_deleted"),
])
def test_identity_events_revoke_every_session_of_the_user_once(service, db, handler,
                                                               event_type, reason):
    for _ in range(2):
        service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    event = identity_event(event_type, USER_ID)
    getattr(service(), handler)(event)
    assert {r.revoke_reason for r in rows(db, Session)} == {reason}
    service().login(email=EMAIL, password=PASSWORD, client=CLIENT)
    getattr(service(), handler)(event)  # redelivered: already handled, changes nothing
    assert len(service().sessions_of(user_id=USER_ID)) == 1
    assert len(outbox_events(db, "session.revoked")) == 2


def test_maintenance_rotates_a_key_past_its_age_and_prunes(service, db, ring):
    old = ring.signer().kid
    service().maintenance()
    assert ring.signer().kid == old
    with db() as s:
        s.execute(sa.update(SigningKey).values(created_at=keys.now_utc()
                                               - keys.timedelta(days=91)))
        s.commit()
    service().maintenance()
    assert ring.signer().kid != old
    [event] = outbox_events(db, "signing_key.rotated")
    assert event["data"]["reason"] == "scheduled"


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "change-me", "secret", "too-short-for-prod"])
def test_production_refuses_a_missing_placeholder_or_short_secret(monkeypatch, value):
    monkeypatch.delenv("AUTH_KEY_ENCRYPTION_SECRET", raising=False)
    config = {"PLINTH_ENV": "production"}
    if value is not None:
        config["AUTH_KEY_ENCRYPTION_SECRET"] = value
    with pytest.raises(ConfigError, match="AUTH_KEY_ENCRYPTION_SECRET"):
        encryption_secrets(config)


def test_production_accepts_a_real_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_SECRET", SECRET)
    assert encryption_secrets({"PLINTH_ENV": "production"}) == (SECRET, [])


def test_development_falls_back_to_the_development_secret(monkeypatch):
    monkeypatch.delenv("AUTH_KEY_ENCRYPTION_SECRET", raising=False)
    assert encryption_secrets({})[0] == DEVELOPMENT_SECRET


def test_previous_secrets_are_a_comma_separated_list():
    config = {"AUTH_KEY_ENCRYPTION_SECRET": SECRET,
              "AUTH_KEY_ENCRYPTION_PREVIOUS_SECRETS": " old-one-0123456789, ,older-0123456789"}
    assert encryption_secrets(config)[1] == ["old-one-0123456789", "older-0123456789"]


def test_token_and_throttle_settings_come_from_config():
    settings = token_settings({"AUTH_ISSUER": "me", "AUTH_ACCESS_TOKEN_TTL": "60",
                               "AUTH_REFRESH_TOKEN_TTL": 120})
    assert (settings.issuer, settings.audience, settings.access_ttl, settings.refresh_ttl) == \
        ("me", "plinth-api", 60, 120)
    policy = throttle_policy({"AUTH_THROTTLE_PAIR_THRESHOLD": 2, "AUTH_THROTTLE_MAX_DELAY": "9"})
    assert policy.pair_threshold == 2 and policy.max_delay == 9.0
    assert policy.client_threshold == throttle.Policy().client_threshold


@pytest.mark.parametrize("config", [{"AUTH_ACCESS_TOKEN_TTL": 0},
                                    {"AUTH_REFRESH_TOKEN_TTL": -5}])
def test_non_positive_lifetimes_are_refused(config):
    with pytest.raises(ConfigError):
        token_settings(config)


def test_rsa_keys_weaker_than_2048_bits_are_refused():
    with pytest.raises(ConfigError, match="AUTH_RSA_KEY_BITS"):
        rsa_bits({"AUTH_RSA_KEY_BITS": 1024})


def test_negative_clock_leeway_is_refused():
    with pytest.raises(ConfigError, match="AUTH_CLOCK_LEEWAY"):
        token_settings({"AUTH_CLOCK_LEEWAY": -1})


def test_key_size_defaults_to_2048_and_may_grow():
    assert rsa_bits({}) == 2048 and rsa_bits({"AUTH_RSA_KEY_BITS": "3072"}) == 3072


def test_non_positive_throttle_settings_are_refused():
    with pytest.raises(ConfigError):
        throttle_policy({"AUTH_THROTTLE_DECAY_SECONDS": 0})
