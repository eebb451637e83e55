"""Signing keys on PostgreSQL: the JWKS, rotation, restarts, several instances, encryption
at rest and refusing to start without a usable secret."""

import logging
import time

import eventlet
import jwt
import pytest
import sqlalchemy as sa

from auth import keys
from auth.dependencies import TokenKeys
from auth.service import AuthService
from shared.config import ConfigError
from shared.db import make_engine
from shared.errors import Conflict, Unauthorized
from tests.helpers import STRONG_PASSWORD
from tests.support.auth_helpers import (
    AUTH_SECRET,
    claims,
    forge,
    keyring_for,
    start_auth,
    start_platform,
    user_and_login,
)
from tests.support.events import EventTap


def verify(rpc, token):
    return rpc.call("auth", "verify_token", kwargs={"access_token": token})


def kid_of(token):
    return jwt.get_unverified_header(token)["kid"]


def signing_kid(container):
    provider = next(d for d in container.dependencies if isinstance(d, TokenKeys))
    return provider.keyring.signer().kid


def stored_keys(db_uri):
    engine = make_engine(db_uri, "auth", pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT * FROM auth.signing_keys ORDER BY created_at"))\
                .all()
    finally:
        engine.dispose()


def test_jwks_is_a_standard_public_key_set(start_service, rpc):
    start_auth(start_service)
    jwks = rpc.call("auth", "jwks")
    assert jwks["keys"]
    for jwk in jwks["keys"]:
        assert {"kty", "kid", "alg", "use", "n", "e"} <= set(jwk) and jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert len(jwt.PyJWKSet.from_dict(jwks).keys) == len(jwks["keys"])


def test_rotation_signs_new_tokens_with_a_new_key_and_old_tokens_stay_valid(start_service,
                                                                           rpc, amqp_uri):
    start_platform(start_service)
    tap = EventTap(amqp_uri, "auth", routing_key="signing_key.rotated")
    try:
        user, before = user_and_login(rpc)
        rotated = rpc.call("auth", "rotate_keys")
        assert rotated["previous_kid"] == kid_of(before["access_token"])
        after = rpc.call("auth", "login", kwargs={"email": user["email"],
                                                  "password": STRONG_PASSWORD})
        assert kid_of(after["access_token"]) == rotated["kid"]
        assert verify(rpc, before["access_token"])["sub"] == user["id"]
        published = [k["kid"] for k in rpc.call("auth", "jwks")["keys"]]
        assert rotated["kid"] in published and rotated["previous_kid"] in published
        [event] = tap.wait_for(1)
        assert event["subject"] == rotated["kid"] and "PRIVATE" not in str(event)
    finally:
        tap.close()


def test_retired_key_drops_out_once_its_tokens_have_expired(start_service, rpc, pg_uri):
    start_platform(start_service, AUTH_ACCESS_TOKEN_TTL=60, AUTH_KEY_CACHE_SECONDS=0)
    _, before = user_and_login(rpc)
    old = kid_of(before["access_token"])
    rpc.call("auth", "rotate_keys")
    [row] = [r for r in stored_keys(pg_uri) if r.kid == old]
    # published for the token lifetime + the key cache + the clock leeway, no longer
    assert row.publish_until - row.retired_at == keys.retire_window(60, 0, 30)
    assert row.private_key_encrypted is None
    engine = make_engine(pg_uri, "auth", pool_size=1)
    with engine.begin() as conn:  # that time passes
        conn.execute(sa.text("UPDATE auth.signing_keys SET publish_until = now() - "
                             "interval '1 second' WHERE kid = :k"), {"k": old})
    engine.dispose()
    assert old not in [k["kid"] for k in rpc.call("auth", "jwks")["keys"]]
    with pytest.raises(Unauthorized) as excinfo:
        verify(rpc, before["access_token"])
    assert excinfo.value.details["reason"] == "unknown_key"


def test_tokens_stay_valid_across_a_restart(start_service, rpc):
    from identity.service import IdentityService

    start_service(IdentityService)
    first = start_auth(start_service)
    user, pair = user_and_login(rpc)
    kid = signing_kid(first)
    first.stop()
    second = start_auth(start_service)
    assert signing_kid(second) == kid
    assert verify(rpc, pair["access_token"])["sub"] == user["id"]
    assert rpc.call("auth", "refresh", kwargs={"refresh_token": pair["refresh_token"]})


def test_instances_starting_together_on_an_empty_database_share_one_key(start_service,
                                                                       fresh_pg_uri):
    starts = [eventlet.spawn(start_auth, start_service, DB_URI=fresh_pg_uri) for _ in range(3)]
    containers = [s.wait() for s in starts]
    assert len({signing_kid(c) for c in containers}) == 1
    assert len(stored_keys(fresh_pg_uri)) == 1


def test_instance_picks_up_another_instances_rotation(start_service, rpc, fresh_pg_uri):
    quick = start_auth(start_service, DB_URI=fresh_pg_uri, AUTH_KEY_CACHE_SECONDS=0.2)
    ring, engine = keyring_for(fresh_pg_uri)
    try:
        before = signing_kid(quick)
        with ring.sessions() as session:  # another instance rotates...
            row, _ = keys.rotate(session, ring.cipher, "ES256", keys.retire_window(900, 5, 30))
            session.commit()
        # ...and its tokens verify here at once: an unknown kid makes this instance look
        token = forge(ring.signer(), claims())
        assert verify(rpc, token)["sub"]
        assert row.kid != before
        deadline = time.monotonic() + 5  # and within its cache time it signs with it too
        while signing_kid(quick) != row.kid:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_concurrent_rotations_leave_exactly_one_active_key(start_service, rpc, fresh_pg_uri):
    start_auth(start_service, DB_URI=fresh_pg_uri)
    pool = eventlet.GreenPool(4)

    def rotate(_):
        try:
            return rpc.call("auth", "rotate_keys")
        except Conflict as exc:
            return exc

    results = list(pool.imap(rotate, range(4)))
    assert any(isinstance(r, dict) for r in results)
    rows = stored_keys(fresh_pg_uri)
    assert sum(r.active_slot == keys.ACTIVE for r in rows) == 1
    assert len(rows) == 1 + sum(isinstance(r, dict) for r in results)


def test_private_keys_are_encrypted_at_rest(start_service, pg_uri):
    start_auth(start_service)
    [active] = [r for r in stored_keys(pg_uri) if r.active_slot == keys.ACTIVE]
    assert active.private_key_encrypted.startswith("v1.")
    assert "PRIVATE KEY" not in active.private_key_encrypted
    assert keys.KeyCipher(AUTH_SECRET).decrypt(active.kid, active.private_key_encrypted)
    with pytest.raises(keys.KeyDecryptionError):
        keys.KeyCipher("someone-elses-secret-0123456789abcdef").decrypt(
            active.kid, active.private_key_encrypted)


def test_production_refuses_to_start_without_a_secret(production_amqp_uri, start_service,
                                                     monkeypatch):
    monkeypatch.delenv("AUTH_KEY_ENCRYPTION_SECRET", raising=False)
    with pytest.raises(ConfigError, match="AUTH_KEY_ENCRYPTION_SECRET"):
        start_service(AuthService, PLINTH_ENV="production", AMQP_URI=production_amqp_uri)


def test_production_starts_with_a_real_secret(production_amqp_uri, fresh_pg_uri, start_service,
                                              rpc):
    start_service(AuthService, PLINTH_ENV="production", DB_URI=fresh_pg_uri,
                  AMQP_URI=production_amqp_uri,
                  AUTH_KEY_ENCRYPTION_SECRET="a-real-production-secret-0123456789abcdef")
    assert rpc.call("auth", "jwks")["keys"]


def test_refuses_to_start_with_a_secret_that_does_not_decrypt_the_keys(start_service):
    start_auth(start_service).stop()  # keys exist, stored under the test secret
    with pytest.raises(keys.KeyDecryptionError, match="does not decrypt"):
        start_auth(start_service, AUTH_KEY_ENCRYPTION_SECRET="the-wrong-secret-0123456789abc")


def test_old_secret_listed_as_previous_still_opens_the_keys(start_service, rpc):
    start_auth(start_service,
               AUTH_KEY_ENCRYPTION_SECRET="a-brand-new-secret-0123456789abcdef",
               AUTH_KEY_ENCRYPTION_PREVIOUS_SECRETS=AUTH_SECRET)
    assert rpc.call("auth", "jwks")["keys"]


def test_no_token_key_or_password_reaches_the_logs(start_service, rpc, caplog):
    caplog.set_level(logging.DEBUG)
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    rpc.call("auth", "refresh", kwargs={"refresh_token": pair["refresh_token"]})
    rpc.call("auth", "rotate_keys")
    with pytest.raises(Unauthorized):
        rpc.call("auth", "login", kwargs={"email": user["email"], "password": "Wr0ng-guess!"})
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (pair["access_token"], pair["refresh_token"], STRONG_PASSWORD, "Wr0ng-guess!",
                   AUTH_SECRET, "PRIVATE KEY"):
        assert secret not in logged
    assert "signing key rotated" in logged  # the service's own lines were captured
